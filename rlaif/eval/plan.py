"""What an eval compares, checked before anything is written: the two sides, the prompts, the
rubrics and reward specs, and each model side's prompt lengths."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.backends import BackendConfig, resolve_backend_model
from rlaif.errors import UserError
from rlaif.eval.options import REWARD_KINDS, SIDES, EvalConfig, check_eval_options
from rlaif.io.log import log
from rlaif.io.records import Prompt, read_candidate_sources, read_prompts


@dataclass
class Side:
    name: str  # "a" | "b"
    spec: str
    candidates: Path | None = None  # a candidates file, or None for a model
    model_dir: str | None = None  # local folder of a model side (None: fake/openai engines)

    @property
    def label(self) -> str:
        return self.name.upper()


@dataclass
class Plan:
    sides: list[Side]
    prompts: list[Prompt]  # in evaluation order
    sources: dict[str, str]  # prompt id -> file:line
    given: dict[str, list[dict]]  # side name -> rows of its candidates file, restricted to the prompts
    prompt_tokens: dict[str, list[int] | None]  # model side -> token count of each prompt
    rubrics: list[Any]
    rewards: list[tuple[str, str, float]]
    judge_dir: str | None


def resolve_side(name: str, spec: str) -> Side:
    """A candidates file (``.jsonl``/``.json`` file, or a folder with ``candidates.jsonl`` and no model)
    or a model."""
    path = Path(spec).expanduser()
    if spec.endswith((".jsonl", ".json")):
        if not path.is_file():
            raise UserError(f"option '{name}': {spec}: no such candidates file")
        return Side(name, spec, candidates=path)
    if path.is_file():
        return Side(name, spec, candidates=path)
    if path.is_dir() and not (path / "config.json").exists() and (path / "candidates.jsonl").is_file():
        return Side(name, spec, candidates=path / "candidates.jsonl")
    return Side(name, spec)


def side_backend(cfg: EvalConfig, side: Side) -> BackendConfig:
    """The policy engine settings with the side's model."""
    return dataclasses.replace(cfg.policy, model=side.spec)


def model_identity(model_dir: str | None) -> list[Any]:
    """Names, sizes and mtimes of a local model's files: retrained weights in the same folder
    change the fingerprint, so stale candidates are never reused."""
    if model_dir is None or not Path(model_dir).is_dir():
        return []
    files = sorted(path for path in Path(model_dir).iterdir()
                   if path.is_file() and (path.suffix in (".safetensors", ".bin") or path.name == "config.json"))
    return [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _load_sources(cfg: EvalConfig) -> tuple[list[Any], list[tuple[str, str, float]]]:
    """The rubrics and the reward specs (python: and rm: only), checked."""
    from rlaif.judging.rubrics import load_rubric
    from rlaif.rewards.specs import parse_reward_specs

    rubrics = [load_rubric(name) for name in cfg.rubrics]
    names = [rubric.name for rubric in rubrics]
    if len(set(names)) != len(names):
        raise UserError(f"option 'rubrics': a rubric is named twice ({', '.join(names)})")
    rewards = parse_reward_specs(list(cfg.rewards), []) if cfg.rewards else []
    for scheme, target, _ in rewards:
        if scheme not in REWARD_KINDS:
            raise UserError(f"reward '{scheme}:{target}': eval takes python:FILE.py:FUNC or rm:DIR rewards; "
                            f"give a judged rubric as --rubric {target}")
    return rubrics, rewards


def _candidate_side(cfg: EvalConfig, side: Side) -> tuple[list[dict], dict[str, str]]:
    assert side.candidates is not None
    rows, sources = read_candidate_sources(side.candidates, cfg.prompt_column)
    for row in rows:
        if len(row["responses"]) < cfg.n_per_prompt:
            raise UserError(f"{sources[row['id']]}: field 'responses': {len(row['responses'])} responses, fewer "
                            f"than n_per_prompt={cfg.n_per_prompt}")
    return rows, sources


def _given_candidates(cfg: EvalConfig, sides: list[Side], prompts: list[Prompt]
                      ) -> tuple[list[Prompt], dict[str, list[dict]]]:
    """Restrict the prompts to those every candidates side holds (the first one sets them when there is
    no prompt file); returns them and each candidates side's rows in prompt order."""
    sources = {prompt.id: prompt.source for prompt in prompts}
    given: dict[str, list[dict]] = {}
    for side in sides:
        if side.candidates is None:
            continue
        rows, where = _candidate_side(cfg, side)
        by_id = {row["id"]: row for row in rows}
        if not prompts:  # the first candidates file sets the prompts
            prompts = [Prompt(row["id"], row["messages"], row["metadata"], where[row["id"]]) for row in rows]
            sources = {prompt.id: prompt.source for prompt in prompts}
            given[side.name] = rows
            continue
        kept = [prompt for prompt in prompts if prompt.id in by_id]
        if not kept:
            what = "the prompt file" if cfg.prompts else "side A's candidates"
            raise UserError(f"option '{side.name}': {side.candidates}: no prompt id in common with {what} "
                            f"({sources[prompts[0].id].rsplit(':', 1)[0]})")
        for prompt in kept:
            if by_id[prompt.id]["messages"] != prompt.messages:
                raise UserError(f"{where[prompt.id]}: field 'messages': prompt '{prompt.id}' differs from the one "
                                f"at {sources[prompt.id]}")
        if len(kept) < len(prompts):
            log(f"eval: {len(prompts) - len(kept)} of {len(prompts)} prompts are not in {side.candidates}; "
                "comparing the others")
        prompts = kept
        given[side.name] = [by_id[prompt.id] for prompt in kept]
    ids = {prompt.id for prompt in prompts}
    return prompts, {name: [row for row in rows if row["id"] in ids] for name, rows in given.items()}


def _prompt_tokens(cfg: EvalConfig, models: list[Side], prompts: list[Prompt]) -> dict[str, list[int] | None]:
    """Per model side: resolve its folder (``side.model_dir``) and count each prompt's tokens (None:
    no local model), refusing a prompt too long for the context."""
    counts: dict[str, list[int] | None] = {}
    for side in models:
        side.model_dir = resolve_backend_model(side_backend(cfg, side))
        counts[side.name] = None
        if side.model_dir is not None:
            from rlaif.dataset.generate import check_prompt_lengths
            from rlaif.models import check_causal_lm

            check_causal_lm(side.model_dir)
            counts[side.name] = check_prompt_lengths(prompts, side.model_dir, cfg.policy.max_model_len,
                                                     cfg.max_tokens)
    return counts


def plan_eval(cfg: EvalConfig) -> Plan:
    """Validate sides, prompts, rubrics, reward specs and model contexts without writing anything."""
    check_eval_options(cfg)
    sides = [resolve_side(name, getattr(cfg, name)) for name in SIDES]
    rubrics, rewards = _load_sources(cfg)
    models = [side for side in sides if side.candidates is None]
    if models and not cfg.prompts:
        raise UserError(f"option 'prompts': side {models[0].label} ({models[0].spec}) is a model; give the prompts "
                        "to generate from (--prompts FILE)")
    prompts: list[Prompt] = read_prompts(cfg.prompts, cfg.prompt_column) if cfg.prompts else []
    prompts, given = _given_candidates(cfg, sides, prompts)
    sources = {prompt.id: prompt.source for prompt in prompts}
    prompt_tokens = _prompt_tokens(cfg, models, prompts)
    judge_dir = resolve_backend_model(cfg.judge) if any(rubric.needs_judge for rubric in rubrics) else None
    return Plan(sides, prompts, sources, given, prompt_tokens, rubrics, rewards, judge_dir)
