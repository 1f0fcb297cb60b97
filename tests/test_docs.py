"""Every `rlaif ...` command in README.md and docs/*.md parses against the real command line.

Commands are taken from fenced code blocks (a line starting with `rlaif `, or `$ rlaif ` in a
console block, with `\\` continuation lines joined; `accelerate launch ... -m rlaif.cli ARGS`
counts as `rlaif ARGS`) and from inline code spans that start with `rlaif `. Each is parsed with
the parser `rlaif.cli.build_parser()` builds, without running anything: an unknown verb, an
unknown `--option` or a bad option value fails, and so does a `key=value` override whose key is
not among the config options the verb's `--help` lists. Placeholders such as FILE or DIR are fine
as values; `...` stands for "the arguments shown above" and is skipped; an inline span holding
`|` names alternatives (`rlaif train grpo | rloo`), not one command, and is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from rlaif.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_SPAN = re.compile(r"`(rlaif [^`]+)`")
CONFIG_LINE = re.compile(r"^  ([A-Za-z_][\w.]*)=.*?  \(([^)]*)\)")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
MODULE_LAUNCH = ("-m", "rlaif.cli")
SHELL_OPERATORS = {"|", "||", ">", ">>", "<", "<<", "&&", ";", "&", "2>", "2>&1"}


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join lines that end with a backslash to the next one; keep the first line's number."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        joined.append((number, line))
    if pending is not None:
        joined.append(pending)
    return joined


def _block_commands(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Command lines of one fenced block: `$ ` lines in a console block, else lines that run rlaif."""
    console = any(line.lstrip().startswith("$ ") for _, line in block)
    commands = []
    for number, line in _join_continuations(block):
        text = line.strip()
        if console:
            if not text.startswith("$ "):
                continue
            text = text[2:].strip()
        if text.startswith("rlaif ") or " ".join(MODULE_LAUNCH) in text:
            commands.append((number, text))
    return commands


def extract_commands(markdown: str) -> list[tuple[int, str, bool]]:
    """(line number, command text, whether it is an inline span) of every rlaif command."""
    commands: list[tuple[int, str, bool]] = []
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                commands += [(number, text, False) for number, text in _block_commands(block)]
                block = None
        elif block is not None:
            block.append((number, line))
        else:
            commands += [(number, span, True) for span in INLINE_SPAN.findall(line) if "|" not in span]
    return commands


def command_arguments(command: str) -> list[str] | None:
    """The argv after `rlaif` (or after `-m rlaif.cli`), up to a pipe, redirection or comment."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    for word in lexer:
        if word in SHELL_OPERATORS or set(word) <= set("|&;<>"):
            break
        words.append(word)
    if words[:1] == ["rlaif"]:
        arguments = words[1:]
    elif " ".join(MODULE_LAUNCH) in " ".join(words):
        start = next(i for i in range(len(words)) if tuple(words[i:i + 2]) == MODULE_LAUNCH)
        arguments = words[start + 2:]
    else:
        return None
    return [word for word in arguments if word != "..."]


def _verb_parser(parser: argparse.ArgumentParser, arguments: list[str]) -> argparse.ArgumentParser:
    """The sub-parser that handles ``arguments`` (e.g. the one for `rubric lint`)."""
    current = parser
    for word in arguments:
        subparsers = current._subparsers
        if subparsers is None:
            break
        choices = subparsers._group_actions[0].choices  # type: ignore[attr-defined]
        if word not in choices:
            break
        current = choices[word]
    return current


def config_keys(verb_parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(every config key, the keys that take a mapping) as the verb's --help epilog lists them."""
    keys: set[str] = set()
    mapping_keys: set[str] = set()
    for line in (verb_parser.epilog or "").splitlines():
        match = CONFIG_LINE.match(line)
        if match:
            keys.add(match.group(1))
            if match.group(2).startswith("dict"):
                mapping_keys.add(match.group(1))
    return keys, mapping_keys


def _override_problems(verb_parser: argparse.ArgumentParser, overrides: list[str]) -> list[str]:
    keys, mapping_keys = config_keys(verb_parser)
    if overrides and not keys:
        return [f"{verb_parser.prog} lists no config options in its --help, yet got {overrides}"]
    problems = []
    for override in overrides:
        key, sep, _ = override.partition("=")
        key = key.replace("-", "_")
        parts = key.split(".")
        prefixes = {".".join(parts[:end]) for end in range(1, len(parts))}
        if not sep or not key:
            problems.append(f"'{override}' is not key=value")
        elif key not in keys and not prefixes & mapping_keys:
            problems.append(f"unknown config key '{key}' for {verb_parser.prog}")
    return problems


