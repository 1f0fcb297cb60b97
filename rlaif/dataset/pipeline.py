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
from collections import Counter, deque
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

from tqdm import tqdm

from rlaif.backends import Backend, BackendConfig, SamplingParams, load_backend, resolve_backend_model
from rlaif.config import to_dict
from rlaif.errors import UserError
from rlaif.io.log import log
from rlaif.io.records import (CANDIDATE_SCHEMA, JUDGEMENT_SCHEMA, JsonlRows, Prompt, iter_candidate_sources,
                              iter_jsonl_rows, iter_prompts, prompts_path)
from rlaif.io.outdir import prepare_out
from rlaif.io.store import (PARTIAL_DIR, JsonlIndex, ListHasher, RunState, StageFile, fingerprint, fingerprint_with,
                            refuse_out_overlap, write_jsonl)
from rlaif.dataset.engines import Engines
from rlaif.dataset.labels import Verdicts, check_labels_file, read_verdicts, review_line, review_summary
from rlaif.dataset.manifest import assemble_manifest, finish_manifest
from rlaif.dataset.options import (STAGE_OUTPUTS, STAGES, BuildConfig, BuildOptions, CommonOptions, GenerateConfig,
                                   JudgeConfig, RunConfig, check_options, check_weights)


# ----------------------------------------------------------------------------- rows
# A stage's rows are read from their file afresh at each pass, never held whole (issue 20: big inputs);
# tests may pass lists instead.
Rows = Union[Sequence[dict], Callable[[], Iterable[dict]]]


def _each(rows: Rows) -> Iterator[dict]:
    """One pass over ``rows``."""
    return iter(rows) if isinstance(rows, Sequence) else iter(rows())


def _index(rows: Rows, key_fn: Callable[[dict], Any], each: Callable[[dict], None]) -> Mapping[Any, dict]:
    """``key -> row`` of ``rows`` (the last row of a key wins), in one pass that shows ``each`` every
    row: a byte-offset index of a JSONL file, else a dict."""
    if isinstance(rows, JsonlRows):
        index = JsonlIndex(rows.path, key_fn)
        index.scan(lambda row, line: each(row))
        return index
    out = {}
    for row in _each(rows):
        each(row)
        out[key_fn(row)] = row
    return out


class _Sources(Mapping[str, str]):
    """``file:line`` by id, for error messages only: looked up by reading the input again."""

    def __init__(self, make: Callable[[], Iterator[tuple[str, str]]]) -> None:
        self.make = make

    def __getitem__(self, key: str) -> str:
        for pid, source in self.make():
            if pid == key:
                return source
        raise KeyError(key)

    def __bool__(self) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return (pid for pid, _ in self.make())

    def __len__(self) -> int:
        return sum(1 for _ in self.make())


# ----------------------------------------------------------------------------- stages

