"""The .dsl language: parsing, and errors that name file:line:column and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from runink.core.pipeline import PipelineBuilder
from runink.core.pipeline.compile import CompiledPipeline, compile_pipeline
from runink.core.pipeline.dsl import DslError, parse, parse_file

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
@herd("finance")
@requires(cpu=2)
Feature: Orders to silver
  Free text describing the pipeline.

  @requires(memory="256Mi", timeout="10m")
  @retries(3, backoff="2s")
  Scenario: Validate orders
    @source("csv://data/orders.csv", contract="contracts:Order", delimiter=";")
    @step("steps:normalize")
    @step("steps:enrich")
    @sink("parquet://out/silver/orders.parquet")
    @sink("jsonl://out/dlq/orders.jsonl", when="invalid")  # dead letters
    @affinity(label="zone=eu", colocate_with="scenario:Summarise")
    Given orders arrive as CSV
    Then valid orders land in silver

  Scenario: Summarise
    @source("out/silver/orders.parquet")
    @sink("out/gold/summary.csv")
"""


def test_parses_feature_scenarios_and_annotations() -> None:
    pipeline = parse(GOOD, "orders.dsl")
    assert (pipeline.name, pipeline.herd) == ("Orders to silver", "finance")
    assert pipeline.description == ("Free text describing the pipeline.",)
    first, second = pipeline.scenarios
    assert first.source is not None and first.source.contract == "contracts:Order"
    assert first.source.options == {"delimiter": ";"}
    assert [s.ref for s in first.steps] == ["steps:normalize", "steps:enrich"]
    assert [(s.uri, s.when) for s in first.sinks] == [
        ("parquet://out/silver/orders.parquet", "valid"),
        ("jsonl://out/dlq/orders.jsonl", "invalid"),
    ]
    # feature-level cpu=2 is the default; the scenario adds memory and timeout
    assert (first.requires.cpu, first.requires.memory, first.requires.timeout) == (2.0, 256 * 1024**2, 600.0)
    assert (first.retries, first.backoff) == (3, 2.0)
    assert first.node_labels == {"zone": "eu"} and first.colocate_with == "Summarise"
    assert first.description == ("Given orders arrive as CSV", "Then valid orders land in silver")
    assert str(first.steps[1].at) == "orders.dsl:11:5"
    assert second.requires.cpu == 2.0 and second.requires.memory == 0


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            'Feature: x\n  Scenario: a\n    @sorce("a.csv")\n',
            "p.dsl:3:5",
            "unknown annotation @sorce (did you mean 'source'?)",
        ),
        ('Feature: x\n  Scenario: a\n    @sink("a.csv"\n', "p.dsl:3:", "@sink: invalid arguments"),
        (
            'Feature: x\n  Scenario: a\n    @sink("a.csv", when="bad")\n',
            "p.dsl:3:5",
            "when must be 'valid' or 'invalid'",
        ),
        ("Feature: x\n  Scenario: a\n    @step()\n", "p.dsl:3:5", "@step: missing a required argument: 'ref'"),
        ("Feature: x\n  Scenario: a\n    @step(ref=open)\n", "p.dsl:3:5", "arguments must be literals"),
        ('Feature: x\n  Scenario: a\n    @requires(memory="lots")\n', "p.dsl:3:5", "invalid memory size 'lots'"),
        ('Feature: x\n  Scenario: a\n    @requires(timeout="soon")\n', "p.dsl:3:5", "invalid duration 'soon'"),
        ("Feature: x\n  Scenario: a\n    @requires(disk=1)\n", "p.dsl:3:5", "unexpected keyword argument 'disk'"),
        ("Feature: x\n  Senario: a\n", "p.dsl:2:3", "unknown keyword 'Senario:' (did you mean 'Scenario'?)"),
        ("Scenario: a\n", "p.dsl:1:1", "Scenario before Feature"),
        ("Feature: x\n", "p.dsl:1:1", "the Feature has no Scenario"),
        ("Feature: x\n  Scenario: a\n  Scenario: a\n", "p.dsl:3:3", "duplicate scenario name 'a'"),
        ('Feature: x\n  Scenario: a\n    @herd("h")\n', "p.dsl:3:5", "@herd belongs before 'Feature:'"),
        ('@step("s:f")\nFeature: x\n  Scenario: a\n', "p.dsl:1:1", "@step belongs to a Scenario"),
        # a herd's name is a key in the Barn and a cgroup's name on the nodes
        ('@herd("My Team")\nFeature: x\n  Scenario: a\n', "p.dsl:1:1", "@herd: herd 'My Team': expected 1-63"),
        ('Feature: x\n  Scenario: a\n    @source("a.csv")\n    @source("b.csv")\n', "p.dsl:4:5", "second @source"),
        ("Feature: x\n  Scenario: a\n    hello\n", "p.dsl:3:5", "unexpected text 'hello'"),
        ("Feature: x\n  Given x\n", "p.dsl:2:3", "'Given' line outside a Scenario"),
    ],
)
def test_parse_errors(text: str, where: str, message: str) -> None:
    with pytest.raises(DslError) as info:
        parse(text, "p.dsl")
    assert str(info.value).startswith(where), str(info.value)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def write_project(tmp_path: Path, dsl: str) -> Path:
    (tmp_path / "steps.py").write_text("import pyarrow as pa\n\ndef keep(batch):\n    return batch\n")
    (tmp_path / "contracts.py").write_text(
        "from runink.core.contracts import Contract, Field\n\nclass Row(Contract):\n    id: int = Field(ge=0)\n"
    )
    path = tmp_path / "p.dsl"
    path.write_text(dsl)
    return path


