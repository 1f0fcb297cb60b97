"""The preference-data pipeline: generate -> judge -> build, each stage resumable.

Every stage first validates everything it can without writing (inputs, options, rubrics,
models, prompt lengths), so bad input never touches what an earlier run wrote. It then
appends finished rows to ``DIR/.rlaif/<stage>.jsonl`` and, at the end, writes the stage's file
in input order with one atomic rename. A stage whose file exists and whose settings
fingerprint matches is skipped, so rerunning a killed ``rlaif run`` continues where it stopped
and ends with the same bytes an uninterrupted run writes (manifest ``timings`` aside).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from rlaif.backends import Backend, BackendConfig, SamplingParams, load_backend, resolve_backend_model
from rlaif.config import to_dict
from rlaif.errors import UserError
from rlaif.io.log import log
from rlaif.io.records import (CANDIDATE_SCHEMA, JUDGEMENT_SCHEMA, Prompt, read_candidate_sources, read_candidates,
                              read_jsonl, read_prompts)
from rlaif.io.outdir import prepare_out
from rlaif.io.store import PARTIAL_DIR, RunState, StageFile, fingerprint, refuse_out_overlap, write_jsonl
from rlaif.dataset.engines import Engines
from rlaif.dataset.labels import Verdicts, check_labels_file, read_verdicts, review_line, review_summary
from rlaif.dataset.manifest import assemble_manifest, finish_manifest
from rlaif.dataset.options import (STAGE_OUTPUTS, STAGES, BuildConfig, BuildOptions, CommonOptions, GenerateConfig,
                                   JudgeConfig, RunConfig, check_options, check_weights)


# ----------------------------------------------------------------------------- stages

@dataclass
class GeneratePlan:
    prompts: list[Prompt]
    fingerprint: str
    prompt_tokens: list[int] | None = None  # counted with the policy's tokenizer (None: fake/openai)


def plan_generate(cfg: GenerateConfig | RunConfig) -> GeneratePlan:
    """Validate generation inputs without writing anything."""
    if not cfg.prompts:
        raise UserError("option 'prompts': give a prompt file (--prompts FILE)")
    check_options(cfg)
    prompts = read_prompts(cfg.prompts, cfg.prompt_column)
    if cfg.n == 1:
        log("generate: n=1 gives one candidate per prompt, so no pairs can be built from it")
    model_dir = resolve_backend_model(cfg.policy)
    counts = None
    if model_dir is not None:
        from rlaif.dataset.generate import check_prompt_lengths

        counts = check_prompt_lengths(prompts, model_dir, cfg.policy.max_model_len, cfg.max_tokens)
    fp = fingerprint({"prompts": [(p.id, p.messages, p.metadata) for p in prompts],
                      "engine": cfg.policy.engine, "model": cfg.policy.model, "n": cfg.n,
                      "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                      "seed": cfg.seed})
    return GeneratePlan(prompts, fp, counts)


def run_generate(cfg: GenerateConfig | RunConfig, plan: GeneratePlan, engines: Engines, state: RunState) -> list[dict]:
    from rlaif.dataset.generate import generate_candidates

    out = Path(cfg.out)
    if not state.begin("generate", plan.fingerprint, "prompts, policy, n, temperature, top_p, max_tokens or seed",
                       STAGE_OUTPUTS["generate"][0], "generate"):
        return read_jsonl(out / "candidates.jsonl", CANDIDATE_SCHEMA)
    stage = StageFile(out, "candidates", key_fn=lambda r: r["id"])
    stage.load()
    if stage.dropped_torn:
        log("generate: dropped a torn last row left by an interrupted run")
    if stage.rows:
        log(f"generate: resuming, {len(stage.rows)}/{len(plan.prompts)} prompts already done")
    backend = engines.get("policy")
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            seed=cfg.seed)
    stats = generate_candidates(backend, plan.prompts, params, cfg.seed, stage, cfg.chunk_size, cfg.progress,
                                prompt_tokens=plan.prompt_tokens, chunk_tokens=cfg.chunk_tokens)
    rows = stage.finish([p.id for p in plan.prompts])
    tokens = sum(sum(r["num_tokens"]) for r in rows)
    cut = sum(f == "length" for r in rows for f in r["finish_reasons"])
    total = sum(len(r["responses"]) for r in rows)
    state.update("generate", done=True, model_id=backend.model_id,
                 counts={"prompts": len(rows), "candidates": total, "tokens": tokens, "finished_by_length": cut},
                 config={key: value for key, value in to_dict(cfg).items()
                         if key in GenerateConfig.__dataclass_fields__},
                 timings={"seconds": stats["seconds"], "tokens_per_s": stats["tokens_per_s"],
                          "rows_resumed": stats["resumed"]})
    log(f"generate: {len(rows)} prompts x {cfg.n} -> {out / 'candidates.jsonl'}")
    if cut:
        log(f"generate: {cut} of {total} candidates ({cut / total:.0%}) stopped at max_tokens={cfg.max_tokens}, cut "
             "off mid-answer (build: option truncated); raise max_tokens to cut fewer")
    return rows


@dataclass
class JudgePlan:
    rubrics: list[Any]
    fingerprint: str


def plan_judge(cfg: JudgeConfig | RunConfig, candidates: list[dict] | None,
               sources: dict[str, str] | None = None) -> JudgePlan:
    """Load and check the rubrics and the judge model without writing anything; with the candidates,
    also every judge prompt against the judge's context (``sources``: file:line by item id)."""
    from rlaif.judging.rubrics import load_rubric

    check_options(cfg)
    rubrics = [load_rubric(r) for r in cfg.rubrics]
    names = [r.name for r in rubrics]
    if len(set(names)) != len(names):
        raise UserError(f"option 'rubrics': a rubric is named twice ({', '.join(names)})")
    if isinstance(cfg, RunConfig):
        check_weights(cfg.rubric_weights, names)
    model_dir = resolve_backend_model(cfg.judge) if any(r.needs_judge for r in rubrics) else None
    if model_dir is not None and candidates is not None:
        from rlaif.dataset.judge_context import check_judge_prompt_lengths

        check_judge_prompt_lengths(rubrics, candidates, model_dir, cfg.judge.max_model_len, cfg.seed, sources)
    fp = fingerprint({"candidates": _candidates_fp(candidates or []), "engine": cfg.judge.engine,
                      "model": cfg.judge.model,
                      "rubrics": [(r.name, r.method, r.template,
                                   Path(r.path).read_text(encoding="utf-8") if r.path else "") for r in rubrics],
                      "seed": cfg.seed, "max_retries": cfg.verdict_retries})  # key kept: same fingerprints
    return JudgePlan(rubrics, fp)


