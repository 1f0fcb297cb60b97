"""``python:FILE.py:FUNC``: a user function as a reward, TRL's reward-function convention.

The file is imported once by path; every batch calls

    FUNC(prompts=prompts, completions=completions, **columns)

``prompts``: one chat (a list of ``{"role", "content"}`` dicts) per completion; ``completions``: the
completion texts (str); ``columns``: ``id`` (the prompt id) and each metadata column of the prompt
file, as lists aligned with ``completions`` (None where a row lacks the column; columns named
``prompts`` or ``completions`` are not passed). Accept ``**kwargs`` to ignore the columns you do
not use. Return one float (or int) per completion, or None to mask that sample out. Raising,
returning the wrong length, a bool, a string, NaN or inf is a one-line error naming the spec.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from rlaif.io.seeds import digest_int
from rlaif.rewards.base import Reward, spec_error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _where_raised(error: BaseException, file: Path) -> str:
    """`` (FILE:LINE)`` of the innermost frame of the exception inside ``file``, or ''."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if Path(frame.filename).resolve() == file.resolve()]
    return f" ({file}:{frames[-1].lineno})" if frames else ""


def _as_reward(spec: str, value: Any, index: int) -> Reward:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise spec_error(spec, f"reward {index} is {value!r} ({type(value).__name__}); expected a number or None")
    value = float(value)
    if not math.isfinite(value):
        raise spec_error(spec, f"reward {index} is {value}; rewards must be finite (return None to mask a sample)")
    return value


class PythonReward:
    """``python:FILE.py:FUNC``: a user function, imported once by path (see the module docstring)."""

    def __init__(self, spec: str, target: str, modules: dict[str, ModuleType] | None = None) -> None:
        self.name = spec
        file, _, func = target.rpartition(":")
        self.file = Path(file).expanduser()
        key = str(self.file.resolve())
        modules = {} if modules is None else modules  # one import per file, whatever its specs
        if key not in modules:
            modules[key] = self._import(spec, file, key)
        fn = getattr(modules[key], func, None)
        if not callable(fn):
            raise spec_error(spec, f"{file}: '{func}' is {'missing' if fn is None else 'not callable'}")
        self.fn: Callable[..., Any] = fn

    def _import(self, spec: str, file: str, key: str) -> ModuleType:
        module_name = f"rlaif_reward_{digest_int(key, 8):016x}"
        try:
            loader_spec = importlib.util.spec_from_file_location(module_name, self.file)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module  # dataclasses/pickle inside the file need it registered
            loader_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(module_name, None)
            raise spec_error(spec, f"importing {file} failed: {_first_line(e)}{_where_raised(e, self.file)}") from None
        return module

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        keys = dict.fromkeys(key for row in rows for key in row if key not in ("prompts", "completions"))
        columns = {key: [row.get(key) for row in rows] for key in keys}
        try:
            out = self.fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:
            raise spec_error(self.name, f"the function raised {_first_line(e)}{_where_raised(e, self.file)}") from None
        if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):
            out = out.tolist()  # numpy array or torch tensor
        if not isinstance(out, (list, tuple)):
            raise spec_error(self.name, f"the function returned {type(out).__name__}; expected a list of "
                                        f"{len(completions)} rewards (numbers or None)")
        if len(out) != len(completions):
            raise spec_error(self.name, f"the function returned {len(out)} rewards for {len(completions)} completions")
        return [_as_reward(self.name, value, index) for index, value in enumerate(out)]

    def close(self) -> None:
        pass