@dataclass
class GeneratePlan:
    path: Path  # the prompt file, read again at each pass
    prompt_column: str
    count: int
    fingerprint: str
    prompt_tokens: list[int] | None = None  # counted with the policy's tokenizer (None: fake/openai)
    stamp: tuple[int, int] = (0, 0)  # the file's size and mtime when it was checked

    def prompts(self) -> Iterator[Prompt]:
        """The prompts again; a file changed since the plan read it is refused (rows would mix)."""
        if _stamp(self.path) != self.stamp:
            raise UserError(f"{self.path}: changed while rlaif was reading it; rerun the command on the final file")
        return iter_prompts(self.path, self.prompt_column)


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def plan_generate(cfg: GenerateConfig | RunConfig) -> GeneratePlan:
    """Validate generation inputs without writing anything."""
    if not cfg.prompts:
        raise UserError("option 'prompts': give a prompt file (--prompts FILE)")
    check_options(cfg)
    path = prompts_path(cfg.prompts)
    stamp = _stamp(path) if path.is_file() else (0, 0)
    count = 0

    def keyed() -> Iterator[tuple]:  # validates every prompt on the way
        nonlocal count
        for p in iter_prompts(path, cfg.prompt_column):
            count += 1
            yield p.id, p.messages, p.metadata

    fp = fingerprint_with({"engine": cfg.policy.engine, "model": cfg.policy.model, "n": cfg.n,
                           "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                           "seed": cfg.seed}, "prompts", keyed())
    if cfg.n == 1:
        log("generate: n=1 gives one candidate per prompt, so no pairs can be built from it")
    model_dir = resolve_backend_model(cfg.policy)
    counts = None
    if model_dir is not None:
        from rlaif.dataset.generate import check_prompt_lengths

        counts = check_prompt_lengths(iter_prompts(path, cfg.prompt_column), model_dir, cfg.policy.max_model_len,
                                      cfg.max_tokens)
    return GeneratePlan(path, cfg.prompt_column, count, fp, counts, stamp)


def _stage_output(path: Path, schema: dict[str, Any]) -> JsonlRows:
    """A finished stage's file (validated once, here), as rows to read again."""
    for _ in iter_jsonl_rows(path, schema):
        pass
    return JsonlRows(path)


def run_generate(cfg: GenerateConfig | RunConfig, plan: GeneratePlan, engines: Engines, state: RunState) -> JsonlRows:
    from rlaif.dataset.generate import generate_candidates

    out = Path(cfg.out)
    if not state.begin("generate", plan.fingerprint, "prompts, policy, n, temperature, top_p, max_tokens or seed",
                       STAGE_OUTPUTS["generate"][0], "generate"):
        return _stage_output(out / "candidates.jsonl", CANDIDATE_SCHEMA)
    stage = StageFile(out, "candidates", key_fn=lambda r: r["id"])
    stage.load()
    if stage.dropped_torn:
        log("generate: dropped a torn last row left by an interrupted run")
    if stage.rows:
        log(f"generate: resuming, {len(stage.rows)}/{plan.count} prompts already done")
    backend = engines.get("policy")
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            seed=cfg.seed)
    stats = generate_candidates(backend, plan.prompts(), params, cfg.seed, stage, cfg.chunk_size, cfg.progress,
                                prompt_tokens=plan.prompt_tokens, chunk_tokens=cfg.chunk_tokens, total=plan.count)
    tokens = cut = total = 0

    def count(row: dict) -> None:
        nonlocal tokens, cut, total
        tokens += sum(row["num_tokens"])
        cut += sum(f == "length" for f in row["finish_reasons"])
        total += len(row["responses"])

    prompts = stage.write_final((p.id for p in plan.prompts()), count)
    state.update("generate", done=True, model_id=backend.model_id,
                 counts={"prompts": prompts, "candidates": total, "tokens": tokens, "finished_by_length": cut},
                 config={key: value for key, value in to_dict(cfg).items()
                         if key in GenerateConfig.__dataclass_fields__},
                 timings={"seconds": stats["seconds"], "tokens_per_s": stats["tokens_per_s"],
                          "rows_resumed": stats["resumed"]})
    log(f"generate: {prompts} prompts x {cfg.n} -> {out / 'candidates.jsonl'}")
    if cut:
        log(f"generate: {cut} of {total} candidates ({cut / total:.0%}) stopped at max_tokens={cfg.max_tokens}, cut "
             "off mid-answer (build: option truncated); raise max_tokens to cut fewer")
    return JsonlRows(out / "candidates.jsonl")


@dataclass
class JudgePlan:
    rubrics: list[Any]
    fingerprint: str


def plan_judge(cfg: JudgeConfig | RunConfig, candidates: Rows | None,
               sources: Mapping[str, str] | None = None) -> JudgePlan:
    """Load and check the rubrics and the judge model without writing anything; with the candidates,
    also every judge prompt against the judge's context (``sources``: file:line by item id)."""
    from rlaif.judging.rubrics import load_rubric

    from rlaif.judging.criteria import check_criteria, criteria_rubric, is_criteria_spec

    check_options(cfg)
    rubrics = [criteria_rubric(r) if is_criteria_spec(r) else load_rubric(r) for r in cfg.rubrics]
    criteria = [r.field for r in rubrics if r.method == "criteria"]
    if criteria and candidates is not None:  # every item has valid criteria before the judge loads
        check_criteria(criteria, ((c["id"], c.get("metadata") or {}) for c in _each(candidates)), sources)
    names = [r.name for r in rubrics]
    if len(set(names)) != len(names):
        raise UserError(f"option 'rubrics': a rubric is named twice ({', '.join(names)})")
    if isinstance(cfg, RunConfig):
        check_weights(cfg.rubric_weights, names)
    model_dir = resolve_backend_model(cfg.judge) if any(r.needs_judge for r in rubrics) else None
    if model_dir is not None and candidates is not None:
        from rlaif.dataset.judge_context import check_judge_prompt_lengths

        check_judge_prompt_lengths(rubrics, _each(candidates), model_dir, cfg.judge.max_model_len, cfg.seed, sources)
    extra = {"criteria": fingerprint_with({}, "", ([c["id"]] + [(c.get("metadata") or {}).get(f) for f in criteria]
                                                  for c in _each(candidates or [])))} if criteria else {}
    fp = fingerprint({**extra, "candidates": _candidates_fp(candidates or []), "engine": cfg.judge.engine,
                      "model": cfg.judge.model,
                      "rubrics": [(r.name, r.method, r.template,
                                   Path(r.path).read_text(encoding="utf-8") if r.path else "") for r in rubrics],
                      "seed": cfg.seed, "max_retries": cfg.verdict_retries})  # key kept: same fingerprints
    return JudgePlan(rubrics, fp)


def _judge_chunk(backend: Backend | None, rubric: Any, items: list, seed: int, verdict_retries: int) -> list[dict]:
    """One judge chunk (run here, or on a pool replica): every engine call of its rubric method."""
    from rlaif.judging.judge import judge_items

    return judge_items(backend, rubric, items, seed=seed, verdict_retries=verdict_retries, progress=False)


def _judge_rubric(cfg: JudgeConfig | RunConfig, rubric: Any, candidates: Rows, backend: Backend | None,
                  stage: StageFile) -> dict[str, Any]:
    """Judge every candidates row not yet in ``stage`` with one rubric, chunk by chunk (a chunk is
    held, not the file); returns its timings."""
    from rlaif.backends.chunking import map_chunks, take_chunks
    from rlaif.judging.items import JudgeItem

    done_before = sum(1 for key in stage.rows if key[1] == rubric.name)
    total = initial = 0
    if cfg.progress:  # one more pass over the candidates, for the bar only
        for cand in _each(candidates):
            total += len(cand["responses"])
            initial += len(cand["responses"]) if stage.done((cand["id"], rubric.name)) else 0
    bar = tqdm(total=total, unit="cand", desc=f"judge {rubric.name} ({rubric.method})",
               disable=not cfg.progress, dynamic_ncols=True, initial=initial)
    start = time.perf_counter()
    judged = 0
    sent: deque[list] = deque()  # chunks sent to the engine whose rows are not saved yet

    def calls() -> Iterator[tuple]:
        for block in take_chunks(_each(candidates), cfg.judge_chunk_size):
            if all(stage.done((c["id"], rubric.name)) for c in block):
                continue
            items = [JudgeItem(id=c["id"], messages=c["messages"], responses=c["responses"],
                               finish_reasons=c.get("finish_reasons"), num_tokens=c.get("num_tokens"),
                               metadata=c.get("metadata")) for c in block]
            sent.append(items)
            yield rubric, items, cfg.seed, cfg.verdict_retries

    for rows in map_chunks(backend, _judge_chunk, calls()):
        for item, row in zip(sent.popleft(), rows):
            if not stage.done((item.id, rubric.name)):
                stage.append(row)
                judged += len(item.responses)
                bar.update(len(item.responses))
    bar.close()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "rows_resumed": done_before,
            "candidates_per_s": round(judged / seconds, 2) if seconds > 0 and judged else None}