def compile_text(tmp_path: Path, body: str) -> CompiledPipeline:
    return compile_pipeline(parse_file(write_project(tmp_path, "Feature: f\n" + body)))


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ('  Scenario: a\n    @sink("o.csv")\n', 2, "scenario 'a' has no @source"),
        ('  Scenario: a\n    @source("i.csv")\n', 2, "scenario 'a' has no @sink for its output"),
        (
            '  Scenario: a\n    @source("i.csv")\n    @step("steps:nope")\n    @sink("o.csv")\n',
            4,
            "step 'steps:nope': steps.py defines no 'nope'",
        ),
        (
            '  Scenario: a\n    @source("i.csv")\n    @step("nomodule:f")\n    @sink("o.csv")\n',
            4,
            "module 'nomodule' not found",
        ),
        (
            '  Scenario: a\n    @source("i.csv")\n    @step("steps")\n    @sink("o.csv")\n',
            4,
            "expected 'module:function'",
        ),
        (
            '  Scenario: a\n    @source("i.csv", contract="contracts:Missing")\n    @sink("o.csv")\n',
            3,
            "contract 'contracts:Missing': contracts.py defines no 'Missing'",
        ),
        ('  Scenario: a\n    @source("i.xlsx")\n    @sink("o.csv")\n', 3, "cannot tell the format"),
        ('  Scenario: a\n    @source("avro://i.avro")\n    @sink("o.csv")\n', 3, "no storage driver for format 'avro'"),
        (
            '  Scenario: a\n    @source("i.csv", delimeter=";")\n    @sink("o.csv")\n',
            3,
            "unknown option(s) delimeter for csv",
        ),
        ('  Scenario: a\n    @source("i.csv")\n    @sink("i.csv")\n', 4, "writes the dataset it reads"),
        (
            '  Scenario: a\n    @source("x.csv")\n    @sink("y.csv")\n  Scenario: b\n    @source("y.csv")\n'
            '    @sink("x.csv")\n',
            2,
            "cycle between scenarios: a -> b -> a",
        ),
        (
            '  Scenario: a\n    @source("x.csv")\n    @sink("y.csv")\n  Scenario: b\n    @source("z.csv")\n'
            '    @sink("y.parquet")\n    @sink("y.csv")\n',
            8,
            "also written by scenario 'a'",
        ),
        (
            '  Scenario: a\n    @source("i.csv", delimiter=5)\n    @sink("o.csv")\n',
            3,
            "delimiter=5 for csv is not text",
        ),
        ('  Scenario: a\n    @source("i.csv", delimiter=";;")\n    @sink("o.csv")\n', 3, "not one character"),
        ('  Scenario: a\n    @source("i.csv", block_size=-1)\n    @sink("o.csv")\n', 3, "a whole number from 1 to"),
        # (a quote or a line break cannot part values; an unknown codec failed the run at its first batch)
        ('  Scenario: a\n    @source("i.csv", delimiter=\'"\')\n    @sink("o.csv")\n', 3, "other than a quote"),
        ('  Scenario: a\n    @source("i.csv", delimiter="\\n")\n    @sink("o.csv")\n', 3, "or a line break"),
        (
            '  Scenario: a\n    @source("i.csv")\n    @sink("o.parquet", compression="nope")\n',
            4,
            "@sink: parquet option compression='nope': expected one of none, snappy, gzip, brotli, lz4, zstd",
        ),
        # a sink names one file: a folder (trailing "/"), or the folder of another sink's file,
        # could not be published (it failed after the other sink was: half an output)
        ('  Scenario: a\n    @source("i.csv")\n    @sink("parquet://out/orders/")\n', 4, "names a folder"),
        (
            '  Scenario: a\n    @source("i.csv")\n    @sink("jsonl://out/o/rejected.jsonl", when="invalid")\n'
            '    @sink("parquet://out/o")\n',
            5,
            "is the folder of another sink's file",
        ),
    ],
)
def test_compile_errors(tmp_path: Path, body: str, line: int, message: str) -> None:
    with pytest.raises(DslError) as info:
        compile_text(tmp_path, body)
    assert f"p.dsl:{line}:" in str(info.value), str(info.value)
    assert message in str(info.value)