def _judge_chunk(backend: Backend | None, rubric: Any, items: list, seed: int, verdict_retries: int) -> list[dict]:
    """One judge chunk (run here, or on a pool replica): every engine call of its rubric method."""
    from rlaif.judging.judge import judge_items

    return judge_items(backend, rubric, items, seed=seed, verdict_retries=verdict_retries, progress=False)


def _judge_rubric(cfg: JudgeConfig | RunConfig, rubric: Any, items: list, backend: Backend | None,
                  stage: StageFile) -> dict[str, Any]:
    """Judge every item not yet in ``stage`` with one rubric, chunk by chunk; returns its timings."""
    from rlaif.backends.chunking import chunks, map_chunks

    done_before = sum(stage.done((item.id, rubric.name)) for item in items)
    total = sum(len(item.responses) for item in items)
    bar = tqdm(total=total, unit="cand", desc=f"judge {rubric.name} ({rubric.method})",
               disable=not cfg.progress, dynamic_ncols=True,
               initial=sum(len(item.responses) for item in items if stage.done((item.id, rubric.name))))
    start = time.perf_counter()
    judged = 0
    todo = [block for block in chunks(len(items), cfg.judge_chunk_size)
            if not all(stage.done((items[index].id, rubric.name)) for index in block)]
    calls = ((rubric, [items[index] for index in block], cfg.seed, cfg.verdict_retries) for block in todo)
    for block, rows in zip(todo, map_chunks(backend, _judge_chunk, calls)):
        for item, row in zip((items[index] for index in block), rows):
            if not stage.done((item.id, rubric.name)):
                stage.append(row)
                judged += len(item.responses)
                bar.update(len(item.responses))
    bar.close()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "rows_resumed": done_before,
            "candidates_per_s": round(judged / seconds, 2) if seconds > 0 and judged else None}


