"""The step loop of ``rlaif train grpo | rloo | ppo``.

Each step s: the next prompts_per_step prompts of the run's seeded sampler (state.PromptSampler)
-> k rollouts each from the engine (seed stable_seed(seed, "rollout", s)) -> rewards per source
(None masks the sample and is counted; with dynamic_sampling the groups whose rewards are all
equal are replaced by more prompts, dynamic.py) -> old-policy log-probs (logits / T; skipped when
the batch makes one optimizer update, step.reuses_current_logp, and taken from the update's own
forward) and the stale-weights gap to the engine's log-probs -> reference log-probs -> advantages (step.advantages) -> epochs_per_step passes
of minibatch updates -> engine.sync(policy) -> metrics. Output folder (``--out DIR``)::

    DIR/config.json, model.safetensors, tokenizer*   final policy (plain from_pretrained(DIR); LoRA merged)
    DIR/adapter/                                     LoRA adapter alone (when lora.enabled)
    DIR/value/                                       PPO value model
    DIR/checkpoints/step-N/                          see state.py
    DIR/metrics.jsonl, DIR/runs/                     one line / TensorBoard point per logged step
    DIR/rollouts.jsonl                               every log_rollouts_every steps: what the policy wrote
    DIR/summary.json                                 first/last rewards, config, settings

Under ``accelerate launch`` (DDP) each process samples and rewards its slice of the step's prompts,
all gather the full batch, and the scoring passes and updates are split by micro-batch with the
gradients summed (distributed.py); the main process alone writes the folder, and its metrics are
the full batch's, so they are one process's.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rlaif.config import to_dict
from rlaif.io.records import Prompt, read_prompts
from rlaif.io.store import atomic_write_text
from rlaif.io.seeds import stable_seed
from rlaif.train.online import maths
from rlaif.train.online.algorithms import strategy
from rlaif.train.online.ahead import Ahead
from rlaif.train.online.config import OnlineConfig, check_config, is_low
from rlaif.train.online.mismatch import mismatch_metrics
from rlaif.train.online.setup import Run, build_run
from rlaif.train.checkpoints import refuse_out_on_inputs, save_model_files
from rlaif.train.online.dynamic import Groups, sample_groups
from rlaif.train.online.state import (PromptSampler, check_online_out, checkpoint_run, restore_run, resume_or_start,
                                      run_settings)
from rlaif.train.online.batch import build_batch
from rlaif.train.online.step import advantages, reuses_current_logp, score_batch, sequence_kl, update
from rlaif.train.runtime import StepMemory

EOS_RATE_FLOOR = 0.05  # below it, "every sample is cut by max_tokens" for the missing-EOS warning


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def collect_rewards(run: Run, prompts: list[Prompt], rollouts: list[Any]) -> tuple[dict[str, list], list]:
    """Each source's rewards for the rollouts, and their weighted mix (None = masked)."""
    from rlaif.rewards.combine import combine_rewards

    chats = [prompts[r.prompt_index].messages for r in rollouts]
    rows = [{**prompts[r.prompt_index].metadata, "id": prompts[r.prompt_index].id} for r in rollouts]
    texts = [r.text for r in rollouts]
    per_source = {source.name: source(chats, texts, rows) for source in run.rewards}
    return per_source, combine_rewards(per_source, run.weights)