def test_compile_orders_dependencies_and_does_not_import_user_code(tmp_path: Path) -> None:
    (tmp_path / "loud.py").write_text(
        "raise SystemExit('imported at compile time!')\n\ndef f(batch):\n    return batch\n"
    )
    compiled = compile_text(
        tmp_path,
        '  Scenario: later\n    @source("mid.csv")\n    @sink("end.csv")\n'
        '  Scenario: first\n    @source("in.csv")\n    @step("loud:f")\n    @sink("mid.csv")\n'
        '  Scenario: alone\n    @source("other.csv")\n    @sink("other.parquet")\n',
    )
    assert [s.name for s in compiled.scenarios] == ["first", "alone", "later"]
    assert compiled.levels == (("first", "alone"), ("later",))
    assert compiled.get("later").upstream == ("first",)


def test_paths_are_relative_to_the_dsl_file(tmp_path: Path) -> None:
    compiled = compile_text(tmp_path, '  Scenario: a\n    @source("csv://data/in.csv")\n    @sink("out/o.parquet")\n')
    item = compiled.scenarios[0]
    assert item.source.path == tmp_path / "data" / "in.csv"
    assert item.valid_sinks[0].path == tmp_path / "out" / "o.parquet" and item.valid_sinks[0].format == "parquet"