def run_judge(cfg: JudgeConfig | RunConfig, plan: JudgePlan, candidates: Rows, engines: Engines,
              state: RunState) -> JsonlRows:
    out = Path(cfg.out)
    if not state.begin("judge", plan.fingerprint, "candidates, judge model, rubric files or seed",
                       STAGE_OUTPUTS["judge"][0], "judge"):
        return _stage_output(out / "judgements.jsonl", JUDGEMENT_SCHEMA)
    stage = StageFile(out, "judgements", key_fn=lambda row: (row["id"], row["rubric"]))
    stage.load()
    if stage.dropped_torn:
        log("judge: dropped a torn last row left by an interrupted run")
    backend = engines.get("judge") if any(r.needs_judge for r in plan.rubrics) else None  # rules: no model
    timings = {rubric.name: _judge_rubric(cfg, rubric, candidates, backend, stage) for rubric in plan.rubrics}
    # per rubric: its method, items judged, failed scores and failed engine calls
    counts = {rubric.name: {"method": rubric.method, "items": 0, "failed_scores": 0, "failures": 0}
              for rubric in plan.rubrics}

    def count(row: dict) -> None:
        mine = counts[row["rubric"]]
        mine["items"] += 1
        mine["failed_scores"] += sum(score is None for score in row["scores"])
        mine["failures"] += row["failures"]

    rows = stage.write_final(((c["id"], rubric.name) for rubric in plan.rubrics for c in _each(candidates)), count)
    state.update("judge", done=True, model_id=backend.model_id if backend is not None else "rules", counts=counts,
                 timings=timings,
                 config={key: value for key, value in to_dict(cfg).items() if key in JudgeConfig.__dataclass_fields__},
                 rubrics=[{"name": r.name, "method": r.method, "path": str(r.path) if r.path else None}
                          for r in plan.rubrics])
    failed = sum(count["failed_scores"] for count in counts.values())
    log(f"judge: {rows} judgements ({failed} failed scores) -> {out / 'judgements.jsonl'}")
    return JsonlRows(out / "judgements.jsonl")


