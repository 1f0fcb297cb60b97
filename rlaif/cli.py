"""The ``rlaif`` command. Each area adds its verbs from ``rlaif/commands/<area>.py``.

Every verb takes ``--config FILE.yaml`` and trailing ``key=value`` overrides (see `rlaif.config`).
User mistakes (`rlaif.errors.UserError`) print one line and exit 2; no traceback. An engine that
fails to start or dies (`rlaif.errors.EngineError`, a UserError) prints one line with its root cause
and exits 3. A full disk or quota while writing prints one line naming the file and exits 4 (`rlaif.io.diskfull`:
finished work is kept, the same command resumes once there is space). `rlaif loop` exits 5 when its reward-hacking
guard stops it (rlaif/loop/guard.py). Ctrl-C exits 130 and SIGTERM 143, both after the commands' cleanup has run
(engines closed, finished rows kept).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Any

from rlaif import __version__
from rlaif.errors import UserError
from rlaif.io import diskfull
from rlaif.io.redact import redact

# Modules that define `add_parsers(subparsers)`; kept light: heavy imports happen inside commands.
COMMAND_MODULES = [
    "rlaif.commands.pipeline",  # run, generate, judge, build
    "rlaif.commands.rubric",    # rubric lint | preview | calibrate
    "rlaif.commands.train",     # train rm | dpo | grpo | rloo | ppo, rm score
    "rlaif.commands.evaluate",  # eval: win rate of A over B
    "rlaif.commands.loop",      # loop: rounds of run -> train -> eval
    "rlaif.commands.review",    # review: people check the judge's pairs in the browser; review report
]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that `finally` blocks close the engines
    (a vLLM EngineCore process would otherwise outlive rlaif) and finished rows stay on disk."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


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
        "with a judge model and train on it.",
        epilog="Exit codes: 0 done; 1 a check failed (e.g. calibrate below --min-agreement); 2 a mistake in an "
        "input or option (one line names it); 3 an engine failed to start or died; 4 the disk (or quota) "
        "filled up while writing (finished work is kept: free space and rerun the same command); "
        "130 Ctrl-C, 143 SIGTERM (finished rows are kept).")
    parser.add_argument("--version", action="version", version=f"rlaif {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=IntermixedParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"rlaif: error: {redact(str(e))}", file=sys.stderr)  # no password of a URL on screen
        return e.exit_code
    except Exception as e:
        out = getattr(args, "out", None)
        if not diskfull.is_disk_full(e, out):
            raise
        print(f"rlaif: error: {redact(diskfull.message(e, out))}", file=sys.stderr)
        return diskfull.EXIT_CODE
    except KeyboardInterrupt as e:
        what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"rlaif: {what}; finished rows are kept, rerun the same command to resume", file=sys.stderr)
        return code
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        leave_process_group()


def leave_process_group() -> None:
    """Destroy the torch.distributed process group a verb joined (``accelerate launch``), if any.

    Left alive until interpreter exit, gloo's worker threads are torn down with the interpreter and a
    rank may abort with "terminate called without an active exception" (SIGABRT) after its work is done
    (pytorch/pytorch#190489); NCCL warns. Only looks if torch was imported: light verbs stay light."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
