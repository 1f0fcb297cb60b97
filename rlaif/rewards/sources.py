"""Rewards for online RL: a trained reward model, the judge, or a Python function, mixed by weight.

Specs (``--reward SPEC``, repeatable; ``reward_weights`` gives one weight per spec, 1.0 each by default):

- ``rm:DIR``: an ``rlaif train rm`` output folder. The reward is the model's raw score r(x, y) read
  at the last real token, exactly as `rlaif.train.score` computes it (same chat template and
  truncation), scored in length-sorted batches.
- ``judge:RUBRIC``: a shipped or user rubric (name or .yaml path), any method, judged by the
  ``judge.*`` engine (built once, kept for the run). The k completions of one prompt (consecutive
  rows with the same ``id``) form one judge item. Scores are normalised to [0, 1] by the rubric's
  scale, ``(s - lo) / (hi - lo)`` as in `rlaif.dataset.pairs`; for a pairwise rubric a completion's
  reward is its mean preference against the other k - 1 of its group, each pair judged in both
  orders (a group of one has no pair: None). A failed judgement is None.
- ``python:FILE.py:FUNC``: the file is imported once by path; every batch calls

      FUNC(prompts=prompts, completions=completions, **columns)

  ``prompts``: one chat (a list of ``{"role", "content"}`` dicts) per completion;
  ``completions``: the completion texts (str); ``columns``: ``id`` (the prompt id) and each
  metadata column of the prompt file, as lists aligned with ``completions`` (None where a row
  lacks the column; columns named ``prompts`` or ``completions`` are not passed). Accept
  ``**kwargs`` to ignore the columns you do not use (TRL's reward-function convention). Return one
  float (or int) per completion, or None to mask that sample out. Raising, returning the wrong
  length, a bool, a string, NaN or inf is a one-line error naming the spec.

Mixing: reward = sum_s w_s * r_s; a sample with None from any source has no reward (it is masked
out and counted by the trainer, never a crash).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import numbers
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Protocol

from rlaif.backends.base import Backend, BackendConfig
from rlaif.errors import UserError
from rlaif.io.seeds import digest_int

SCHEMES = ("rm", "judge", "python")
LOAD_ORDER = ("python", "rm", "judge")  # cheapest first: a bad file fails before any model loads
RM_BATCH_SIZE = 16
Reward = float | None


class RewardSource(Protocol):
    """One reward spec, loaded; ``name`` is the spec as given (``judge:helpfulness``)."""

    name: str

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        """One reward per completion. ``prompts[i]``: the chat of completion i (a prompt's k
        completions are consecutive); ``rows[i]``: its prompt's metadata fields plus ``id``."""
        ...

    def close(self) -> None:
        """Release what the source holds (the judge engine, the reward model)."""
        ...


# ----------------------------------------------------------------------------- parsing (no loading)

def _bad(spec: str, why: str) -> UserError:
    return UserError(f"reward '{spec}': {why}")


def _check_python_target(spec: str, target: str) -> None:
    file, sep, func = target.rpartition(":")
    if not sep or not file or not func:
        raise _bad(spec, "expected python:FILE.py:FUNC")
    if not file.endswith(".py"):
        raise _bad(spec, f"'{file}' is not a .py file (expected python:FILE.py:FUNC)")
    path = Path(file).expanduser()
    if not path.is_file():
        raise _bad(spec, f"{file}: no such file")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise _bad(spec, f"{file}:{e.lineno}: syntax error: {e.msg}") from None
    if func not in _top_level_names(tree):
        raise _bad(spec, f"{file}: no top-level function '{func}'")


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level: defs, classes, assignments, imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):  # definitions under `if`/`try` still count
            blocks = [node.body, node.orelse, *(getattr(node, "finalbody", []),),
                      *(h.body for h in getattr(node, "handlers", []))]
            names |= _top_level_names(ast.Module(body=[n for b in blocks for n in b], type_ignores=[]))
    return names


def _check_rm_target(spec: str, target: str) -> None:
    path = Path(target).expanduser()
    if not path.is_dir():
        raise _bad(spec, f"{target}: no such folder (expected an `rlaif train rm` output)")
    config = path / "config.json"
    if not config.is_file():
        raise _bad(spec, f"{target}: not a model folder (no config.json)")
    try:
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, OSError) as e:
        raise _bad(spec, f"{config}: unreadable ({e})") from None
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise _bad(spec, f"{target} is not a reward model (architectures: {', '.join(archs) or 'none'}); "
                         f"train one with `rlaif train rm`")