def build_fingerprint(cfg: BuildConfig | RunConfig, candidates: Rows, judgements: Rows, state: RunState,
                      rubric_names: Sequence[str], verdicts: Verdicts | None = None) -> str:
    """What shapes the build's outputs: its inputs, every build option, the seed, the earlier stages'
    settings the report shows and the labels file's content. A change gives a new fingerprint, so the
    build reruns."""
    return _build_fp(cfg, fingerprint_with({}, "", _each(candidates)), fingerprint_with({}, "", _each(judgements)),
                     state, rubric_names, verdicts)


def _build_fp(cfg: BuildConfig | RunConfig, candidates: str, judgements: str, state: RunState,
              rubric_names: Sequence[str], verdicts: Verdicts | None) -> str:
    """`build_fingerprint` from the fingerprints of the candidates and the judgements."""
    options = {key: getattr(cfg, key) for key in BuildOptions.__dataclass_fields__}
    shaped = {"options": options, "seed": cfg.seed, "rubrics": list(rubric_names),
              "candidates": candidates, "judgements": judgements,
              "stages": {s: state.stage(s).get("config") for s in ("generate", "judge")}}
    if verdicts is not None:  # only then: builds without labels keep their fingerprints
        shaped["labels"] = verdicts.sha256
    return fingerprint(shaped)


def read_labels_option(cfg: BuildConfig | RunConfig, candidates: Rows) -> Verdicts | None:
    """People's verdicts of option ``labels`` checked against ``candidates`` (None without the option)."""
    return read_verdicts(cfg.labels, _each(candidates)) if getattr(cfg, "labels", "") else None  # type: ignore[arg-type]


