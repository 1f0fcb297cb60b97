"""``rlaif loop``: rounds of generate -> judge -> build -> train -> eval, each resumable.

Round K (1-based), with pi_0 the starting policy and pi_{K-1} the current one::

    DIR/round-K/prompts.jsonl   this round's fresh seeded slice of the training prompts (loop/prompts.py)
    DIR/round-K/data/           `rlaif run` with pi_{K-1} as policy (dpo, rm+ppo, sft; grpo samples online instead)
    DIR/round-K/rm/             rm+ppo: the reward model trained on data/
    DIR/round-1/sft/            sft_first: pi_0 fine-tuned on round 1's best candidates (data/sft/); round 1 trains from it
    DIR/round-K/model/          pi_K: `train_dpo` (reference pi_0 or pi_{K-1}), `train_online` or `train_sft`
                                (trainer=sft: expert iteration, SFT of pi_{K-1} on the round's best candidates)
    DIR/round-K/eval/vs-initial/, vs-previous/   `run_eval` of pi_K against pi_0 and pi_{K-1}
    DIR/round-K/benchmark/      guard.benchmark set: pi_K scored on it (`rlaif eval --benchmark`; pi_0 in round-0/)
    DIR/round-K/round.json      the round's results; written last, so it marks the round done

plus ``DIR/eval_prompts.jsonl`` (held out, never trained on), ``DIR/manifest.json`` and
``DIR/report.html``. Each stage resumes on its own (the pipeline's stage files, the trainers'
checkpoints, eval's rows); a finished round is skipped whole. ``DIR/.rlaif/loop.json`` holds the
settings fingerprint: a rerun with other settings is refused unless ``overwrite``; ``rounds``
is not part of it, so raising ``rounds`` continues a finished loop.

Engines: every stage loads its models, and closes them before the next stage starts (gc between
stages), so memory stays flat from round to round (``rss_mb`` per round in the manifest: anonymous RSS).

Guard (`rlaif.loop.guard`): with ``guard.benchmark`` set, the loop stops after a round whose judge win rate
rose while its benchmark accuracy fell beyond ``guard.max_drop`` and its interval (``manifest["stopped"]``;
`rlaif loop` exits `EXIT_GUARD`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from rlaif.config import flatten_dict, to_dict
from rlaif.errors import UserError
from rlaif.io.records import Prompt
from rlaif.io.log import log
from rlaif.io.outdir import prepare_out
from rlaif.io.store import atomic_write_text, fingerprint, refuse_out_overlap
from rlaif.loop.config import LoopConfig, check_loop_config
from rlaif.loop.prompts import round_prompts, split_prompts, write_prompts

STATE = Path(".rlaif") / "loop.json"
LOG_PREFIX = "rlaif loop"
# What `rlaif loop` writes in --out; overwrite removes these and nothing else.
LOOP_FILES = ("manifest.json", "report.html", "eval_prompts.jsonl")
LOOP_OUTPUTS = ("round-*", *LOOP_FILES, str(STATE))  # for refuse_out_overlap
# Options that cannot change any round's result (top level), and nested keys of that kind (last part of
# the dotted name): how often to log or save, resume granularity, memory shares and HTTP plumbing; and
# dpo.ref_model, which the loop sets from `reference` (a user value is refused).
NOT_SETTINGS = ("out", "overwrite", "progress", "rounds")
NOT_SETTING_LEAVES = ("ref_model", "progress", "logging_steps", "eval_steps", "save_steps", "save_total_limit",
                      "log_rollouts_every", "chunk_size", "chunk_tokens", "judge_chunk_size", "gpu_memory_utilization",
                      "max_concurrency", "cpu_reserved_cores",
                      "timeout_s", "http_retries", "http_retry_backoff_s", "api_key_env")



def round_dir(cfg: LoopConfig, round_number: int) -> Path:
    return Path(cfg.out) / f"round-{round_number}"


def policy_of(cfg: LoopConfig, round_number: int) -> str:
    """pi_k: the starting policy for k = 0, else round k's trained model folder."""
    return cfg.policy.model if round_number == 0 else str(round_dir(cfg, round_number) / "model")