def reward_tensor(cfg: OnlineConfig, total: list, rollouts: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (N,) with masked samples at 0, and validity (N,); PPO's missing-EOS score and the
    overlong penalty (:func:`overlong`) applied."""
    valid = torch.tensor([r is not None for r in total], dtype=torch.float)
    scores = torch.tensor([0.0 if r is None else float(r) for r in total])
    eos_score = strategy(cfg).missing_eos_score
    if eos_score is not None:
        cut = torch.tensor([not r.finished for r in rollouts])
        scores = torch.where(cut & (valid > 0), torch.tensor(float(eos_score)), scores)
    return scores + overlong(cfg, rollouts) * valid, valid


def overlong(cfg: OnlineConfig, rollouts: list[Any]) -> torch.Tensor:
    """overlong_penalty x DAPO's soft overlong penalty of each completion's length (N,), <= 0."""
    lengths = torch.tensor([len(r.completion_ids) for r in rollouts], dtype=torch.float)
    return cfg.overlong_penalty * maths.overlong_penalty(lengths, cfg.max_tokens, cfg.overlong_buffer)


def sample_and_reward(cfg: OnlineConfig, run: Run, batch_prompts: list[Prompt], ids: list[list[int]], step: int,
                      round_: int = 0) -> tuple[list[Any], dict[str, list], list, float, float]:
    """This rank's share of the step's rollouts and rewards, then everyone's (`gather_rollouts`):
    rollouts, rewards per source, their mix, and this rank's generation and reward seconds."""
    lo, hi = (0, len(ids)) if run.dist.world == 1 else local_slice(cfg, run, len(ids))
    t0 = time.perf_counter()
    rollouts = run.engine.generate(ids[lo:hi], cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                                   max_tokens=cfg.max_tokens, seed=rollout_seed(cfg.seed, step, round_),
                                   first_index=lo) if hi > lo else []
    t1 = time.perf_counter()
    for source in run.rewards:  # judge:auto dates its per-prompt criteria by step
        if hasattr(source, "at_step"):
            source.at_step(step)
    if rollouts:
        per_source, total = collect_rewards(run, batch_prompts[lo:hi], rollouts)
    else:
        per_source, total = {source.name: [] for source in run.rewards}, []
    t2 = time.perf_counter()
    if run.dist.world > 1:
        rollouts, per_source, total = gather_rollouts(run, lo, rollouts, per_source, total)
    return rollouts, per_source, total, t1 - t0, t2 - t1


def rollout_seed(seed: int, step: int, round_: int) -> int:
    """The engine seed of a step's sampling round (round 0: the step's, as without dynamic sampling)."""
    return stable_seed(seed, "rollout", step) if round_ == 0 else stable_seed(seed, "rollout", step, round_)


def local_slice(cfg: OnlineConfig, run: Run, count: int) -> tuple[int, int]:
    """The prompts this rank samples: its contiguous slice, or with a Ray pool (only the main process
    holds the engine, which spreads the prompts over its replicas) all on the main process."""
    from rlaif.train.online.distributed import prompt_slice
    from rlaif.train.online.setup import pooled

    if pooled(cfg):
        return (0, count) if run.dist.main else (0, 0)
    return prompt_slice(count, run.dist.world, run.dist.rank)


def gather_rollouts(run: Run, lo: int, rollouts: list[Any], per_source: dict[str, list], total: list
                    ) -> tuple[list[Any], dict[str, list], list]:
    """Every rank's rollouts and rewards in rank order (= prompt order), prompt indices made global."""
    import dataclasses

    shifted = [dataclasses.replace(r, prompt_index=r.prompt_index + lo) for r in rollouts]
    parts = run.dist.gather((shifted, per_source, total))
    merged = {name: [v for _, src, _ in parts for v in src[name]] for name in per_source}
    return [r for rs, _, _ in parts for r in rs], merged, [v for _, _, totals in parts for v in totals]


def sample_step(cfg: OnlineConfig, run: Run, prompts: list[Prompt], cache: dict[int, list[int]], step: int
                ) -> tuple[Groups, dict[str, float]]:
    """The step's prompts from the run's sampler, sampled and rewarded; with dynamic_sampling, the
    zero-variance groups replaced (dynamic.py). Refill round r > 0 samples with seed
    stable_seed(seed, "rollout", step, r)."""
    def sample(order: list[int], round_: int) -> tuple[list[Any], dict[str, list], list, float]:
        ids = [cache[i] if i in cache else cache.setdefault(i, run.engine.prompt_ids(prompts[i].messages))
               for i in order] if run.engine is not None else []
        rollouts, per_source, total, gen_s, _ = sample_and_reward(cfg, run, [prompts[i] for i in order], ids, step,
                                                                  round_)
        return rollouts, per_source, total, gen_s

    sampler = run.sampler or PromptSampler(len(prompts), cfg.seed, step * cfg.prompts_per_step)
    return sample_groups(prompts, sampler.take, sample, cfg.prompts_per_step, cfg.k, cfg.dynamic_sampling,
                         cfg.max_refill_rounds, run.warned if run.dist.main else None)


def rollout_step(cfg: OnlineConfig, run: Run, prompts: list[Prompt], cache: dict[int, list[int]],
                 step: int, ahead: Ahead | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One step (0-based ``step``): sample, reward, score, update, sync. Returns metrics and rollout rows.
    With ``ahead`` (async_generation) the batch was sampled during the previous step, and the next
    one is sampled during this update (ahead.py)."""
    t0, memory = time.perf_counter(), StepMemory(run.device)
    if ahead is None:
        groups, dynamic_stats = sample_step(cfg, run, prompts, cache, step)
    else:
        groups, dynamic_stats = ahead.take(step)
        if step + 1 < cfg.steps:
            ahead.start(step + 1)
    batch_prompts, rollouts, per_source, total = groups.prompts, groups.rollouts, groups.per_source, groups.total
    # time/reward: this rank's rewards and the gather; async: time/generation is the wait for the batch
    t1 = t0 + groups.gen_s if ahead is None else time.perf_counter()
    t2 = time.perf_counter()
    scores, valid = reward_tensor(cfg, total, rollouts)
    if step == 0 and run.value_from_policy:
        from rlaif.train.online.value import start_at_mean_score

        start_at_mean_score(run.value_model, scores, valid)
    batch = build_batch(rollouts, run.tokenizer.pad_token_id)
    run.policy.eval()
    old_policy = cfg.async_generation or not reuses_current_logp(cfg, len(rollouts), run.kl.value)
    scored = score_batch(cfg, batch, run.policy, run.reference, run.value_model, run.device, run.autocast,
                         old_policy=old_policy, dist=run.dist)
    adv = advantages(cfg, batch, scores, valid, scored, run.kl.value, run.value_from_policy)
    run.policy.train()
    t3 = time.perf_counter()
    train_stats = update(cfg, step, batch, scored, adv, valid, run)
    if not old_policy:
        adv["kl"] = sequence_kl(scored, batch.mask)  # the update filled scored.old_logp
    t4 = time.perf_counter()
    if ahead is not None:
        ahead.wait()  # the engine's weights change only between samplings
    sync_s = run.engine.sync(run.policy) if run.engine is not None else 0.0
    metrics = {"time/generation": t1 - t0, "time/reward": t2 - t1, "time/train": t4 - t2, "time/scoring": t3 - t2,
               "time/update": t4 - t3, "time/sync": sync_s, "time/step": time.perf_counter() - t0,
               **step_metrics(cfg, run, rollouts, batch, scored, adv, valid, per_source, total, groups.gen_s),
               **train_stats, **dynamic_stats, **memory.read()}
    if cfg.overlong_buffer:
        metrics["overlong_penalty"] = float((overlong(cfg, rollouts) * valid).sum() / max(float(valid.sum()), 1.0))
    if run.entropy_coef is not None:
        metrics["entropy_coef"] = run.entropy_coef.value  # the coefficient this step's update used
        run.entropy_coef.update(metrics["entropy"], 1)
    warn_missing_eos(cfg, run, metrics["eos_rate"])
    run.kl.update(metrics["kl"], len(rollouts))
    rows = [{"step": step + 1, "prompt_id": batch_prompts[r.prompt_index].id,
             "prompt": batch_prompts[r.prompt_index].messages, "response": r.text,
             "rewards": {name: values[i] for name, values in per_source.items()}, "reward": total[i],
             "kl": float(adv["kl"][i]), "finished": r.finished} for i, r in enumerate(rollouts)]
    return metrics, rows


def warn_missing_eos(cfg: OnlineConfig, run: Run, eos_rate: float) -> None:
    """Once per run, on stderr: a missing-EOS score is on and (almost) no sample stopped, so (almost)
    every sample gets the same score and the reward carries no signal."""
    eos_score = strategy(cfg).missing_eos_score
    if eos_score is None or eos_rate >= EOS_RATE_FLOOR or "missing_eos" in run.warned or not run.dist.main:
        return
    run.warned.add("missing_eos")
    print(f"warning: eos_rate {eos_rate:.2f}: (almost) no completion ends before max_tokens={cfg.max_tokens}, so "
          f"missing_eos_score={eos_score} replaces (almost) every reward and the rewards carry no signal; raise "
          f"max_tokens or set missing_eos_score=null", file=sys.stderr, flush=True)


def step_metrics(cfg: OnlineConfig, run: Run, rollouts: list[Any], batch: Any, scored: Any,
                 adv: dict[str, torch.Tensor], valid: torch.Tensor, per_source: dict[str, list], total: list,
                 gen_s: float) -> dict[str, float]:
    """Rollout, reward, KL, entropy, value and stale-weights metrics of one step.

    logprob_gap = mean over completion tokens of |engine log-prob - trainer log-prob|: near 0 when
    the engine samples from the trainer's weights, larger when a sync was missed (TRL #5312);
    mismatch/* (mismatch.py): k3 KL engine -> trainer, and with is_correction the clipped / masked
    share and the mean importance weight."""
    tokens = float(batch.mask.sum())
    scored_mask = batch.mask * valid.unsqueeze(-1)  # a skipped old-policy pass leaves masked samples unscored
    gap = float(((batch.engine_logp - scored.old_logp).abs() * scored_mask).sum() / max(float(scored_mask.sum()), 1.0))
    metrics = {"rollout/tokens_per_s": tokens / max(gen_s, 1e-9), "logprob_gap": gap,
               **mismatch_metrics(cfg.is_correction, scored.old_logp, batch.engine_logp, scored_mask, cfg.is_cap,
                                  is_low(cfg)),
               "response_length": tokens / len(rollouts),
               "eos_rate": sum(r.finished for r in rollouts) / len(rollouts),
               "masked": float(len(rollouts) - valid.sum()), "entropy": scored.entropy,
               "kl": float(adv["kl"].mean()), "beta": run.kl.value}
    metrics["reward/mean"], metrics["reward/std"] = _stats([r for r in total if r is not None])
    for name, values in per_source.items():
        metrics[f"reward/{name}/mean"], metrics[f"reward/{name}/std"] = _stats([v for v in values if v is not None])
    if run.value_model is not None:
        mask = batch.mask * valid.unsqueeze(-1)
        metrics["explained_variance"] = maths.explained_variance(scored.old_values, adv["returns"], mask)
    return metrics


def train_online(cfg: OnlineConfig) -> dict[str, Any]:
    """Train ``cfg.model`` online with ``cfg.algorithm`` (grpo | rloo | ppo); returns the summary."""
    from rlaif.models import check_causal_lm, resolve_model
    from rlaif.rewards.criteria import check_prompt_criteria
    from rlaif.rewards.specs import parse_reward_specs

    from rlaif.train.online.distributed import init_dist

    check_config(cfg)
    refuse_out_on_inputs(cfg)
    dist = init_dist(cfg.algorithm)  # world 1 unless under accelerate launch / torchrun
    specs = parse_reward_specs(cfg.reward, cfg.reward_weights)
    prompts = read_prompts(cfg.prompts, cfg.prompt_column)
    check_prompt_criteria(specs, prompts)  # rubrics:FIELD: every prompt's criteria, before any model loads
    out = Path(cfg.out)
    settings = run_settings(cfg)
    finished = check_online_out(cfg, out, settings)
    if finished is not None:
        return finished
    base = resolve_model(cfg.model)
    check_causal_lm(base)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    run = build_run(cfg, base, specs, dist)
    try:
        return _loop(cfg, run, prompts, out, settings)
    finally:
        run.close()


def _loop(cfg: OnlineConfig, run: Run, prompts: list[Prompt], out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from rlaif.train.runtime import MetricsLog

    main = run.dist.main  # only the main process writes files; every rank loads the checkpoint
    restored = resume_or_start(out, run.policy, run.value_model, run.optimizer, main=main)
    start = restored.step if restored else 0
    restore_run(cfg, run, restored, len(prompts))
    if restored is not None and main:
        print(f"resuming from step {start} of {cfg.steps}")
    log = MetricsLog(out, main)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.algorithm}", disable=not cfg.progress or not main)
    cache: dict[int, list[int]] = {}
    history: list[dict[str, float]] = []
    ahead = Ahead(lambda s: sample_step(cfg, run, prompts, cache, s)) if cfg.async_generation else None
    try:
        for step in range(start, cfg.steps):
            metrics, rows = rollout_step(cfg, run, prompts, cache, step, ahead)
            done = step + 1
            history.append(metrics)
            if done % cfg.logging_steps == 0 or done == cfg.steps:
                log.log(done, metrics)
            if main and cfg.log_rollouts_every and (done % cfg.log_rollouts_every == 0 or done == 1):
                with (out / "rollouts.jsonl").open("a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            if main and cfg.save_steps and done % cfg.save_steps == 0 and done != cfg.steps:
                # async: the sampler has already given the prompts of step done + 1 (sampled ahead)
                checkpoint_run(cfg, run, out, done, settings,
                               taken_ahead=cfg.prompts_per_step if ahead is not None and ahead.pending else 0)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl']:.3f}")
    finally:
        if ahead is not None:
            ahead.close()
        bar.close()
        log.close()
    return save_final(cfg, run, out, settings, start, history)


def save_final(cfg: OnlineConfig, run: Run, out: Path, settings: dict[str, Any], start: int,
               history: list[dict[str, float]]) -> dict[str, Any]:
    """The policy as a plain causal LM (LoRA merged; adapter kept in adapter/), the value model
    (PPO), the tokenizer and summary.json, written by the main process; every rank returns the summary."""
    rewards = [h["reward/mean"] for h in history]
    summary = {"trainer": cfg.algorithm, "steps": cfg.steps, "resumed_from": start,
               "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
               "last_step": history[-1] if history else {}, "config": to_dict(cfg), "settings": settings}
    if run.dist.main:
        _write_final(cfg, run, out, summary)
    run.dist.barrier()  # the other ranks leave once the files are written
    return summary


def _write_final(cfg: OnlineConfig, run: Run, out: Path, summary: dict[str, Any]) -> None:
    policy = run.policy
    if cfg.lora.enabled:
        policy.save_pretrained(out / "adapter")
        policy = policy.merge_and_unload()
    policy.config.use_cache = True

    def save(folder: Path) -> None:
        policy.save_pretrained(folder, safe_serialization=True)
        run.tokenizer.save_pretrained(folder)

    save_model_files(out, save)
    if run.value_model is not None:
        from rlaif.train.online.value import save_value_model

        save_value_model(run.value_model, out / "value")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(f"saved {cfg.algorithm} policy to {out}")
