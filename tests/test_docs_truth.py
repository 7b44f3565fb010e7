"""The README and docs say what is true now: their config examples load under the strict
loader and show only keys something reads, and every command and flag they show exists.

The configuration accepts a few keys for the roadmap's cluster that no command acts on yet
(NOT_READ below). The README must not show them as if they did anything, must say they are
not used, and this test fails as soon as the code starts reading one, so the docs move too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from runink.core.config import RuninkConfig, Section, load_config
from runink.core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((REPO / "docs").glob("*.md"))}

#: config keys accepted (RuninkConfig has them) but read by no command yet -> a pattern that
#: would find a read of each in core/ or plugins/
NOT_READ: dict[str, str] = {
    "scheduler.weights": r"config\.scheduler\.weights\b",
    "barn": r"config\.barn\b|configured_driver\([^,)]*,\s*[\"']barn[\"']",
}
#: files that handle every key generically (the model, `config show`, the driver loader, and
#: `--dry-run`'s check that driver names exist): not uses of the key
GENERIC = {"core/config.py", "core/cli/config_cmd.py", "core/drivers.py", "core/dryrun.py"}


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def leaf_keys(data: dict[str, object], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        if isinstance(value, dict) and value and key != "options":
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def config_examples() -> list[tuple[str, str]]:
    """(where, TOML text) of every runink config example; pyproject snippets are not config."""
    found = [("README.md", text) for text in blocks(README, "toml")]
    found += [(f"docs/{name}", text) for name, text in DOCS.items() for text in blocks(text, "toml")]
    return [(where, text) for where, text in found if "[project" not in text]


def readme_example() -> str:
    (example,) = [text for text in blocks(README, "toml") if "[executor]" in text]
    return example


@pytest.mark.parametrize(("where", "text"), config_examples(), ids=lambda v: v if len(v) < 40 else "")
def test_every_config_example_loads_strictly(where: str, text: str, tmp_path: Path) -> None:
    file = tmp_path / "runink.toml"
    file.write_text(text)
    config = load_config(file, environ={})
    for key in leaf_keys(tomllib.loads(text)):
        assert config.source_of(key) != "default", f"{where}: {key} was not taken from the file"


def test_a_typo_in_the_readme_example_is_one_line_naming_key_and_file(tmp_path: Path) -> None:
    file = tmp_path / "runink.toml"
    file.write_text(readme_example().replace("max_parallel", "max_paralel"))
    with pytest.raises(ConfigError) as raised:
        load_config(file, environ={})
    line = next(n for n, text in enumerate(file.read_text().splitlines(), 1) if "max_paralel" in text)
    assert str(raised.value) == f"{file}:{line}: run.max_paralel: unknown key"
    out = subprocess.run(
        [sys.executable, "-m", "runink", "--config", str(file), "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [f"error: {raised.value}"]


def test_the_readme_example_shows_only_keys_something_reads() -> None:
    shown = list(leaf_keys(tomllib.loads(readme_example())))
    for key in shown:
        unused = [name for name in NOT_READ if key == name or key.startswith(name + ".")]
        assert not unused, f"README's config example shows {key}, which no command reads"
    paragraph = README[README.index("Accepted but not used yet") :].split("\n\n")[0]
    for name in NOT_READ:
        shown_as = f"`{name}`" if "." in name else f"`[{name}]`"
        assert shown_as in paragraph, f"README does not say that {name} is not used yet"


@pytest.mark.parametrize("key", sorted(NOT_READ))
def test_keys_the_readme_calls_unused_are_accepted_and_unread(key: str) -> None:
    model: object = RuninkConfig
    for part in key.split("."):
        assert isinstance(model, type) and issubclass(model, Section), key
        fields = model.field_types()
        assert part in fields, f"the config no longer has {key}: update README's note"
        model = fields[part]
    pattern = re.compile(NOT_READ[key])
    for path in sorted([*(REPO / "core").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]):
        relative = path.relative_to(REPO).as_posix()
        if relative in GENERIC:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), (
                f"{relative}:{number} reads {key}: README (and docs) call it unused; say what it does now"
            )


def cli_options() -> dict[str, list[str]]:
    """Every command path of the built CLI -> its options (in a child: building the CLI loads plugins)."""
    code = """
import json
from runink.core.cli.app import build_app
from runink.core.cli.state import CliState
found = {}
def walk(command, path):
    found[" ".join(path)] = [o for p in command.params for o in (*p.opts, *p.secondary_opts)] + ["--help"]
    for name, sub in getattr(command, "commands", {}).items():
        walk(sub, [*path, name])
walk(build_app(CliState.from_argv([])), [])
print(json.dumps(found))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(out.stdout))


@pytest.fixture(scope="module")
def commands() -> dict[str, list[str]]:
    return cli_options()


def command_lines(text: str) -> list[str]:
    """`runink ...` lines of console/sh blocks (without the prompt and trailing comment), and inline ones."""
    lines = []
    for block in blocks(text, "console") + blocks(text, "sh"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.strip().removeprefix("$ ").split("  #")[0].strip()
            if line.startswith("runink ") or line == "runink":
                lines.append(line)
    return lines + re.findall(r"`(runink [^`]*)`", text)  # and inline ones: `runink run --dry-run`


def test_every_documented_runink_command_and_flag_exists(commands: dict[str, list[str]]) -> None:
    lines = command_lines(README) + [line for text in DOCS.values() for line in command_lines(text)]
    assert len(lines) >= 15
    for line in lines:
        words = line.split()[1:]
        path: list[str] = []
        while words and " ".join([*path, words[0]]) in commands:
            path.append(words.pop(0))
        for word in words:
            if word == "--":  # what follows is the command's own (runink exec -- CMD ARGS)
                break
            flag = word.split("=")[0]
            if flag.startswith("--"):
                assert flag in commands[" ".join(path)], f"`{line}`: runink {' '.join(path)} has no {flag}"


def test_every_flag_docs_barn_names_is_a_runink_barn_flag(commands: dict[str, list[str]]) -> None:
    """Flags in docs/barn.md's prose and blocks are `runink barn`'s, but those of a line or
    span that names another command (`runink server --init`), which are that command's."""
    barn_flags = {flag for path, flags in commands.items() if path.startswith("barn") for flag in flags}
    text = DOCS["barn.md"]
    for line in command_lines(text):
        words, path = line.split()[1:], []
        while words and " ".join([*path, words[0]]) in commands:
            path.append(words.pop(0))
        for flag in re.findall(r"(--[a-z][a-z-]+)", line):
            assert flag in commands[" ".join(path)], f"docs/barn.md: `{line}`: runink {' '.join(path)} has no {flag}"
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]*)`", prose):
        other = span.startswith("runink ") and not span.startswith("runink barn")
        for flag in re.findall(r"(--[a-z][a-z-]+)", span):
            known = {f for flags in commands.values() for f in flags} if other else barn_flags
            assert flag in known, f"docs/barn.md names {flag} in `{span}`, which no command there takes"
