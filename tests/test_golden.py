"""`runink test`: golden scenarios pass, fail with a readable diff, and --update records them."""

from __future__ import annotations

import json
from pathlib import Path

from fixture_types import CliRunner


def test_shipped_golden_passes(run_cli: CliRunner, trades: Path) -> None:
    out = run_cli("test", ".", "--json", cwd=trades)
    assert out.returncode == 0, out.stderr
    assert [r["status"] for r in json.loads(out.stdout)] == ["passed"]
    assert not (trades / "out").exists()  # golden runs write to a temporary folder


def test_changed_step_fails_with_diff_then_update(run_cli: CliRunner, trades: Path) -> None:
    steps = trades / "steps.py"
    steps.write_text(steps.read_text().replace('"block"', '"BLOCK"'))
    out = run_cli("test", "trades.dsl", cwd=trades)
    assert out.returncode == 1
    assert "FAILED trades.dsl: Tag trades" in out.stdout
    assert "tagged.parquet row 1: tags: expected 'block', got 'BLOCK'" in out.stdout
    assert run_cli("test", "trades.dsl", "--update", cwd=trades).returncode == 0
    assert run_cli("test", "trades.dsl", cwd=trades).returncode == 0


def test_no_golden_scenarios_is_an_error(run_cli: CliRunner, orders: Path) -> None:
    out = run_cli("test", "orders", cwd=orders.parent)
    assert out.returncode == 1 and "no scenario with @golden" in out.stderr


def test_a_golden_row_compares_as_json_values_do_not_as_python_numbers() -> None:
    """Python's == took true for 1: a boolean column that became numbers passed its test."""
    from runink.core.golden import _diff

    assert (
        _diff("o.jsonl", [{"paid": True, "n": 10, "tags": [True]}], [{"paid": True, "n": 10.0, "tags": [True]}]) == []
    )
    assert _diff("o.jsonl", [{"paid": True}], [{"paid": 1}]) == ["o.jsonl row 1: paid: expected True, got 1"]
    assert _diff("o.jsonl", [{"tags": [False]}], [{"tags": [0]}]) == ["o.jsonl row 1: tags: expected [False], got [0]"]
    assert _diff("o.jsonl", [{"m": {"a": 1}}], [{"m": {"a": 1, "b": None}}]) != []


def test_a_golden_row_with_nan_or_nanoseconds_can_pass(tmp_path: Path) -> None:
    """NaN is not equal to itself: a float column with one failed every time; and a sink with
    nanosecond timestamps could not be read (Python's datetimes hold microseconds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from runink.core.golden import _diff, read_rows

    assert _diff("o.jsonl", [{"f": float("nan")}], [{"f": float("nan")}]) == []
    path = tmp_path / "o.parquet"
    pq.write_table(pa.table({"ts": pa.array([1_700_000_000_000_000_123], pa.timestamp("ns"))}), path)
    assert read_rows(path, "parquet") == [{"ts": "2023-11-14 22:13:20.000000123"}]


def test_a_csv_sinks_golden_rows_are_its_text_not_what_arrow_guesses(tmp_path: Path) -> None:
    """Read back with Arrow's guessing, "02134" was 2134 and the text "NA" null: a step that
    dropped the zero and blanked the note still passed its golden test (a review)."""
    from runink.core.golden import _diff, read_rows

    path = tmp_path / "o.csv"
    path.write_text('"zip","note","n"\n"02134","NA","7"\n"2134",,"7"\n')
    rows = read_rows(path, "csv")
    assert rows == [{"zip": "02134", "note": "NA", "n": "7"}, {"zip": "2134", "note": None, "n": "7"}]
    assert _diff("o.csv", [rows[0]], [rows[1]]) == [
        "o.csv row 1: note: expected 'NA', got None; zip: expected '02134', got '2134'"
    ]
