"""`rlaif eval`: how often A's responses beat B's, judged by rubrics and/or rewards.

Sides. ``a`` and ``b`` are each a model (alias, local folder, or an ``rlaif train`` output folder)
or a candidates file (``candidates.jsonl`` of ``rlaif generate``/``rlaif run``, a user JSONL of
``{id?, prompt|messages, responses}``, or a folder holding ``candidates.jsonl``). A model side
generates ``n_per_prompt`` responses per prompt with the pipeline's generation code, each prompt
seeded by (seed, prompt id) on both sides; a candidates side contributes its first
``n_per_prompt`` responses. Pair k of a prompt is A's k-th response against B's k-th.

Judging (`rlaif.eval.winrate` has the statistics). Each source votes on each pair:
- a pairwise rubric judges the pair in both orders (`rlaif.judging.judge`); A wins when both
  orders prefer A, loses when both prefer B, and a position-inconsistent pair is a tie;
- a pointwise rubric (logprob, verdict, likelihood, rules) or a reward (``python:FILE.py:FUNC``, ``rm:DIR``, loaded
  as in the online trainers) scores both responses; the higher score wins, equal scores tie.
With several sources a pair's outcome is their majority, ``sign(sum_s (o_s - 1/2))`` (a tie vote
counts for neither side; as many for A as for B: tie). A source
that failed on a pair (no score) does not vote; a pair with no vote is left out and counted in
``failed``.

Engines. One at a time, each closed before the next loads: A's policy, B's policy, the judge,
then the reward models. Resume: generated candidates and finished votes are appended to
``DIR/.rlaif/`` as they come (`rlaif.io.store`); a rerun with the same settings continues, one with
other settings is refused unless ``overwrite``.

Outputs in ``DIR``: ``eval.json`` (summary), ``eval.jsonl`` (one readable row per pair),
``report.html``, ``votes.jsonl`` (every source's raw verdict per pair) and, for model sides,
``candidates_a.jsonl`` / ``candidates_b.jsonl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rlaif.backends import Backend, BackendConfig, SamplingParams, load_backend
from rlaif.config import option
from rlaif.errors import UserError
from rlaif.io.log import log
from rlaif.io.records import Prompt, read_candidate_sources, read_jsonl, read_prompts
from rlaif.io.store import RunState, StageFile, atomic_write_text, clear_outputs, fingerprint, write_jsonl
from rlaif.eval import winrate

SIDES = ("a", "b")
OUTPUTS = ["candidates_a.jsonl", "candidates_b.jsonl", "votes.jsonl", "eval.json", "eval.jsonl", "report.html"]
STAGES = ["generate_a", "generate_b", "votes"]
REWARD_KINDS = ("python", "rm")


@dataclass
class EvalConfig:
    a: str = option("", "side A: a model (alias, local folder, `rlaif train` output folder) or a candidates "
                        ".jsonl (or a folder holding candidates.jsonl, e.g. an `rlaif run` output)")
    b: str = option("", "side B (the baseline), same forms as a")
    prompts: str | None = option(None, "prompt file; needed when a side is a model (with two candidates files "
                                       "it limits the prompts compared)")
    prompt_column: str = option("prompt", "column/field holding the prompt in prompt and candidates files")
    rubrics: list[str] = option(list, "rubrics judging A against B (pairwise: both orders; logprob/verdict: "
                                      "scores compared)")
    rewards: list[str] = option(list, "reward specs scoring each response, python:FILE.py:FUNC or rm:DIR; "
                                      "the higher reward wins")
    out: str = option("outputs/eval", "output folder (created; a rerun resumes it)")
    n_per_prompt: int = option(1, "pairs per prompt: A's k-th response against B's k-th (candidates files: "
                                  "their first n_per_prompt)")
    max_tokens: int = option(256, "model sides: maximum new tokens per response")
    temperature: float = option(0.7, "model sides: sampling temperature (0: greedy)")
    top_p: float = option(1.0, "model sides: nucleus sampling p")
    seed: int = option(0, "per-prompt sampling seeds (the same on both sides) and the judge's seed")
    policy: BackendConfig = option(BackendConfig, "engine settings for the model sides (policy.model is set "
                                                  "from a / b)")
    judge: BackendConfig = option(BackendConfig, "the judge model of the rubrics")
    verdict_retries: int = option(2, "verdict rubrics: re-asks of an invalid verdict before it counts as failed")
    chunk_size: int = option(64, "prompts per generation call (resume granularity)")
    chunk_tokens: int = option(32768, "max prompt tokens x n per generation call")
    judge_chunk_size: int = option(64, "pairs per judge call (resume granularity)")
    overwrite: bool = option(False, "start over: delete this command's outputs in --out first")
    progress: bool = option(True, "show progress bars")


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
class Pair:
    id: str
    k: int
    messages: list[dict[str, str]]
    metadata: dict[str, Any]
    responses: tuple[str, str]
    tokens: tuple[int | None, int | None]  # engine tokens (None: not known)
    finish: tuple[str, str]

    @property
    def key(self) -> str:
        return self.id if self.k == 0 else f"{self.id}#{self.k}"



# ----------------------------------------------------------------------------- checks (nothing written)

def check_eval_options(cfg: EvalConfig) -> None:
    for name in SIDES:
        if not getattr(cfg, name):
            raise UserError(f"option '{name}': give side {name.upper()} (--{name} MODEL or --{name} CANDIDATES.jsonl)")
    if not cfg.rubrics and not cfg.rewards:
        raise UserError("option 'rubrics': give at least one --rubric R or --reward SPEC to judge A against B")
    for key in ("n_per_prompt", "max_tokens", "chunk_size", "chunk_tokens", "judge_chunk_size"):
        if getattr(cfg, key) < 1:
            raise UserError(f"option '{key}': must be >= 1, got {getattr(cfg, key)}")
    if cfg.temperature < 0:
        raise UserError(f"option 'temperature': must be >= 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"option 'top_p': must be in (0, 1], got {cfg.top_p}")
    if cfg.verdict_retries < 0:
        raise UserError(f"option 'verdict_retries': must be >= 0, got {cfg.verdict_retries}")


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


def _side_backend(cfg: EvalConfig, side: Side) -> BackendConfig:
    return dataclasses.replace(cfg.policy, model=side.spec)


def _model_identity(model_dir: str | None) -> list[Any]:
    """Names, sizes and mtimes of a local model's files: retrained weights in the same folder
    change the fingerprint, so stale candidates are never reused."""
    if model_dir is None or not Path(model_dir).is_dir():
        return []
    files = sorted(p for p in Path(model_dir).iterdir()
                   if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json"))
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


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


def _candidate_side(cfg: EvalConfig, side: Side) -> tuple[list[dict], dict[str, str]]:
    assert side.candidates is not None
    rows, sources = read_candidate_sources(side.candidates, cfg.prompt_column)
    for row in rows:
        if len(row["responses"]) < cfg.n_per_prompt:
            raise UserError(f"{sources[row['id']]}: field 'responses': {len(row['responses'])} responses, fewer "
                            f"than n_per_prompt={cfg.n_per_prompt}")
    return rows, sources


def plan_eval(cfg: EvalConfig) -> Plan:
    """Validate sides, prompts, rubrics, reward specs and model contexts without writing anything."""
    from rlaif.backends import resolve_backend_model
    from rlaif.judging.rubrics import load_rubric
    from rlaif.rewards.specs import parse_reward_specs

    check_eval_options(cfg)
    sides = [resolve_side(name, getattr(cfg, name)) for name in SIDES]
    rubrics = [load_rubric(r) for r in cfg.rubrics]
    names = [r.name for r in rubrics]
    if len(set(names)) != len(names):
        raise UserError(f"option 'rubrics': a rubric is named twice ({', '.join(names)})")
    rewards = parse_reward_specs(list(cfg.rewards), []) if cfg.rewards else []
    for scheme, target, _ in rewards:
        if scheme not in REWARD_KINDS:
            raise UserError(f"reward '{scheme}:{target}': eval takes python:FILE.py:FUNC or rm:DIR rewards; "
                            f"give a judged rubric as --rubric {target}")

    models = [s for s in sides if s.candidates is None]
    if models and not cfg.prompts:
        raise UserError(f"option 'prompts': side {models[0].label} ({models[0].spec}) is a model; give the prompts "
                        "to generate from (--prompts FILE)")
    prompts: list[Prompt] = read_prompts(cfg.prompts, cfg.prompt_column) if cfg.prompts else []
    sources = {p.id: p.source for p in prompts}
    given: dict[str, list[dict]] = {}
    for side in sides:
        if side.candidates is None:
            continue
        rows, where = _candidate_side(cfg, side)
        by_id = {r["id"]: r for r in rows}
        if not prompts:  # the first candidates file sets the prompts
            prompts = [Prompt(r["id"], r["messages"], r["metadata"], where[r["id"]]) for r in rows]
            sources = {p.id: p.source for p in prompts}
            given[side.name] = rows
            continue
        kept = [p for p in prompts if p.id in by_id]
        if not kept:
            what = "the prompt file" if cfg.prompts else "side A's candidates"
            raise UserError(f"option '{side.name}': {side.candidates}: no prompt id in common with {what} "
                            f"({sources[prompts[0].id].rsplit(':', 1)[0]})")
        for p in kept:
            if by_id[p.id]["messages"] != p.messages:
                raise UserError(f"{where[p.id]}: field 'messages': prompt '{p.id}' differs from the one at "
                                f"{sources[p.id]}")
        if len(kept) < len(prompts):
            log(f"eval: {len(prompts) - len(kept)} of {len(prompts)} prompts are not in {side.candidates}; "
                 "comparing the others")
        prompts = kept
        given[side.name] = [by_id[p.id] for p in kept]
    ids = {p.id for p in prompts}
    given = {name: [r for r in rows if r["id"] in ids] for name, rows in given.items()}

    prompt_tokens: dict[str, list[int] | None] = {}
    for side in models:
        side.model_dir = resolve_backend_model(_side_backend(cfg, side))
        counts = None
        if side.model_dir is not None:
            from rlaif.dataset.generate import check_prompt_lengths
            from rlaif.models import check_causal_lm

            check_causal_lm(side.model_dir)
            counts = check_prompt_lengths(prompts, side.model_dir, cfg.policy.max_model_len, cfg.max_tokens)
        prompt_tokens[side.name] = counts
    judge_dir = resolve_backend_model(cfg.judge) if any(r.needs_judge for r in rubrics) else None
    return Plan(sides, prompts, sources, given, prompt_tokens, rubrics, rewards, judge_dir)


# ----------------------------------------------------------------------------- generation

def generate_side(cfg: EvalConfig, plan: Plan, side: Side, state: RunState,
                  factory: Callable[[BackendConfig], Backend]) -> list[dict]:
    """``DIR/candidates_<side>.jsonl`` for a model side (the pipeline's generation code; resumable)."""
    from rlaif.dataset.generate import generate_candidates

    out = Path(cfg.out)
    name = f"candidates_{side.name}"
    fp = fingerprint({"prompts": [(p.id, p.messages, p.metadata) for p in plan.prompts], "engine": cfg.policy.engine,
                      "model": side.spec, "weights": _model_identity(side.model_dir), "n": cfg.n_per_prompt,
                      "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                      "seed": cfg.seed})
    stage_name = f"generate_{side.name}"
    if not state.begin(stage_name, fp, f"prompts, model {side.label}, n_per_prompt, temperature, top_p, "
                       "max_tokens or seed", f"{name}.jsonl", f"eval: {stage_name}"):
        return read_jsonl(out / f"{name}.jsonl")
    stage = StageFile(out, name, key_fn=lambda r: r["id"])
    stage.load()
    if stage.rows:
        log(f"eval: side {side.label}: resuming, {len(stage.rows)}/{len(plan.prompts)} prompts already generated")
    backend = factory(_side_backend(cfg, side))
    try:
        params = SamplingParams(n=cfg.n_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_tokens, seed=cfg.seed)
        stats = generate_candidates(backend, plan.prompts, params, cfg.seed, stage, cfg.chunk_size, cfg.progress,
                                    prompt_tokens=plan.prompt_tokens.get(side.name), chunk_tokens=cfg.chunk_tokens)
        model_id = backend.model_id
    finally:
        stage.close()
        backend.close()
    rows = stage.finish([p.id for p in plan.prompts])
    state.update(stage_name, done=True, model_id=model_id, seconds=stats["seconds"])
    log(f"eval: side {side.label}: {len(rows)} prompts x {cfg.n_per_prompt} -> {out / (name + '.jsonl')}")
    return rows


def make_pairs(plan: Plan, rows: dict[str, list[dict]], n: int) -> list[Pair]:
    """Pair k of each prompt: A's k-th response against B's k-th, in prompt order."""
    by_side = {name: {r["id"]: r for r in side_rows} for name, side_rows in rows.items()}
    pairs = []
    for p in plan.prompts:
        ra, rb = by_side["a"][p.id], by_side["b"][p.id]
        for k in range(n):
            def tok(r: dict) -> int | None:
                return r["num_tokens"][k] if r.get("policy") != "user" else None
            pairs.append(Pair(p.id, k, p.messages, p.metadata, (ra["responses"][k], rb["responses"][k]),
                              (tok(ra), tok(rb)), (ra["finish_reasons"][k], rb["finish_reasons"][k])))
    return pairs


# ----------------------------------------------------------------------------- votes

def _pairwise_vote(row: dict) -> dict[str, Any]:
    comp = row["comparisons"][0] if row["comparisons"] else {}
    p = comp.get("p")
    if p is None:
        return {"outcome": None, "error": comp.get("error", "no comparison")}
    consistent = bool(comp["consistent"])
    return {"outcome": (1.0 if p > 0.5 else 0.0) if consistent else 0.5, "p": p,
            "p_a_first": comp["p_i_first"], "p_a_second": comp["p_i_second"], "consistent": consistent,
            "score_a": p, "score_b": 1.0 - p}


def _score_vote(score_a: float | None, score_b: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    vote: dict[str, Any] = {"score_a": score_a, "score_b": score_b, **(extra or {})}
    vote["outcome"] = None if score_a is None or score_b is None else winrate.outcome(score_a, score_b)
    return vote


def judge_votes(cfg: EvalConfig, plan: Plan, pairs: list[Pair], stage: StageFile, state: RunState,
                factory: Callable[[BackendConfig], Backend]) -> None:
    """Rubric votes, chunk by chunk, with the judge engine (loaded only if some vote is missing)."""
    from rlaif.backends.chunking import chunks
    from rlaif.judging.judge import JudgeItem, judge_items

    todo = [(r, [pr for pr in pairs if not stage.done((pr.key, r.name))]) for r in plan.rubrics]
    if not any(missing for _, missing in todo):
        return
    judged = [r for r, missing in todo if missing and r.needs_judge]
    if judged and plan.judge_dir is not None:
        from rlaif.dataset.judge_context import check_judge_prompt_lengths

        items = [{"id": pr.key, "messages": pr.messages, "responses": list(pr.responses)} for pr in pairs]
        check_judge_prompt_lengths(judged, items, plan.judge_dir, cfg.judge.max_model_len, cfg.seed,
                                   {pr.key: plan.sources.get(pr.id, "") for pr in pairs})
    backend = factory(cfg.judge) if judged else None  # rules rubrics need no model
    try:
        if backend is not None:
            state.update("votes", judge=backend.model_id)
        for rubric, missing in todo:
            for block in chunks(len(missing), cfg.judge_chunk_size):
                batch = [missing[i] for i in block]
                items = [JudgeItem(id=pr.key, messages=pr.messages, responses=list(pr.responses),
                                   finish_reasons=list(pr.finish) if set(pr.finish) <= {"stop", "length"} else None,
                                   num_tokens=None if None in pr.tokens else list(pr.tokens))  # type: ignore[arg-type]
                         for pr in batch]
                rows = judge_items(backend, rubric, items, seed=cfg.seed, verdict_retries=cfg.verdict_retries,
                                   progress=cfg.progress)
                for pr, row in zip(batch, rows):
                    if rubric.method == "pairwise":
                        vote = _pairwise_vote(row)
                    else:
                        vote = _score_vote(row["scores"][0], row["scores"][1], {"scale": row["scale"]})
                        if vote["outcome"] is None:
                            vote["error"] = "; ".join(str(d.get("error")) for d in row["details"] if d.get("error"))
                    stage.append({"key": pr.key, "source": rubric.name, "kind": rubric.method, **vote})
            log(f"eval: rubric {rubric.name} ({rubric.method}): {len(missing)} pairs judged")
    finally:
        if backend is not None:
            backend.close()


def reward_votes(cfg: EvalConfig, plan: Plan, pairs: list[Pair], stage: StageFile) -> None:
    """Reward votes: each source scores A's and B's responses in one call (interleaved A, B per pair)."""
    from rlaif.rewards.load import load_rewards

    specs = [f"{scheme}:{target}" for scheme, target, _ in plan.rewards]
    todo = {s: [pr for pr in pairs if not stage.done((pr.key, s))] for s in specs}
    if not any(todo.values()):
        return
    sources = load_rewards(specs, judge=cfg.judge, seed=cfg.seed, verdict_retries=cfg.verdict_retries)
    try:
        for source in sources:
            missing = todo[source.name]
            if not missing:
                continue
            prompts = [pr.messages for pr in missing for _ in SIDES]
            completions = [pr.responses[i] for pr in missing for i in range(2)]
            rows = [{"id": pr.id, **pr.metadata} for pr in missing for _ in SIDES]
            scores = source(prompts, completions, rows)
            for j, pr in enumerate(missing):
                vote = _score_vote(scores[2 * j], scores[2 * j + 1])
                stage.append({"key": pr.key, "source": source.name, "kind": "reward", **vote})
            log(f"eval: reward {source.name}: {len(missing)} pairs scored")
    finally:
        for source in sources:
            source.close()


def _votes_fingerprint(cfg: EvalConfig, plan: Plan, pairs: list[Pair]) -> str:
    rewards = []
    for scheme, target, _ in plan.rewards:
        if scheme == "python":
            rewards.append((scheme, target, _file_digest(target.rpartition(":")[0])))
        else:
            rewards.append((scheme, target, _model_identity(str(Path(target).expanduser()))))
    return fingerprint({
        "pairs": [(pr.key, pr.messages, pr.responses) for pr in pairs],
        "judge": (cfg.judge.engine, cfg.judge.model) if any(r.needs_judge for r in plan.rubrics) else None,
        "rubrics": [(r.name, r.method, r.template, Path(r.path).read_text(encoding="utf-8") if r.path else "")
                    for r in plan.rubrics],
        "rewards": rewards, "seed": cfg.seed, "verdict_retries": cfg.verdict_retries})


# ----------------------------------------------------------------------------- summary

def combine(votes: Sequence[float]) -> float | None:
    """Majority of the sources' outcomes: sign of sum(o - 1/2) -> 1, 0, or 1/2; None without votes."""
    if not votes:
        return None
    s = sum(v - 0.5 for v in votes)
    return 1.0 if s > 0 else 0.0 if s < 0 else 0.5


def _lengths(pairs: list[Pair]) -> tuple[str, list[tuple[int, int]]]:
    """Tokens where both sides report engine tokens, else words for both (comparable units)."""
    if all(t is not None for pr in pairs for t in pr.tokens):
        return "tokens", [(int(pr.tokens[0]), int(pr.tokens[1])) for pr in pairs]  # type: ignore[arg-type]
    return "words", [(len(pr.responses[0].split()), len(pr.responses[1].split())) for pr in pairs]


def _mean(xs: Sequence[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def _eos_rate(finish: list[str]) -> float | None:
    if not finish or any(f not in ("stop", "length") for f in finish):
        return None  # a user's candidates file does not say
    return sum(f == "stop" for f in finish) / len(finish)


def _stats(outcomes: list[float], groups: list[str], lens: list[tuple[int, int]]) -> dict[str, Any]:
    s = winrate.summarise(outcomes, groups)
    lc = (winrate.length_controlled_win_rate(outcomes, [a for a, _ in lens], [b for _, b in lens])
          if outcomes else None)
    return {"n": s.n, "wins": s.wins, "losses": s.losses, "ties": s.ties, "win_rate": s.win_rate,
            "win_rate_ci": s.win_rate_ci, "lc_win_rate": lc, "prompts": s.prompts}


def summarise(cfg: EvalConfig, plan: Plan, pairs: list[Pair], votes: dict[tuple[str, str], dict],
              judge_id: str | None, model_ids: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(eval.json dict, eval.jsonl rows)`` from the pairs and every source's votes."""
    from rlaif.judging.rubrics import last_user_message

    unit, lens = _lengths(pairs)
    source_names = [r.name for r in plan.rubrics] + [f"{s}:{t}" for s, t, _ in plan.rewards]
    kinds = {r.name: r.method for r in plan.rubrics} | {f"{s}:{t}": "reward" for s, t, _ in plan.rewards}
    rows, outcomes, groups, kept_lens = [], [], [], []
    for pr, ln in zip(pairs, lens):
        mine = {s: votes[(pr.key, s)] for s in source_names}
        result = combine([v["outcome"] for v in mine.values() if v["outcome"] is not None])
        rows.append({"id": pr.id, "k": pr.k, "prompt": last_user_message(pr.messages),
                     "response_a": pr.responses[0], "response_b": pr.responses[1],
                     "length_a": ln[0], "length_b": ln[1], "length_unit": unit,
                     "finish_a": pr.finish[0], "finish_b": pr.finish[1], "outcome": result,
                     "winner": None if result is None else {1.0: "A", 0.0: "B", 0.5: "tie"}[result],
                     "votes": {s: {k: v for k, v in vote.items() if k not in ("key", "source")}
                               for s, vote in mine.items()}})
        if result is not None:
            outcomes.append(result)
            groups.append(pr.id)
            kept_lens.append(ln)
    by_source: dict[str, Any] = {}
    for s in source_names:
        got = [(pr, ln, votes[(pr.key, s)]) for pr, ln in zip(pairs, lens) if votes[(pr.key, s)]["outcome"] is not None]
        entry = _stats([v["outcome"] for _, _, v in got], [pr.id for pr, _, _ in got], [ln for _, ln, _ in got])
        entry |= {"kind": kinds[s], "failed": len(pairs) - len(got),
                  "mean_score_a": _mean([v["score_a"] for _, _, v in got]),
                  "mean_score_b": _mean([v["score_b"] for _, _, v in got])}
        if kinds[s] == "pairwise":
            entry["position_consistency"] = _mean([float(v["consistent"]) for _, _, v in got])
        by_source[s] = entry
    pairwise = [float(votes[(pr.key, r.name)]["consistent"]) for r in plan.rubrics if r.method == "pairwise"
                for pr in pairs if votes[(pr.key, r.name)]["outcome"] is not None]
    score_source = next((s for s in source_names if kinds[s] == "reward"),
                        next((s for s in source_names if kinds[s] != "pairwise"), source_names[0]))
    summary = _stats(outcomes, groups, kept_lens) | {
        "failed": len(pairs) - len(outcomes),
        "position_consistency": _mean(pairwise) if any(r.method == "pairwise" for r in plan.rubrics) else None,
        "length_unit": unit,
        "mean_length_a": _mean([a for a, _ in lens]), "mean_length_b": _mean([b for _, b in lens]),
        "eos_rate_a": _eos_rate([pr.finish[0] for pr in pairs]),
        "eos_rate_b": _eos_rate([pr.finish[1] for pr in pairs]),
        "mean_score_a": by_source[score_source]["mean_score_a"],
        "mean_score_b": by_source[score_source]["mean_score_b"], "score_source": score_source,
        "judge": judge_id, "rubrics": [r.name for r in plan.rubrics],
        "rewards": [f"{s}:{t}" for s, t, _ in plan.rewards],
        "a": cfg.a, "b": cfg.b, "models": model_ids, "by_source": by_source,
        "settings": {"n_per_prompt": cfg.n_per_prompt, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_tokens": cfg.max_tokens, "seed": cfg.seed},
    }
    return summary, rows


# ----------------------------------------------------------------------------- entry

def _prepare_out(cfg: EvalConfig) -> RunState:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"option 'out': {out} exists and is not a folder")
    if cfg.overwrite:
        clear_outputs(out, OUTPUTS)
    out.mkdir(parents=True, exist_ok=True)
    state = RunState(out)
    if cfg.overwrite:
        state.forget(*STAGES)
    return state


def run_eval(cfg: EvalConfig, factory: Callable[[BackendConfig], Backend] = load_backend) -> dict[str, Any]:
    """Generate (model sides), judge every pair, write ``eval.json`` / ``eval.jsonl`` / ``report.html`` in
    ``cfg.out``; returns the ``eval.json`` dict. ``factory`` builds engines (tests pass scripted fakes)."""
    import json

    from rlaif.eval.report import write_report

    plan = plan_eval(cfg)
    state = _prepare_out(cfg)
    out = Path(cfg.out)
    rows: dict[str, list[dict]] = dict(plan.given)
    model_ids: dict[str, str] = {}
    for side in plan.sides:
        if side.candidates is None:
            rows[side.name] = generate_side(cfg, plan, side, state, factory)
            model_ids[side.name] = state.stage(f"generate_{side.name}").get("model_id", side.spec)
        else:
            model_ids[side.name] = "+".join(dict.fromkeys(r["policy"] for r in rows[side.name])) or side.spec
    pairs = make_pairs(plan, rows, cfg.n_per_prompt)

    fp = _votes_fingerprint(cfg, plan, pairs)
    stage = StageFile(out, "votes", key_fn=lambda r: (r["key"], r["source"]))
    if state.begin("votes", fp, "the candidates, judge, rubrics, rewards or seed", "votes.jsonl", "eval: votes"):
        stage.load()
        try:
            judge_votes(cfg, plan, pairs, stage, state, factory)
            reward_votes(cfg, plan, pairs, stage)
        finally:
            stage.close()
        order = [(pr.key, s) for s in [r.name for r in plan.rubrics] + [f"{s}:{t}" for s, t, _ in plan.rewards]
                 for pr in pairs]
        stage.finish(order)  # type: ignore[arg-type]
        state.update("votes", done=True)
    votes = {(v["key"], v["source"]): v for v in read_jsonl(out / "votes.jsonl")}
    summary, pair_rows = summarise(cfg, plan, pairs, votes, state.stage("votes").get("judge"), model_ids)
    write_jsonl(out / "eval.jsonl", pair_rows)
    atomic_write_text(out / "eval.json", json.dumps(summary, indent=2) + "\n")
    write_report(out / "report.html", summary, pair_rows)
    return summary