def _judge_counts(rubrics: list[Any], rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per rubric: its method, items judged, failed scores and failed engine calls."""
    counts = {}
    for rubric in rubrics:
        mine = [row for row in rows if row["rubric"] == rubric.name]
        counts[rubric.name] = {"method": rubric.method, "items": len(mine),
                               "failed_scores": sum(score is None for row in mine for score in row["scores"]),
                               "failures": sum(row["failures"] for row in mine)}
    return counts


def run_judge(cfg: JudgeConfig | RunConfig, plan: JudgePlan, candidates: list[dict], engines: Engines,
              state: RunState) -> list[dict]:
    from rlaif.judging.items import JudgeItem

    out = Path(cfg.out)
    if not state.begin("judge", plan.fingerprint, "candidates, judge model, rubric files or seed",
                       STAGE_OUTPUTS["judge"][0], "judge"):
        return read_jsonl(out / "judgements.jsonl", JUDGEMENT_SCHEMA)
    stage = StageFile(out, "judgements", key_fn=lambda row: (row["id"], row["rubric"]))
    stage.load()
    if stage.dropped_torn:
        log("judge: dropped a torn last row left by an interrupted run")
    backend = engines.get("judge") if any(r.needs_judge for r in plan.rubrics) else None  # rules: no model
    items = [JudgeItem(id=c["id"], messages=c["messages"], responses=c["responses"],
                       finish_reasons=c.get("finish_reasons"), num_tokens=c.get("num_tokens"))
             for c in candidates]
    timings = {rubric.name: _judge_rubric(cfg, rubric, items, backend, stage) for rubric in plan.rubrics}
    rows = stage.finish([(c["id"], rubric.name) for rubric in plan.rubrics for c in candidates])
    counts = _judge_counts(plan.rubrics, rows)
    state.update("judge", done=True, model_id=backend.model_id if backend is not None else "rules", counts=counts,
                 timings=timings,
                 config={key: value for key, value in to_dict(cfg).items() if key in JudgeConfig.__dataclass_fields__},
                 rubrics=[{"name": r.name, "method": r.method, "path": str(r.path) if r.path else None}
                          for r in plan.rubrics])
    failed = sum(count["failed_scores"] for count in counts.values())
    log(f"judge: {len(rows)} judgements ({failed} failed scores) -> {out / 'judgements.jsonl'}")
    return rows


def build_fingerprint(cfg: BuildConfig | RunConfig, candidates: list[dict], judgements: list[dict], state: RunState,
                      rubric_names: Sequence[str], verdicts: Verdicts | None = None) -> str:
    """What shapes the build's outputs: its inputs, every build option, the seed, the earlier stages'
    settings the report shows and the labels file's content. A change gives a new fingerprint, so the
    build reruns."""
    options = {key: getattr(cfg, key) for key in BuildOptions.__dataclass_fields__}
    shaped = {"options": options, "seed": cfg.seed, "rubrics": list(rubric_names),
              "candidates": fingerprint(candidates), "judgements": fingerprint(judgements),
              "stages": {s: state.stage(s).get("config") for s in ("generate", "judge")}}
    if verdicts is not None:  # only then: builds without labels keep their fingerprints
        shaped["labels"] = verdicts.sha256
    return fingerprint(shaped)


def read_labels_option(cfg: BuildConfig | RunConfig, candidates: list[dict]) -> Verdicts | None:
    """People's verdicts of option ``labels`` checked against ``candidates`` (None without the option)."""
    return read_verdicts(cfg.labels, candidates) if getattr(cfg, "labels", "") else None


def _truncation_note(counts: dict[str, Any], mode: str) -> str | None:
    cut, total = counts.get("responses_truncated", 0), counts.get("responses", 0)
    if not cut:
        return None
    what = {"reject_only": "never chosen, rejected only", "drop": "dropped", "keep": "ranked like any other"}[mode]
    return (f"{cut} of {total} candidates ({cut / max(total, 1):.0%}) were cut off at max_tokens: {what} "
            f"(truncated={mode}); raise max_tokens to cut fewer")


def run_build(cfg: BuildConfig | RunConfig, candidates: list[dict], judgements: list[dict], state: RunState,
              rubric_names: Sequence[str], verdicts: Verdicts | None = None) -> dict[str, Any]:
    from rlaif.dataset.best import best_of_n
    from rlaif.dataset.noise import judge_noise, rubric_key
    from rlaif.dataset.pairs import build_pairs, split_by_prompt
    from rlaif.dataset.report import write_dataset_card, write_report

    out = Path(cfg.out)
    fp = build_fingerprint(cfg, candidates, judgements, state, rubric_names, verdicts)
    info = state.stage("build")
    finished = all((out / name).exists() for name in STAGE_OUTPUTS["build"])
    if info.get("fingerprint") == fp and info.get("done") and finished:
        log(f"build: already done in {out} (same settings), skipped")
        return info["counts"]
    start = time.perf_counter()
    models = {"policy": "+".join(dict.fromkeys(c["policy"] for c in candidates)),
              "judge": "+".join(dict.fromkeys(row["judge"] for row in judgements if row["rubric"] in rubric_names))}
    noise, noise_source = judge_noise(cfg, models["judge"], rubric_key(judgements, rubric_names))
    # min_margin null: drop the pairs inside the judge's noise where it is known
    min_margin = cfg.min_margin if cfg.min_margin is not None else (noise or 0.0)
    pairs, stats = build_pairs(candidates, judgements, list(rubric_names), replace(cfg, min_margin=min_margin),
                               verdicts.by_prompt if verdicts is not None else None)
    review = review_summary(verdicts, stats) if verdicts is not None else None
    stats = Counter({key: value for key, value in stats.items() if not key.startswith("review_")})
    train, test = split_by_prompt(pairs, cfg.test_fraction, cfg.seed)
    write_jsonl(out / "preferences" / "train.jsonl", train)
    write_jsonl(out / "preferences" / "test.jsonl", test)
    sft_train, sft_test, sft_stats = best_of_n(candidates, judgements, list(rubric_names), cfg.rubric_weights,
                                               cfg.best_min_score, {pair["id"] for pair in test})
    write_jsonl(out / "sft" / "train.jsonl", sft_train)
    write_jsonl(out / "sft" / "test.jsonl", sft_test)
    stats.update(sft_stats)
    if noise is not None:
        stats["kept_inside_noise"] = sum(p["margin"] < noise for p in pairs if "label_source" not in p)
    counts = dict(sorted(stats.items())) | {"train_pairs": len(train), "test_pairs": len(test)}
    if review is None:
        state.stage("build").pop("review", None)  # a build without labels after one with them
    else:
        state.update("build", review=review)
    state.update("build", done=False, fingerprint=fp, counts=counts, rubrics=list(rubric_names), models=models,
                 noise_margin={"value": noise, "source": noise_source}, min_margin=min_margin,
                 config={key: value for key, value in to_dict(cfg).items() if key in BuildConfig.__dataclass_fields__},
                 timings={"seconds": round(time.perf_counter() - start, 3)})
    manifest = assemble_manifest(state)
    write_report(out / "report.html", candidates, judgements, train, test, manifest)
    write_dataset_card(out / "README.md", train, test, manifest)
    state.update("build", done=True)  # only now: a build killed before this point reruns
    log(f"build: {len(train)} train / {len(test)} test pairs -> {out / 'preferences'}; best-of-n: "
        f"{len(sft_train)} train / {len(sft_test)} test rows with a best response >= {cfg.best_min_score:g} -> "
        f"{out / 'sft'}")
    if note := _truncation_note(counts, cfg.truncated):
        log(f"build: {note}")
    if noise is not None and stats["kept_inside_noise"]:
        log(f"build: {stats['kept_inside_noise']} of {len(pairs)} pairs have a margin below the judge's noise "
             f"({noise:g}); raise min_margin to drop them")
    if review is not None:
        log(f"build: {review_line(review)}" + (f"; {review['disagreements']} items where reviewers disagree "
                                                "kept the judge's verdict" if review["disagreements"] else ""))
    if not pairs:
        log("build: no pairs survived (see counts in manifest.json and report.html): all tied, failed or "
             "filtered; try strategy=all-pairs, more candidates (n) or a stronger judge")
    return counts


# ----------------------------------------------------------------------------- verbs
def _refuse_out_on_inputs(cfg: CommonOptions, stages: Sequence[str]) -> None:
    """--out that is an input file, or holds one that these stages write (and ``overwrite`` removes):
    one line, before anything is read or deleted. An input elsewhere in --out is fine (``rlaif judge
    --candidates DIR/candidates.jsonl --out DIR``)."""
    inputs = {f"--{key}": getattr(cfg, key, None) for key in ("prompts", "candidates", "judgements")}
    refuse_out_overlap(cfg.out, inputs, [name for stage in stages for name in STAGE_OUTPUTS[stage]] + ["manifest.json"])


def _is_data_output(name: str) -> bool:
    """A name the data stages (or `rlaif review`: ``review/``) wrote before output folders carried a
    marker (`rlaif.io.outdir`)."""
    return name in ("manifest.json", "review") or any(name in names for names in STAGE_OUTPUTS.values())


def _inputs(cfg: CommonOptions) -> list[str | None]:
    """The files a data stage reads (build: the candidates beside the judgements by default; people's
    labels, which usually lie in DIR/review/)."""
    inputs = [getattr(cfg, key, None) for key in ("prompts", "candidates", "judgements", "labels")]
    judgements = getattr(cfg, "judgements", None)
    return inputs + [str(Path(judgements).with_name("candidates.jsonl"))] if judgements else inputs


def _prepare_out(cfg: CommonOptions, stages: Sequence[str]) -> RunState:
    """Refuse an --out holding files rlaif did not write; with overwrite remove these stages'
    outputs; list what they write in the folder's marker."""
    outputs = [name for stage in stages for name in STAGE_OUTPUTS[stage]] + ["manifest.json"]
    beside = STAGE_OUTPUTS["generate"] if "judge" in stages else []  # judge keeps its candidates in --out
    prepare_out(cfg.out, outputs + beside, overwrite=cfg.overwrite, legacy=_is_data_output,
                evidence=[PARTIAL_DIR], remove=outputs,
                inputs=_inputs(cfg))
    state = RunState(cfg.out)
    if cfg.overwrite:
        state.forget(*stages)
    return state


def _candidates_fp(rows: list[dict]) -> str:
    return fingerprint([(r["id"], r["messages"], r["responses"]) for r in rows])


def run_all(cfg: RunConfig, factory: Callable[[BackendConfig], Backend] = load_backend) -> dict[str, Any]:
    """`rlaif run`: generate -> judge -> build into ``cfg.out``."""
    start = time.perf_counter()
    _refuse_out_on_inputs(cfg, STAGES)
    gen_plan = plan_generate(cfg)
    if cfg.labels:  # its rows are checked now, its items against the candidates once they exist
        check_labels_file(cfg.labels)
    # The judge plan needs the candidates, known only after generation; validate the rest now.
    judge_plan = plan_judge(cfg, None)
    state = _prepare_out(cfg, STAGES)
    engines = Engines(cfg.policy, cfg.judge, factory, ray=cfg.ray)
    try:
        candidates = run_generate(cfg, gen_plan, engines, state)
        judge_plan = plan_judge(cfg, candidates, {p.id: p.source for p in gen_plan.prompts})
        judgements = run_judge(cfg, judge_plan, candidates, engines, state)
    finally:
        engines.close()
    counts = run_build(cfg, candidates, judgements, state, [r.name for r in judge_plan.rubrics],
                       read_labels_option(cfg, candidates))
    finish_manifest(Path(cfg.out), state, time.perf_counter() - start)
    return counts


def generate_only(cfg: GenerateConfig, factory: Callable[[BackendConfig], Backend] = load_backend) -> None:
    start = time.perf_counter()
    _refuse_out_on_inputs(cfg, STAGES)
    plan = plan_generate(cfg)
    state = _prepare_out(cfg, STAGES)  # new candidates invalidate judgements and pairs
    engines = Engines(cfg.policy, None, factory, ray=cfg.ray)
    try:
        run_generate(cfg, plan, engines, state)
    finally:
        engines.close()
    finish_manifest(Path(cfg.out), state, time.perf_counter() - start)


def _keep_candidates_beside(src: Path, out: Path, candidates: list[dict], overwrite: bool) -> None:
    """Put the (normalised) judged candidates at DIR/candidates.jsonl so `rlaif build` finds them."""
    dest = out / "candidates.jsonl"
    if dest.exists() and dest.resolve() == src.resolve():
        return
    if dest.exists() and not overwrite:
        if _candidates_fp(read_candidates(dest)) == _candidates_fp(candidates):
            return
        raise UserError(f"{dest}: holds other candidates than {src}; rerun with overwrite=true or pick another --out")
    write_jsonl(dest, candidates)


def judge_only(cfg: JudgeConfig, factory: Callable[[BackendConfig], Backend] = load_backend) -> None:
    start = time.perf_counter()
    if not cfg.candidates:
        raise UserError("option 'candidates': give a candidates file (--candidates FILE)")
    _refuse_out_on_inputs(cfg, ["judge", "build"])
    candidates, sources = read_candidate_sources(cfg.candidates, cfg.prompt_column)
    plan = plan_judge(cfg, candidates, sources)
    state = _prepare_out(cfg, ["judge", "build"])
    _keep_candidates_beside(Path(cfg.candidates), Path(cfg.out), candidates, cfg.overwrite)
    engines = Engines(None, cfg.judge, factory, ray=cfg.ray)
    try:
        run_judge(cfg, plan, candidates, engines, state)
    finally:
        engines.close()
    finish_manifest(Path(cfg.out), state, time.perf_counter() - start)


def build_only(cfg: BuildConfig) -> dict[str, Any]:
    start = time.perf_counter()
    check_options(cfg)
    if not cfg.judgements:
        raise UserError("option 'judgements': give a judgements file (--judgements FILE)")
    _refuse_out_on_inputs(cfg, ["build"])
    judgements = read_jsonl(cfg.judgements, JUDGEMENT_SCHEMA)
    cand_path = cfg.candidates or str(Path(cfg.judgements).with_name("candidates.jsonl"))
    candidates = read_candidates(cand_path)
    names = [Path(rubric).stem for rubric in cfg.rubrics] or list(dict.fromkeys(row["rubric"] for row in judgements))
    missing = [name for name in names if name not in {row["rubric"] for row in judgements}]
    if missing:
        raise UserError(f"{cfg.judgements}: no judgements for rubric '{missing[0]}'")
    if not judgements:
        raise UserError(f"{cfg.judgements}: no judgements in the file")
    check_weights(cfg.rubric_weights, names)
    verdicts = read_labels_option(cfg, candidates)
    state = _prepare_out(cfg, ["build"])
    counts = run_build(cfg, candidates, judgements, state, names, verdicts)
    finish_manifest(Path(cfg.out), state, time.perf_counter() - start)
    return counts
