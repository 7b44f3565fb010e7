# Trade events (JSON Lines) -> decoded, validated against the Trade contract, tagged.
@herd("markets")
Feature: Trade events

  @requires(cpu=1, memory="256Mi", timeout="5m")
  @retries(2, backoff="1s")
  @golden("golden/tag-trades")
  Scenario: Tag trades
    @source("jsonl://data/trades.jsonl", contract="contracts:Trade")
    @step("steps:tag")
    @sink("parquet://out/trades/tagged.parquet")
    @sink("jsonl://out/dlq/trades.jsonl", when="invalid")
    Given trade events arrive as JSON lines
    When they are decoded, validated and tagged
    Then tagged trades land in Parquet and bad events in the DLQ
