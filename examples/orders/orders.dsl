# Orders CSV -> validated Parquet (silver) + a dead-letter queue of bad rows,
# then the large orders picked out of silver for review.
@herd("finance")
Feature: Orders to silver
  Validate raw orders against the Order contract, normalise and enrich them,
  and list the large ones for review.

  @requires(cpu=1, memory="512Mi", timeout="10m")
  Scenario: Validate orders
    @source("csv://data/orders.csv", contract="contracts:Order")
    @step("steps:normalize")
    @step("steps:enrich")
    @sink("parquet://out/silver/orders.parquet")
    @sink("jsonl://out/dlq/orders.jsonl", when="invalid")
    Given orders arrive as CSV
    When they are normalized and enriched
    Then valid orders land in silver and invalid ones in the DLQ

  @requires(cpu=1, timeout="5m")
  Scenario: Large orders
    @source("parquet://out/silver/orders.parquet")
    @step("steps:large_orders")
    @sink("csv://out/gold/large_orders.csv")
    Given validated orders in silver
    Then orders worth 400 EUR or more land in gold for review