def training_start(cfg: LoopConfig, round_number: int) -> str:
    """The weights round k's trainer starts from: pi_{k-1}, or in round 1 with sft_first the SFT model."""
    return str(round_dir(cfg, 1) / "sft") if cfg.sft_first and round_number == 1 else policy_of(cfg, round_number - 1)


# ----------------------------------------------------------------------------- settings and resume
def loop_settings(cfg: LoopConfig, pool: list[Prompt], evals: list[Prompt]) -> dict[str, Any]:
    """Flat settings that shape the results (the prompts by content), with their fingerprint."""
    flat = flatten_dict({key: value for key, value in to_dict(cfg).items() if key not in NOT_SETTINGS},
                        keep_empty=True)
    flat = {key: value for key, value in flat.items() if key.rsplit(".", 1)[-1] not in NOT_SETTING_LEAVES}
    flat["prompts"] = fingerprint([(prompt.id, prompt.messages, prompt.metadata) for prompt in pool])
    flat["eval_prompts"] = fingerprint([(prompt.id, prompt.messages, prompt.metadata) for prompt in evals])
    # the guard: off -> not a setting (loops made before it resume); max_drop only decides when to stop
    flat = {key: value for key, value in flat.items()
            if not key.startswith("guard.") or (cfg.guard.benchmark and key != "guard.max_drop")}
    if cfg.guard.benchmark:
        from rlaif.eval.benchmark_check import read_benchmark

        items = read_benchmark(cfg.guard.benchmark, cfg.guard.check, cfg.guard.tolerance)
        flat["guard.benchmark"] = fingerprint([(item.prompt.id, item.prompt.messages, item.raw) for item in items])
    return {**flat, "fingerprint": fingerprint(flat)}


def _is_loop_output(name: str) -> bool:
    """A name `rlaif loop` wrote before output folders carried a marker (`rlaif.io.outdir`)."""
    return name in LOOP_FILES or re.fullmatch(r"round-[0-9]+", name) is not None