def _truncation_note(counts: dict[str, Any], mode: str) -> str | None:
    cut, total = counts.get("responses_truncated", 0), counts.get("responses", 0)
    if not cut:
        return None
    what = {"reject_only": "never chosen, rejected only", "drop": "dropped", "keep": "ranked like any other"}[mode]
    return (f"{cut} of {total} candidates ({cut / max(total, 1):.0%}) were cut off at max_tokens: {what} "
            f"(truncated={mode}); raise max_tokens to cut fewer")


def _write_pairs(cfg: BuildConfig | RunConfig, out: Path, candidates: Rows, judgement: Mapping[tuple, dict],
                 rubric_names: Sequence[str], min_margin: float, report: Any,
                 verdicts: Verdicts | None) -> Counter:
    """Pairs into ``preferences/{train,test}.jsonl``, streamed: a prompt group at a time into a work
    file, then split by prompt id (only the ids with pairs are held); then each prompt's best-of-n
    row into ``sft/{train,test}.jsonl`` on its pairs' side (`rlaif.dataset.best`); returns the counts."""
    from rlaif.dataset.best import best_rows
    from rlaif.dataset.pairs import held_out_prompts, iter_pairs

    stats: Counter = Counter()
    ids: list[str] = []  # prompts with pairs, in order (each prompt's pairs are consecutive)
    wanted, lengths = report.wants_lengths(), {}  # the responses' tokens of the report's sampled points

    def each_candidate() -> Iterator[dict]:
        for cand in _each(candidates):
            if cand["id"] in wanted:
                lengths[cand["id"]] = cand["num_tokens"]
            yield cand

    def pairs() -> Iterator[dict]:
        for pair in iter_pairs(each_candidate(), judgement, list(rubric_names),
                               replace(cfg, min_margin=min_margin), stats,
                               verdicts.by_prompt if verdicts is not None else None):
            if not ids or ids[-1] != pair["id"]:
                ids.append(pair["id"])
            yield pair

    work = out / PARTIAL_DIR / "pairs.jsonl"
    write_jsonl(work, pairs())
    report.add_lengths(lengths)
    test_ids = held_out_prompts(ids, cfg.test_fraction, cfg.seed)
    del ids
    for name, test in (("train", False), ("test", True)):
        def side(test: bool = test) -> Iterator[dict]:
            for pair in iter_jsonl_rows(work):
                if (pair["id"] in test_ids) == test:
                    report.add_pair(pair, test)
                    yield pair

        stats[f"{name}_pairs"] = write_jsonl(out / "preferences" / f"{name}.jsonl", side())
    work.unlink()
    for name, test in (("train", False), ("test", True)):  # best-of-n for SFT, on the pairs' side of the split
        stats[f"sft_{name}"] = write_jsonl(out / "sft" / f"{name}.jsonl", best_rows(
            _each(candidates), judgement, list(rubric_names), cfg.rubric_weights, cfg.best_min_score, test_ids, test,
            stats=None if test else stats))  # each prompt's reason counted once, in the train pass
    if report.noise is not None:
        stats["kept_inside_noise"] = report.judged_inside_noise  # a person's pair is no judge noise
    return stats