def _parse(parser: argparse.ArgumentParser, arguments: list[str]) -> tuple[argparse.Namespace | None, str]:
    """Parse without running: (namespace, "") or (None, argparse's one-line error)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace, unknown = parser.parse_known_args(arguments)
    except SystemExit:
        return None, stderr.getvalue().strip().splitlines()[-1]
    if unknown:
        return None, f"unrecognized arguments: {' '.join(unknown)}"
    return namespace, ""


def _unknown_options(verb_parser: argparse.ArgumentParser, arguments: list[str]) -> list[str]:
    known = {option for action in verb_parser._actions for option in action.option_strings}
    return [f"unrecognized arguments: {word}" for word in arguments
            if word.startswith("--") and word.split("=")[0] not in known]


def check_command(parser: argparse.ArgumentParser, arguments: list[str], partial: bool = False) -> list[str]:
    """Problems with one command's arguments; empty when it parses and every key is known.

    ``partial``: the command names a verb in running text (`rlaif rubric calibrate --examples
    FILE`), so missing arguments are fine; the verb and every `--option` must still exist.
    """
    wants_help = [word for word in arguments if word in ("-h", "--help")]
    arguments = [word for word in arguments if word not in wants_help]
    namespace, error = _parse(parser, arguments)
    verb_parser = _verb_parser(parser, arguments)
    if partial and "arguments are required" in error:
        return _unknown_options(verb_parser, arguments)
    if namespace is None:
        return [error]
    if getattr(namespace, "func", None) is None and not (wants_help or partial):
        return ["no verb (or a verb group without its sub-verb)"]
    return _override_problems(verb_parser, getattr(namespace, "overrides", None) or [])


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_documents_hold_commands() -> None:
    names = {path.name for path in DOC_FILES}
    assert {"README.md", "rubrics.md", "training.md", "online-rl.md", "scaling.md"} <= names
    for path in DOC_FILES:
        if path.name in ("README.md", "rubrics.md", "training.md", "online-rl.md", "loops-and-eval.md"):
            assert extract_commands(path.read_text(encoding="utf-8")), f"{path.name}: no rlaif command found"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: path.name)
def test_every_documented_command_parses(parser: argparse.ArgumentParser, path: Path) -> None:
    failures = []
    for number, command, inline in extract_commands(path.read_text(encoding="utf-8")):
        arguments = command_arguments(command)
        if arguments is None:
            continue
        failures += [f"{path.name}:{number}: {command}\n    {problem}"
                     for problem in check_command(parser, arguments, partial=inline)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: path.name)
def test_relative_links_point_at_files(path: Path) -> None:
    targets = MARKDOWN_LINK.findall(path.read_text(encoding="utf-8"))
    missing = [target for target in targets if "://" not in target and not (path.parent / target).exists()]
    assert not missing, f"{path.name}: links to missing files: {missing}"


def test_extractor_reads_blocks_consoles_continuations_and_spans() -> None:
    markdown = "\n".join([
        "Run `rlaif run --prompts FILE` or `rlaif train grpo | rloo`.",
        "```bash",
        "rlaif train dpo --data DIR \\",
        "    --out DIR beta=0.1   # a comment",
        "accelerate launch --config_file c.yaml -m rlaif.cli train rm --data DIR",
        "```",
        "```console",
        "$ rlaif rubric lint rubrics/x.yaml",
        "rlaif rubric this is output, not a command",
        "```",
    ])
    commands = [command for _, command, _ in extract_commands(markdown)]
    assert len(commands) == 4 and commands[0] == "rlaif run --prompts FILE"
    assert commands[3] == "rlaif rubric lint rubrics/x.yaml"
    assert command_arguments(commands[1]) == ["train", "dpo", "--data", "DIR", "--out", "DIR", "beta=0.1"]
    assert command_arguments(commands[2]) == ["train", "rm", "--data", "DIR"]
    assert command_arguments("rlaif rm score --model DIR > scored.jsonl") == ["rm", "score", "--model", "DIR"]


def test_checker_reads_verbs_named_in_running_text(parser: argparse.ArgumentParser) -> None:
    assert check_command(parser, ["rubric", "calibrate", "--examples", "FILE"], partial=True) == []
    assert check_command(parser, ["train"], partial=True) == []
    assert check_command(parser, ["rubric", "calibrate", "--made-up"], partial=True)
    assert check_command(parser, ["rubric", "calibrate", "--examples", "FILE"])  # a full command needs RUBRIC


def test_checker_accepts_real_commands(parser: argparse.ArgumentParser) -> None:
    for command in ["rlaif run --prompts FILE --rubric helpfulness --out DIR n=4 judge.engine=openai",
                    "rlaif run ... rubric_weights.helpfulness=2",
                    "rlaif train grpo --prompts FILE --reward python:f.py:g --out DIR k=4 lora.enabled=true",
                    "rlaif rubric preview helpfulness --prompt 'Hi?' --response Hello judge.engine=hf",
                    "rlaif loop --config FILE.yaml --out DIR dpo.beta=0.5",
                    "rlaif --help", "rlaif train grpo --help"]:
        assert check_command(parser, command_arguments(command) or []) == [], command


@pytest.mark.parametrize("command, problem", [
    ("rlaif run --prompts FILE --made-up-option 3", "unrecognized arguments: --made-up-option"),
    ("rlaif frobnicate --out DIR", "invalid choice: 'frobnicate'"),
    ("rlaif train kto --data DIR", "invalid choice: 'kto'"),
    ("rlaif run --prompts FILE made_up_key=1", "unknown config key 'made_up_key'"),
    ("rlaif run --prompts FILE policy.made_up=1", "unknown config key 'policy.made_up'"),
    ("rlaif rubric preview helpfulness --row N", "invalid int value: 'N'"),
    ("rlaif train", "no verb"),
    ("rlaif train kto --help", "invalid choice: 'kto'"),
])
def test_checker_rejects_made_up_commands(parser: argparse.ArgumentParser, command: str, problem: str) -> None:
    problems = check_command(parser, command_arguments(command) or [])
    assert problems and problem in problems[0], problems
