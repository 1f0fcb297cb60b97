"""The ``rlaif`` command. Each area adds its verbs from ``rlaif/commands/<area>.py``.

Every verb takes ``--config FILE.yaml`` and trailing ``key=value`` overrides (see `rlaif.config`).
User mistakes (`rlaif.errors.UserError`) print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from typing import Any

from rlaif import __version__
from rlaif.errors import UserError

# Modules that define `add_parsers(subparsers)`; kept light: heavy imports happen inside commands.
COMMAND_MODULES = [
    "rlaif.commands.pipeline",  # run, generate, judge, build
    "rlaif.commands.rubric",    # rubric lint | preview | calibrate
    "rlaif.commands.train",     # train rm | dpo | ppo, rm score
]


def describe_config(cls: type, prefix: str = "") -> str:
    """One line per config key (dotted for nested), with default and help, for ``--help``."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default: Any
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if dataclasses.is_dataclass(default):
            lines.append(describe_config(type(default), prefix + f.name + "."))
            continue
        tp = hints[f.name]
        tname = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        help_ = f.metadata.get("help", "")
        lines.append(f"  {prefix}{f.name}={default!r}  ({tname}){'  ' + help_ if help_ else ''}")
    return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type | None = None) -> None:
    """Add ``--config`` and ``key=value`` overrides; list every config key in the help."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (overridden by key=value)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config option, dotted for nested ones (e.g. policy.model=DIR)")
    if config_cls is not None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = "config options (key=value or in --config YAML):\n" + describe_config(config_cls)


class IntermixedParser(argparse.ArgumentParser):
    """Lets options and ``key=value`` overrides come in any order (``--prompts F n=2 --out D``).

    Plain argparse stops filling a ``nargs="*"`` positional once an option follows it. Parsers
    that own sub-commands parse normally (argparse cannot intermix those).
    """

    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if self._inside or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlaif", description="Reinforcement learning from AI feedback: make preference data "
        "with a judge model and train on it.")
    parser.add_argument("--version", action="version", version=f"rlaif {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=IntermixedParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # area not built yet
                continue
            raise
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"rlaif: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rlaif: interrupted; finished rows are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