def prepare_loop_out(cfg: LoopConfig, settings: dict[str, Any]) -> None:
    """Refuse an --out holding files rlaif did not write (`rlaif.io.outdir`); overwrite: remove what
    the loop wrote (listed in the marker). Else refuse a folder holding another loop's rounds."""
    out = Path(cfg.out)
    first = 0 if cfg.guard.benchmark else 1  # round-0/benchmark/: the guard's score of the start policy
    names = [f"round-{number}" for number in range(first, cfg.rounds + 1)] + list(LOOP_FILES)
    prepare_out(out, names, overwrite=cfg.overwrite, legacy=_is_loop_output, evidence=[str(STATE.parent)],
                inputs=[cfg.prompts, cfg.eval_prompts, cfg.guard.benchmark])
    state = out / STATE
    if cfg.overwrite:
        state.unlink(missing_ok=True)
    if state.is_file():
        old = json.loads(state.read_text())
        if old.get("fingerprint") != settings["fingerprint"]:
            keys = [key for key in settings if key != "fingerprint" and old.get(key) != settings[key]]
            keys += [key for key in old if key not in settings]
            what = ", ".join(f"{key} {old.get(key)!r} -> {settings.get(key)!r}" for key in keys[:3])
            raise UserError(f"{out}: holds a loop made with other settings ({what}"
                            f"{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}); rerun with --overwrite "
                            f"(overwrite=true) to start over, or pick another --out")
    elif any(out.glob("round-*")):
        raise UserError(f"{out}: holds round folders not made by these settings (no {STATE}); rerun with "
                        f"--overwrite or pick another --out")
    atomic_write_text(state, json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n")


# ----------------------------------------------------------------------------- stages
def _free() -> None:
    """Drop what a finished stage left (models, engines) before the next one loads its own."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def stage_data(cfg: LoopConfig, round_number: int) -> dict[str, Any]:
    """`rlaif run` of round k's prompts with pi_{k-1} as the policy; counts of the build stage."""
    from rlaif.dataset.options import RunConfig
    from rlaif.dataset.pipeline import run_all

    fields = {field.name for field in dataclasses.fields(RunConfig)}
    values = {name: getattr(cfg, name) for name in fields if hasattr(cfg, name)}
    values.update(prompts=str(round_dir(cfg, round_number) / "prompts.jsonl"), prompt_column="prompt",
                  out=str(round_dir(cfg, round_number) / "data"), overwrite=False,
                  policy=dataclasses.replace(cfg.policy, model=policy_of(cfg, round_number - 1)))
    counts = run_all(RunConfig(**values))
    if not counts.get("sft_train" if cfg.trainer == "sft" else "train_pairs"):
        done = f"rounds 1-{round_number - 1} are kept" if round_number > 1 else "no earlier round"
        why = (f"no prompt with a complete best candidate >= best_min_score={cfg.best_min_score} "
               f"({counts.get('sft_no_complete_scored', 0)} prompts had no complete scored candidate; see "
               f"{values['out']}/report.html); lower best_min_score, raise max_tokens or n" if cfg.trainer == "sft" else
               f"`rlaif run` produced no training pairs (see {values['out']}/report.html: all tied, failed or "
               f"filtered); try a larger n, strategy=all-pairs or another judge")
        raise UserError(f"round {round_number}: {why} ({done})")
    return counts


def stage_train(cfg: LoopConfig, round_number: int) -> dict[str, Any]:
    """Train pi_k from pi_{k-1}; returns the trainer's summary (trimmed to numbers worth a report)."""
    folder = round_dir(cfg, round_number)
    first = None
    if cfg.sft_first and round_number == 1:  # pi_0 -> round-1/sft on the round's best candidates
        first = stage_sft(cfg, policy_of(cfg, 0), training_start(cfg, 1), folder)
    base, out = training_start(cfg, round_number), str(folder / "model")
    common = {"model": base, "out": out, "overwrite": False, "seed": cfg.seed, "progress": cfg.progress}
    if cfg.trainer == "sft":
        return stage_sft(cfg, base, out, folder)
    record = stage_update(cfg, round_number, folder, base, common)
    return {**record, "sft_first": first} if first is not None else record


def stage_sft(cfg: LoopConfig, base: str, out: str, folder: Path) -> dict[str, Any]:
    """`train_sft` of ``base`` on the round's best candidates (data/sft/) into ``out``."""
    from rlaif.train.sft import train_sft

    summary = train_sft(dataclasses.replace(cfg.sft, data=str(folder / "data"), model=base, out=out, overwrite=False,
                                            seed=cfg.seed, progress=cfg.progress))
    _free()
    return {"trainer": "sft", "steps": summary.get("steps"), "test_before": summary.get("test_before", {}),
            "test": summary.get("test", {})}


def stage_update(cfg: LoopConfig, round_number: int, folder: Path, base: str, common: dict[str, Any]
                 ) -> dict[str, Any]:
    """DPO, GRPO or RM + PPO from ``base``; returns the trainer's summary trimmed to the report's numbers."""
    if cfg.trainer == "dpo":
        from rlaif.train.dpo import train_dpo

        reference = training_start(cfg, 1) if cfg.reference == "initial" else base
        ref_model = "" if reference == base else reference  # "": the round's starting weights
        summary = train_dpo(dataclasses.replace(cfg.dpo, data=str(folder / "data"), ref_model=ref_model, **common))
        return {"trainer": "dpo", "reference": reference, "steps": summary.get("steps"),
                "test": summary.get("test", {}), "train_margin_last_steps": summary.get("train_margin_last_steps")}
    from rlaif.train.online.trainer import train_online

    if cfg.trainer == "grpo":
        online_config = dataclasses.replace(cfg.grpo, prompts=str(folder / "prompts.jsonl"), prompt_column="prompt",
                                   reward=list(cfg.rewards), reward_weights=list(cfg.reward_weights),
                                   judge=cfg.judge, **common)  # judge: rewards use the loop's judge.*
    else:  # rm+ppo: a reward model on this round's pairs (from the starting policy), then PPO with it
        from rlaif.train.rm import train_rm

        train_rm(dataclasses.replace(cfg.rm, data=str(folder / "data"), model=policy_of(cfg, 0), out=str(folder / "rm"),
                                     overwrite=False, seed=cfg.seed, progress=cfg.progress))
        _free()
        online_config = dataclasses.replace(cfg.ppo, prompts=str(folder / "prompts.jsonl"), prompt_column="prompt",
                                   reward=[f"rm:{folder / 'rm'}"], reward_weights=[], **common)
    summary = train_online(online_config)
    return {"trainer": cfg.trainer, "steps": summary.get("steps"), "reward_first": summary.get("reward_first"),
            "reward_last": summary.get("reward_last")}


EvalFn = Callable[[LoopConfig, str, str, Path], dict[str, Any]]


def eval_sources(cfg: LoopConfig) -> tuple[list[str], list[str]]:
    """(rubrics, rewards) of the eval: eval.* when given; else the loop's rubrics (dpo, rm+ppo), or its
    grpo rewards (python:/rm: as rewards, judge:R as rubric R): the policy is judged by what it learnt from."""
    if cfg.eval.rubrics or cfg.eval.rewards:
        return list(cfg.eval.rubrics), list(cfg.eval.rewards)
    if cfg.trainer != "grpo":
        return list(cfg.rubrics), []
    return ([spec.split(":", 1)[1] for spec in cfg.rewards if spec.startswith("judge:")],
            [spec for spec in cfg.rewards if not spec.startswith("judge:")])


def stage_eval(cfg: LoopConfig, a: str, b: str, out: Path) -> dict[str, Any]:
    """`run_eval` of ``a`` against ``b`` (models or candidates files) on the held-out eval prompts, with the
    loop's engines (policy.* for generation, judge.* for rubrics)."""
    from rlaif.eval.evaluate import run_eval

    rubrics, rewards = eval_sources(cfg)
    ecfg = dataclasses.replace(cfg.eval, a=a, b=b, prompts=str(Path(cfg.out) / "eval_prompts.jsonl"),
                               prompt_column="prompt", out=str(out), overwrite=False, seed=cfg.seed,
                               rubrics=rubrics, rewards=rewards, policy=cfg.policy, judge=cfg.judge,
                               progress=cfg.progress)
    return run_eval(ecfg)


def eval_sides(cfg: LoopConfig, round_number: int, name: str) -> tuple[str, str]:
    """Sides of round k's eval ``name``. Generation happens once per policy: pi_0's eval responses are
    round 1's side B, later rounds reuse them, and pi_{k-1}'s are round k-1's side A (same prompts, seed and
    sampling settings, so the same responses a fresh generation would give)."""
    first = round_dir(cfg, 1) / "eval" / "vs-initial"
    if name == "vs-initial":
        baseline = policy_of(cfg, 0) if round_number == 1 else str(first / "candidates_b.jsonl")
        return policy_of(cfg, round_number), baseline
    mine = str(round_dir(cfg, round_number) / "eval" / "vs-initial" / "candidates_a.jsonl")
    return mine, str(round_dir(cfg, round_number - 1) / "eval" / "vs-initial" / "candidates_a.jsonl")


# ----------------------------------------------------------------------------- rounds
def _anonymous_rss_megabytes() -> float:
    """Anonymous resident memory of this process in MB (Linux /proc ``RssAnon``; 0 where unavailable): the
    heap a leak grows, without the shared-library pages the kernel drops and reloads under memory pressure."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_round(cfg: LoopConfig, round_number: int, prompts: list[Prompt],
              evaluate: EvalFn) -> tuple[dict[str, Any], dict]:
    """Run (or finish) round k; returns its record (written to round.json) and its timings."""
    folder = round_dir(cfg, round_number)
    timings: dict[str, float] = {}
    write_prompts(folder / "prompts.jsonl", prompts)
    record: dict[str, Any] = {"round": round_number, "policy_in": policy_of(cfg, round_number - 1),
                              "policy_out": policy_of(cfg, round_number), "prompts": len(prompts)}
    if cfg.trainer != "grpo":
        started = time.perf_counter()
        log(f"round {round_number}: generate -> judge -> build with {policy_of(cfg, round_number - 1)}", LOG_PREFIX)
        counts = stage_data(cfg, round_number)
        record["data"] = {key: counts.get(key) for key in ("train_pairs", "test_pairs")}
        timings["data_s"] = time.perf_counter() - started
        _free()
    started = time.perf_counter()
    log(f"round {round_number}: train ({cfg.trainer})", LOG_PREFIX)
    record["train"] = stage_train(cfg, round_number)
    timings["train_s"] = time.perf_counter() - started
    _free()
    started = time.perf_counter()
    record["eval"] = {}
    for name, other in (("vs-initial", 0), ("vs-previous", round_number - 1)):
        if name == "vs-previous" and round_number == 1:
            continue  # pi_0 is both: see vs-initial
        log(f"round {round_number}: eval {name} ({policy_of(cfg, round_number)} vs {policy_of(cfg, other)})",
            LOG_PREFIX)
        a, b = eval_sides(cfg, round_number, name)
        record["eval"][name] = evaluate(cfg, a, b, folder / "eval" / name)
        _free()
    timings["eval_s"] = time.perf_counter() - started
    if cfg.measure_kl:
        from rlaif.io.records import read_candidates
        from rlaif.eval.kl import policy_kl

        started = time.perf_counter()
        rows = read_candidates(folder / "eval" / "vs-initial" / "candidates_a.jsonl")
        record["kl"] = policy_kl(policy_of(cfg, round_number), policy_of(cfg, 0), rows)
        timings["kl_s"] = time.perf_counter() - started
        _free()
    if cfg.guard.benchmark:
        started = time.perf_counter()
        log(f"round {round_number}: guard benchmark {cfg.guard.benchmark}", LOG_PREFIX)
        record["benchmark"] = guard_benchmark(cfg, round_number)
        timings["benchmark_s"] = time.perf_counter() - started
        _free()
    atomic_write_text(folder / "round.json", json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return record, timings


def guard_benchmark(cfg: LoopConfig, round_number: int) -> dict[str, Any]:
    """pi_k scored on the guard's benchmark in DIR/round-k/benchmark/ (k = 0: the starting policy)."""
    from rlaif.loop.guard import run_guard_benchmark

    return run_guard_benchmark(cfg.guard, policy_of(cfg, round_number), round_dir(cfg, round_number) / "benchmark",
                               cfg.policy, cfg.seed, cfg.progress)


def run_loop(cfg: LoopConfig, evaluate: EvalFn = stage_eval) -> dict[str, Any]:
    """`rlaif loop`: every round not yet done, then manifest.json, report.html and the win-rate table."""
    from rlaif.dataset.manifest import package_versions
    from rlaif.loop.report import win_rate_table, write_report

    start = time.perf_counter()
    check_loop_config(cfg)
    inputs = {"--prompts": cfg.prompts, "eval_prompts": cfg.eval_prompts, "policy.model": cfg.policy.model,
              **{f"rewards {spec}": spec[3:] for spec in cfg.rewards if spec.startswith("rm:")}}
    refuse_out_overlap(cfg.out, inputs, LOOP_OUTPUTS)  # before anything is read or deleted
    pool, evals = split_prompts(cfg.prompts, cfg.eval_prompts, cfg.eval_size, cfg.seed, cfg.prompt_column)
    slices = [round_prompts(pool, cfg.seed, cfg.prompts_per_round, number) for number in range(1, cfg.rounds + 1)]
    _preflight(cfg)
    settings = loop_settings(cfg, pool, evals)
    prepare_loop_out(cfg, settings)
    out = Path(cfg.out)
    write_prompts(out / "eval_prompts.jsonl", evals)
    manifest: dict[str, Any] = {"format": "rlaif-loop/1", "versions": package_versions(), "config": to_dict(cfg),
                                "settings_fingerprint": settings["fingerprint"],
                                "prompts": {"training_pool": len(pool), "eval": len(evals),
                                            "per_round": cfg.prompts_per_round},
                                "rounds": [], "timings": {"rounds": {}}}
    if cfg.guard.benchmark:
        from rlaif.loop.guard import decide

        log(f"round 0: guard benchmark {cfg.guard.benchmark} on the starting policy", LOG_PREFIX)
        manifest["benchmark_start"] = guard_benchmark(cfg, 0)
        _free()
    for round_number in range(1, cfg.rounds + 1):
        marker = round_dir(cfg, round_number) / "round.json"
        if marker.is_file():
            log(f"round {round_number}: already done (same settings), skipped", LOG_PREFIX)
            record, timings = json.loads(marker.read_text()), {}
        else:
            record, timings = run_round(cfg, round_number, slices[round_number - 1], evaluate)
        timings["rss_mb"] = round(_anonymous_rss_megabytes(), 1)
        manifest["rounds"].append(record)
        manifest["timings"]["rounds"][str(round_number)] = {key: round(value, 3) for key, value in timings.items()}
        manifest["timings"]["total_seconds_this_invocation"] = round(time.perf_counter() - start, 3)
        reason = decide(manifest["benchmark_start"], manifest["rounds"], cfg.guard.max_drop) if cfg.guard.benchmark \
            else None
        if reason:
            manifest["stopped"] = {"round": round_number, "reason": reason}
        _write_manifest(out, manifest)
        if reason:
            break
    write_report(out / "report.html", manifest)
    print(win_rate_table(manifest["rounds"], manifest.get("benchmark_start")))
    return manifest


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


def _preflight(cfg: LoopConfig) -> None:
    """Check rubrics, rewards, models and eval options before anything is written (bad input never
    costs a round)."""
    from rlaif.dataset.options import check_options, check_shared_engine
    from rlaif.backends import resolve_backend_model
    from rlaif.judging.rubrics import load_rubric
    from rlaif.eval.options import check_eval_options
    from rlaif.rewards.specs import parse_reward_specs

    check_options(cfg)
    check_shared_engine(cfg.policy, cfg.judge)
    resolve_backend_model(cfg.policy)
    if cfg.trainer == "grpo":
        parse_reward_specs(cfg.rewards, cfg.reward_weights)
    else:
        for rubric in cfg.rubrics:
            load_rubric(rubric)
    rubrics, rewards = eval_sources(cfg)
    check_eval_options(dataclasses.replace(cfg.eval, a="new", b="old", rubrics=rubrics, rewards=rewards))
    for rubric in rubrics:
        load_rubric(rubric)
    for scheme, target, _ in parse_reward_specs(rewards, []) if rewards else []:
        if scheme not in ("python", "rm"):
            raise UserError(f"option 'eval.rewards': {scheme}:{target}: eval takes python:FILE.py:FUNC or rm:DIR; "
                            f"give a judged rubric in eval.rubrics")
    if rubrics or cfg.trainer != "grpo":
        resolve_backend_model(cfg.judge)
    if cfg.guard.benchmark:
        from rlaif.eval.benchmark_check import Checkers, read_benchmark
        from rlaif.eval.benchmark_options import check_benchmark_options

        check_benchmark_options(dataclasses.replace(cfg.guard, a="policy"))
        Checkers(read_benchmark(cfg.guard.benchmark, cfg.guard.check, cfg.guard.tolerance))