def _check_judge_target(spec: str, target: str) -> None:
    from rlaif.judging.rubrics import load_rubric

    try:
        load_rubric(target)
    except UserError as e:
        raise _bad(spec, str(e)) from None


def _check_weights(specs: list[str], weights: list[float]) -> list[float]:
    if not weights:
        return [1.0] * len(specs)
    if len(weights) != len(specs):
        raise UserError(f"option 'reward_weights': {len(weights)} weights for {len(specs)} reward specs "
                        f"({', '.join(specs)}); give one per spec")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise UserError(f"option 'reward_weights': {w!r} is not a finite number")
    return [float(w) for w in weights]


def parse_reward_specs(specs: list[str], weights: list[float]) -> list[tuple[str, str, float]]:
    """Validate the specs and weights without loading anything heavy; ``[(scheme, target, weight)]``.

    The spec's name (its key in metrics and `combine_rewards`) is ``f"{scheme}:{target}"``.
    """
    if not specs:
        raise UserError("option 'reward': give at least one reward spec (rm:DIR, judge:RUBRIC or "
                        "python:FILE.py:FUNC)")
    specs = [s.strip() for s in specs]
    dupes = sorted({s for s in specs if specs.count(s) > 1})
    if dupes:
        raise UserError(f"option 'reward': '{dupes[0]}' is given twice; weight it with reward_weights instead")
    checks = {"rm": _check_rm_target, "judge": _check_judge_target, "python": _check_python_target}
    out = []
    for spec, weight in zip(specs, _check_weights(specs, weights)):
        scheme, sep, target = spec.partition(":")
        if not sep or scheme not in SCHEMES:
            raise _bad(spec, f"unknown kind '{scheme if sep else spec}' (expected rm:DIR, judge:RUBRIC or "
                             f"python:FILE.py:FUNC)")
        if not target:
            raise _bad(spec, f"nothing after '{scheme}:'")
        checks[scheme](spec, target)
        out.append((scheme, target, weight))
    return out


# ----------------------------------------------------------------------------- python:FILE.py:FUNC

