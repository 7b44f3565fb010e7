# A first Runink pipeline: orders in CSV, checked against the Order contract (contracts.py),
# normalized by a step (steps.py); valid orders go to Parquet, the others, each with the
# reason, to a dead-letter file. `runink run pipeline.dsl` runs it, `runink test` checks it.
Feature: Orders
  A small working example: change the contract, the step and the data to yours.

  @requires(cpu=1, memory="256Mi", timeout="5m")
  @golden("golden/clean-orders")
  Scenario: Clean orders
    @source("csv://data/orders.csv", contract="contracts:Order")
    @step("steps:normalize")
    @sink("parquet://out/orders.parquet")
    @sink("jsonl://out/rejected.jsonl", when="invalid")
    Given orders arrive as CSV
    When they are checked and normalized
    Then valid orders land in Parquet and the others in rejected.jsonl