def run_build(cfg: BuildConfig | RunConfig, candidates: Rows, judgements: Rows, state: RunState,
              rubric_names: Sequence[str], verdicts: Verdicts | None = None) -> dict[str, Any]:
    """Pairs, report and card from the candidates and judgements. Each input is read in one pass
    that fingerprints it and gathers what the report shows (the judgements are also indexed by byte
    offsets: the pairs look them up by id), then the pairs pass; see `_write_pairs`."""
    from rlaif.dataset.noise import judge_noise, rubric_key
    from rlaif.dataset.report import ReportStats, write_dataset_card, write_report

    out = Path(cfg.out)
    report = ReportStats()
    cand_hash, judge_hash = ListHasher(), ListHasher()
    policies: dict[str, None] = {}
    judges: dict[str, None] = {}
    methods: dict[str, str] = {}

    for cand in _each(candidates):
        cand_hash.add(cand)
        policies[cand["policy"]] = None
        report.add_candidate(cand)

    def see_judgement(row: dict) -> None:
        judge_hash.add(row)
        methods[row["rubric"]] = row["method"]
        if row["rubric"] in rubric_names:
            judges[row["judge"]] = None
        report.add_judgement(row)

    judgement = _index(judgements, lambda row: (row["id"], row["rubric"]), see_judgement)
    fp = _build_fp(cfg, cand_hash.hexdigest(), judge_hash.hexdigest(), state, rubric_names, verdicts)
    info = state.stage("build")
    finished = all((out / name).exists() for name in STAGE_OUTPUTS["build"])
    if info.get("fingerprint") == fp and info.get("done") and finished:
        log(f"build: already done in {out} (same settings), skipped")
        return info["counts"]
    start = time.perf_counter()
    models = {"policy": "+".join(policies), "judge": "+".join(judges)}
    key = rubric_key([{"rubric": rubric, "method": method} for rubric, method in methods.items()], rubric_names)
    noise, noise_source = judge_noise(cfg, models["judge"], key)
    # min_margin null: drop the pairs inside the judge's noise where it is known
    min_margin = cfg.min_margin if cfg.min_margin is not None else (noise or 0.0)
    report.noise = noise
    stats = _write_pairs(cfg, out, candidates, judgement, rubric_names, min_margin, report, verdicts)
    review = review_summary(verdicts, stats) if verdicts is not None else None
    stats = Counter({key: value for key, value in stats.items() if not key.startswith("review_")})
    train, test = stats.pop("train_pairs"), stats.pop("test_pairs")
    counts = dict(sorted(stats.items())) | {"train_pairs": train, "test_pairs": test}
    if review is None:
        state.stage("build").pop("review", None)  # a build without labels after one with them
    else:
        state.update("build", review=review)
    state.update("build", done=False, fingerprint=fp, counts=counts, rubrics=list(rubric_names), models=models,
                 noise_margin={"value": noise, "source": noise_source}, min_margin=min_margin,
                 config={key: value for key, value in to_dict(cfg).items() if key in BuildConfig.__dataclass_fields__},
                 timings={"seconds": round(time.perf_counter() - start, 3)})
    manifest = assemble_manifest(state)
    write_report(out / "report.html", report, manifest)
    write_dataset_card(out / "README.md", report, manifest)
    state.update("build", done=True)  # only now: a build killed before this point reruns
    log(f"build: {train} train / {test} test pairs -> {out / 'preferences'}; best-of-n: {counts['sft_train']} "
        f"train / {counts['sft_test']} test rows with a best response >= {cfg.best_min_score:g} -> {out / 'sft'}")
    if note := _truncation_note(counts, cfg.truncated):
        log(f"build: {note}")
    if noise is not None and stats["kept_inside_noise"]:
        log(f"build: {stats['kept_inside_noise']} of {report.pairs} pairs have a margin below the judge's noise "
             f"({noise:g}); raise min_margin to drop them")
    if review is not None:
        log(f"build: {review_line(review)}" + (f"; {review['disagreements']} items where reviewers disagree "
                                                "kept the judge's verdict" if review["disagreements"] else ""))
    if not report.pairs:
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


def _candidates_fp(rows: Rows) -> str:
    return fingerprint_with({}, "", ((r["id"], r["messages"], r["responses"]) for r in _each(rows)))