def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _where_raised(e: BaseException, file: Path) -> str:
    """`` (FILE:LINE)`` of the innermost frame of the exception inside ``file``, or ''."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == file.resolve()]
    return f" ({file}:{frames[-1].lineno})" if frames else ""


def _as_reward(spec: str, value: Any, index: int) -> Reward:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(spec, f"reward {index} is {value!r} ({type(value).__name__}); expected a number or None")
    value = float(value)
    if not math.isfinite(value):
        raise _bad(spec, f"reward {index} is {value}; rewards must be finite (return None to mask a sample)")
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
            raise _bad(spec, f"{file}: '{func}' is {'missing' if fn is None else 'not callable'}")
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
            raise _bad(spec, f"importing {file} failed: {_first_line(e)}{_where_raised(e, self.file)}") from None
        return module

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        keys = dict.fromkeys(k for row in rows for k in row if k not in ("prompts", "completions"))
        columns = {k: [row.get(k) for row in rows] for k in keys}
        try:
            out = self.fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:
            raise _bad(self.name, f"the function raised {_first_line(e)}{_where_raised(e, self.file)}") from None
        if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):
            out = out.tolist()  # numpy array or torch tensor
        if not isinstance(out, (list, tuple)):
            raise _bad(self.name, f"the function returned {type(out).__name__}; expected a list of "
                                  f"{len(completions)} rewards (numbers or None)")
        if len(out) != len(completions):
            raise _bad(self.name, f"the function returned {len(out)} rewards for {len(completions)} completions")
        return [_as_reward(self.name, v, i) for i, v in enumerate(out)]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- rm:DIR

class RMReward:
    """``rm:DIR``: raw scores of a reward model trained by ``rlaif train rm`` (`rlaif.train.score`)."""

    def __init__(self, spec: str, target: str, batch_size: int = RM_BATCH_SIZE) -> None:
        from rlaif.train.score import RewardModel

        self.name, self.batch_size = spec, batch_size
        self.model: Any = RewardModel(str(Path(target).expanduser()))

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        return list(self.model(prompts, completions, batch_size=self.batch_size))

    def close(self) -> None:
        self.model = None


# ----------------------------------------------------------------------------- judge:RUBRIC

class SharedJudge:
    """The judge engine, built once and shared by every ``judge:`` source; closed once."""

    def __init__(self, config: BackendConfig) -> None:
        from rlaif.backends import load_backend

        self.backend: Backend | None = load_backend(config)

    def get(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("the judge engine is closed")
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def group_items(prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[tuple[Any, list[int]]]:
    """Judge items: consecutive completions of the same prompt (same ``id`` and chat) form one item;
    returns ``[(JudgeItem, completion indices)]``."""
    from rlaif.judging.judge import JudgeItem

    out: list[tuple[Any, list[int]]] = []
    for i, (messages, completion, row) in enumerate(zip(prompts, completions, rows)):
        pid = str(row.get("id", i))
        if out and out[-1][0].id == pid and out[-1][0].messages == messages:
            out[-1][0].responses.append(completion)
            out[-1][1].append(i)
        else:
            out.append((JudgeItem(id=pid, messages=messages, responses=[completion]), [i]))
    return out


class JudgeReward:
    """``judge:RUBRIC``: rubric scores from the judge, normalised to [0, 1] (see the module docstring)."""

    def __init__(self, spec: str, target: str, judge: SharedJudge | None, *, seed: int, verdict_retries: int) -> None:
        from rlaif.judging.rubrics import load_rubric

        self.name, self.judge, self.seed, self.verdict_retries = spec, judge, seed, verdict_retries
        self.rubric = load_rubric(target)
        self.failures = 0  # failed judgements so far (their rewards were None)

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        from rlaif.dataset.pairs import normalise
        from rlaif.judging.judge import judge_items

        groups = group_items(prompts, completions, rows)
        backend = self.judge.get() if self.judge is not None else None  # rules: no judge engine
        judged = judge_items(backend, self.rubric, [item for item, _ in groups], seed=self.seed,
                             verdict_retries=self.verdict_retries, progress=False)
        rewards: list[Reward] = [None] * len(completions)
        for (_, indices), row in zip(groups, judged):
            for i, score in zip(indices, row["scores"]):
                rewards[i] = normalise(score, row["scale"])
        self.failures += sum(r is None for r in rewards)
        return rewards

    def close(self) -> None:
        if self.judge is not None:
            self.judge.close()


# ----------------------------------------------------------------------------- loading and mixing

def load_rewards(specs: list[str], *, judge: BackendConfig, seed: int, verdict_retries: int,
                 weights: list[float] | None = None) -> list[RewardSource]:
    """Parse, then load every source: python files first (cheap, so their errors come before any
    model loads), then reward models, then the judge engine (once, only if a ``judge:`` spec is
    given). Sources come back in the order of ``specs``; on an error the loaded ones are closed."""
    parsed = parse_reward_specs(specs, list(weights or []))
    order = sorted(range(len(parsed)), key=lambda i: LOAD_ORDER.index(parsed[i][0]))
    loaded: dict[int, RewardSource] = {}
    shared: SharedJudge | None = None
    modules: dict[str, ModuleType] = {}
    try:
        for i in order:
            scheme, target, _ = parsed[i]
            name = f"{scheme}:{target}"
            if scheme == "python":
                loaded[i] = PythonReward(name, target, modules)
            elif scheme == "rm":
                loaded[i] = RMReward(name, target)
            else:  # a rules rubric needs no judge engine (verifiable rewards)
                from rlaif.judging.rubrics import load_rubric

                needs = load_rubric(target).needs_judge
                shared = shared or (SharedJudge(judge) if needs else None)
                loaded[i] = JudgeReward(name, target, shared if needs else None, seed=seed,
                                        verdict_retries=verdict_retries)
    except BaseException:
        for source in loaded.values():
            source.close()
        if shared is not None:
            shared.close()
        raise
    return [loaded[i] for i in range(len(parsed))]


def combine_rewards(per_source: dict[str, list[Reward]], weights: dict[str, float]) -> list[Reward]:
    """``sum_s weights[s] * r_s`` per completion; None where any source gave None (masked out)."""
    if not per_source:
        raise ValueError("no reward sources")
    lengths = {name: len(rewards) for name, rewards in per_source.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"reward sources disagree on the number of completions: {lengths}")
    out: list[Reward] = []
    for values in zip(*per_source.values()):
        if any(v is None for v in values):
            out.append(None)
        else:
            out.append(sum(weights[name] * v for name, v in zip(per_source, values)))  # type: ignore[operator]
    return out