def test_builder_makes_the_same_model(tmp_path: Path) -> None:
    built = (
        PipelineBuilder("Orders to silver", herd="finance", base_dir=tmp_path)
        .scenario("Validate orders", requires={"cpu": 1, "memory": "256Mi"})
        .source("csv://data/orders.csv", contract="contracts:Order")
        .step("steps:normalize")
        .sink("parquet://out/silver/orders.parquet")
        .sink("jsonl://out/dlq/orders.jsonl", when="invalid")
        .build()
    )
    parsed = parse(GOOD, "orders.dsl")
    built_source, parsed_source = built.scenarios[0].source, parsed.scenarios[0].source
    assert built_source is not None and parsed_source is not None
    assert built_source.uri == parsed_source.uri
    assert [s.uri for s in built.scenarios[0].sinks] == [s.uri for s in parsed.scenarios[0].sinks]
    assert built.scenarios[0].requires.memory == parsed.scenarios[0].requires.memory


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*/*.dsl")))
def test_examples_compile(example: Path) -> None:
    compile_pipeline(parse_file(example))


def _summary(path: Path) -> dict[str, dict[str, object]]:
    """Everything the annotations of a parsed pipeline set, scenario by scenario."""
    out: dict[str, dict[str, object]] = {}
    for s in parse_file(path).scenarios:
        assert s.source is not None
        out[s.name] = {
            "source": (s.source.uri, s.source.contract),
            "steps": [step.ref for step in s.steps],
            "sinks": [(sink.uri, sink.when) for sink in s.sinks],
            "requires": (s.requires.cpu, s.requires.memory, s.requires.timeout),
            "retries": (s.retries, s.backoff),
            "golden": s.golden,
            "network": s.network,
        }
    return out


def test_every_annotation_of_the_examples_belongs_to_its_scenario() -> None:
    """The annotation lines right above 'Scenario: B' are B's, not the scenario above's."""
    assert _summary(REPO / "examples" / "orders" / "orders.dsl") == {
        "Validate orders": {
            "source": ("csv://data/orders.csv", "contracts:Order"),
            "steps": ["steps:normalize", "steps:enrich"],
            "sinks": [("parquet://out/silver/orders.parquet", "valid"), ("jsonl://out/dlq/orders.jsonl", "invalid")],
            "requires": (1.0, 512 * 1024**2, 600.0),
            "retries": (0, 1.0),
            "golden": None,
            "network": False,
        },
        "Large orders": {
            "source": ("parquet://out/silver/orders.parquet", None),
            "steps": ["steps:large_orders"],
            "sinks": [("csv://out/gold/large_orders.csv", "valid")],
            "requires": (1.0, 0, 300.0),
            "retries": (0, 1.0),
            "golden": None,
            "network": False,
        },
    }
    assert _summary(REPO / "examples" / "trades" / "trades.dsl") == {
        "Tag trades": {
            "source": ("jsonl://data/trades.jsonl", "contracts:Trade"),
            "steps": ["steps:tag"],
            "sinks": [("parquet://out/trades/tagged.parquet", "valid"), ("jsonl://out/dlq/trades.jsonl", "invalid")],
            "requires": (1.0, 256 * 1024**2, 300.0),
            "retries": (2, 1.0),
            "golden": "golden/tag-trades",
            "network": False,
        },
    }


@pytest.mark.parametrize(
    "text",
    [
        # indented body, scenario annotations at the Scenario's column, no Given line in between
        'Feature: f\n  Scenario: a\n    @source("a.csv")\n    @sink("b.csv")\n  @requires(timeout="5m")\n'
        '  @network\n  Scenario: b\n    @source("b.csv")\n    @sink("c.csv")\n',
        # everything flush left: a Given line ends a's body
        'Feature: f\nScenario: a\n@source("a.csv")\n@sink("b.csv")\nGiven a\n# b needs time\n'
        '@requires(timeout="5m")\n@network\nScenario: b\n@source("b.csv")\n@sink("c.csv")\n',
    ],
)
def test_annotations_above_a_scenario_are_its_own(text: str) -> None:
    a, b = parse(text, "p.dsl").scenarios
    assert a.source is not None and b.source is not None
    assert (a.requires.timeout, a.network, a.source.uri, [s.uri for s in a.sinks]) == (
        None,
        False,
        "a.csv",
        ["b.csv"],
    )
    assert (b.requires.timeout, b.network, b.source.uri, [s.uri for s in b.sinks]) == (
        300.0,
        True,
        "b.csv",
        ["c.csv"],
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('@source("csv://in.csv", contract=5)', "@source: contract=5 is not text or None"),
        ("@affinity(label=5)", "@affinity: label=5 is not text or a list of text or None"),
        ("@step({[]: 1})", "@step: arguments must be literals"),
        ('@sink("csv://out/a\\x00b.csv")', "@sink: uri contains a NUL byte"),
        ("@retries(n=True)", "@retries: n must be a whole number >= 0, got True"),
    ],
)
def test_an_argument_of_the_wrong_type_is_one_line_naming_it(tmp_path: Path, line: str, message: str) -> None:
    # (each broke the compiler with a TypeError or ValueError: an internal error, no line)
    body = ["Feature: F", "  Scenario: S", '    @source("csv://in.csv")', '    @sink("csv://out/o.csv")']
    if line.startswith("@source"):
        body[2], where = f"    {line}", 3
    else:
        body.insert(3, f"    {line}")
        where = 4
    dsl = tmp_path / "p.dsl"
    dsl.write_text("\n".join(body) + "\n")
    with pytest.raises(DslError) as raised:
        parse_file(dsl)
    assert str(raised.value).startswith(f"{dsl}:{where}:5: ") and message in str(raised.value)


@pytest.mark.parametrize(
    "module",
    [
        "from impl import *\n",
        "import sys\nif sys.version_info >= (3, 11):\n    def f(batch):\n        return batch\n",
        "try:\n    from fast import f\nexcept ImportError:\n    def f(batch):\n        return batch\n",
    ],
    ids=["star-import", "defined-under-if", "defined-under-try"],
)
def test_a_step_the_module_may_define_is_not_refused_by_the_code_check(tmp_path: Path, module: str) -> None:
    # (the check read only top-level definitions: valid step modules were refused)
    (tmp_path / "impl.py").write_text("def f(batch):\n    return batch\n")
    (tmp_path / "mysteps.py").write_text(module)
    compiled = compile_text(
        tmp_path, '  Scenario: a\n    @source("i.csv")\n    @step("mysteps:f")\n    @sink("o.csv")\n'
    )
    assert [s.name for s in compiled.scenarios] == ["a"]
    (tmp_path / "mysteps.py").write_text("def g(batch):\n    return batch\n")
    with pytest.raises(DslError, match="defines no 'f'"):  # (what is surely missing still is)
        compile_text(tmp_path, '  Scenario: a\n    @source("i.csv")\n    @step("mysteps:f")\n    @sink("o.csv")\n')


def test_a_pipeline_files_encoding_is_one_line_naming_its_line_and_a_bom_is_no_text(tmp_path: Path) -> None:
    dsl = tmp_path / "p.dsl"
    dsl.write_bytes(b'Feature: f\n  Scenario: a\n    @source("i\xff.csv")\n    @sink("o.csv")\n')
    with pytest.raises(DslError, match=rf"^{dsl}:3:1: not UTF-8 text \(invalid start byte\)$"):
        parse_file(dsl)
    dsl.write_bytes(b'\xef\xbb\xbfFeature: f\n  Scenario: a\n    @source("i.csv")\n    @sink("o.csv")\n')
    assert [s.name for s in parse_file(dsl).scenarios] == ["a"]


def test_secrets_of_one_scenario_are_all_files_or_all_variables_too(tmp_path: Path) -> None:
    # (env=True on one @secrets put every secret of the scenario in the slice's environment)
    dsl = tmp_path / "p.dsl"
    dsl.write_text(
        'Feature: F\n  Scenario: S\n    @secrets("db.password")\n    @secrets("openai_api_key", env=True)\n'
        '    @source("csv://in.csv")\n    @sink("csv://out/o.csv")\n'
    )
    with pytest.raises(DslError, match=r"p.dsl:4:5: @secrets: env=True here, env=False on this scenario"):
        parse_file(dsl)


def test_a_string_with_half_a_utf16_pair_is_refused_where_it_is() -> None:
    # "out/\ud800.csv" passed the parser and failed later as an internal error (no character)
    with pytest.raises(DslError, match=r"^p.dsl:3:5: @sink: a string holds half of a UTF-16 pair"):
        parse('Feature: f\n  Scenario: a\n    @sink("out/\\ud800.csv")\n', "p.dsl")