def run_all(cfg: RunConfig, factory: Callable[[BackendConfig], Backend] = load_backend) -> dict[str, Any]:
    """`rlaif run`: generate -> judge -> build into ``cfg.out``."""
    start = time.perf_counter()
    _refuse_out_on_inputs(cfg, STAGES)
    gen_plan = plan_generate(cfg)
    if cfg.labels:  # its rows are checked now, its items against the candidates once they exist
        check_labels_file(cfg.labels)
    # The judge plan needs the candidates, known only after generation; validate the rest now.
    judge_plan = plan_judge(cfg, None)
    fields = [r.field for r in judge_plan.rubrics if r.method == "criteria"]
    if fields:  # per-prompt criteria: every prompt's, before anything is generated
        from rlaif.judging.criteria import check_criteria

        check_criteria(fields, ((p.id, p.metadata, p.source) for p in gen_plan.prompts()))
    state = _prepare_out(cfg, STAGES)
    engines = Engines(cfg.policy, cfg.judge, factory, ray=cfg.ray)
    try:
        candidates = run_generate(cfg, gen_plan, engines, state)
        judge_plan = plan_judge(cfg, candidates, _Sources(lambda: ((p.id, p.source) for p in gen_plan.prompts())))
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


def _keep_candidates_beside(src: Path, out: Path, candidates: Rows, overwrite: bool) -> None:
    """Put the (normalised) judged candidates at DIR/candidates.jsonl so `rlaif build` finds them."""
    dest = out / "candidates.jsonl"
    if dest.exists() and dest.resolve() == src.resolve():
        return
    if dest.exists() and not overwrite:
        if _candidates_fp(lambda: (row for row, _ in iter_candidate_sources(dest))) == _candidates_fp(candidates):
            return
        raise UserError(f"{dest}: holds other candidates than {src}; rerun with overwrite=true or pick another --out")
    write_jsonl(dest, _each(candidates))


def _candidate_rows(path: Path, prompt_column: str = "prompt") -> Rows:
    """A candidates file, validated here (every row, unique ids), as rows read again at each pass: as
    written by `rlaif generate` (a JSONL file, indexed by byte offsets where a stage needs rows by
    id), or normalised from a user file."""
    generated = path.suffix == ".jsonl"
    for row, _ in iter_candidate_sources(path, prompt_column):
        generated = generated and row["policy"] != "user"
    if generated:
        return JsonlRows(path)
    return lambda: (row for row, _ in iter_candidate_sources(path, prompt_column))


def judge_only(cfg: JudgeConfig, factory: Callable[[BackendConfig], Backend] = load_backend) -> None:
    start = time.perf_counter()
    if not cfg.candidates:
        raise UserError("option 'candidates': give a candidates file (--candidates FILE)")
    _refuse_out_on_inputs(cfg, ["judge", "build"])
    candidates = _candidate_rows(Path(cfg.candidates), cfg.prompt_column)
    sources = _Sources(lambda: ((row["id"], source) for row, source in iter_candidate_sources(cfg.candidates,
                                                                                           cfg.prompt_column)))
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
    judged = list(dict.fromkeys(row["rubric"] for row in iter_jsonl_rows(cfg.judgements, JUDGEMENT_SCHEMA)))
    judgements = JsonlRows(Path(cfg.judgements))
    cand_path = cfg.candidates or str(Path(cfg.judgements).with_name("candidates.jsonl"))
    candidates = _candidate_rows(Path(cand_path))
    names = [Path(rubric).stem for rubric in cfg.rubrics] or judged
    missing = [name for name in names if name not in judged]
    if missing:
        raise UserError(f"{cfg.judgements}: no judgements for rubric '{missing[0]}'")
    if not judged:
        raise UserError(f"{cfg.judgements}: no judgements in the file")
    check_weights(cfg.rubric_weights, names)
    verdicts = read_labels_option(cfg, candidates)
    state = _prepare_out(cfg, ["build"])
    counts = run_build(cfg, candidates, judgements, state, names, verdicts)
    finish_manifest(Path(cfg.out), state, time.perf_counter() - start)
    return counts
