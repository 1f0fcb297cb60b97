"""Online RL throughput: rlaif grpo against TRL's GRPOTrainer, one after the other in one run.

Same CPU, model (the embedded SmolLM2-135M-Instruct, fp32), prompts (the first --prompts rows of
prompts/demo.jsonl, so every step sees the same prompts in both), k (num_generations), max_tokens
(max_completion_length), prompts per step, steps, lr (constant), beta=0 (no reference model),
loss_type, one PPO-clip update per rollout batch (num_iterations=1), temperature 1.0 / top_p 1.0,
and the same Python reward (`length_reward` below, a length target). TRL samples with
transformers' `model.generate` (its default; `--trl-vllm` tries its vLLM colocate mode, which
expects a GPU); rlaif samples with its vllm engine and syncs the weights into it every step.
The first step of each run is warm-up and is reported apart. Seconds per step are split into
generation / reward / scoring / update / sync: scoring is the no-grad work between rewards and the
update (rlaif: its metric ``time/scoring``, the batch tensors and `score_batch`, which skips the
old-policy pass when the batch makes one update; TRL: the rest of `_generate_and_score_completions`,
which skips that pass when num_iterations == 1), update is the rest of the step (forward +
backward + optimizer step, and rlaif's step metrics).

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/rl.py [--prompts 4] [--k 4] [--max-tokens 32]
        [--steps 4] [--only rlaif|trl] [--trl-vllm] [--rounds 2] [--split] [--isolate]

``--rounds R`` runs TRL and rlaif alternately R times each (A B A B, one engine alive at a time) and
reports the ratio of the median seconds per step, so a change of the machine's load between runs
hits both; each row also gives the load average after it. ``--isolate`` runs each of them in a fresh
(spawned) process, as a user runs either trainer: in one process a run inherits the heap and the
thread pools the runs before it left (BENCHMARKS.md, Online RL run 9). ``--split`` times the functions inside
rlaif's update (`UpdateSplit`: forward, backward, optimizer, clip, batch slicing, GC pauses, the
rest) and the torch thread count there; TRL's row gives its thread count as well.

``--losses`` instead compares rlaif grpo's policy losses on the same seed, prompts and reward:
PPO-clip per token (grpo), GSPO (importance_sampling_level=sequence) and CISPO (loss_type=cispo),
each over 2 epochs of 2 minibatches per rollout batch (on-policy, with one update per batch, GSPO's
ratio is 1 and the three differ only in how they sum tokens), and prints the reward curves:

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/rl.py --losses [--engine hf] [--steps 10] [--lr 3e-5]
        [--model DIR --reward vowels]   # a tiny random model: vowels_reward is what it can learn

``--mismatch`` runs rlaif alone, three times in one process: on-policy (no correction), and
one-step-off generation (async_generation) with token / sequence IS (is_correction):
seconds per step against on-policy, and the mismatch metrics (k3 KL engine -> trainer, the share
of tokens clipped or samples masked, the mean weight).

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/rl.py --mismatch --steps 5 [--engine hf]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from isolate import in_fresh_process

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "prompts" / "demo.jsonl"
TARGET_CHARS = 60


def length_reward(prompts, completions, **kwargs) -> list[float]:
    """Length target: 0 at TARGET_CHARS characters, -1 per TARGET_CHARS away (TRL-style signature).

    Completions may be strings (rlaif) or message lists (TRL's conversational format)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [-abs(len(t) - TARGET_CHARS) / TARGET_CHARS for t in texts]


def vowels_reward(prompts, completions, **kwargs) -> list[float]:
    """Share of vowels among the completion's characters: a signal a tiny random model can learn."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch in "aeiou" for ch in t) / max(len(t), 1) for t in texts]


def write_prompts(path: Path, n: int) -> list[dict]:
    rows = [json.loads(x) for x in PROMPTS.read_text().splitlines() if x.strip()][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def summarise(steps: list[dict]) -> dict:
    """Warm-up (first step) apart; means of the later steps (so the parts add up to the step)."""
    keys = ("total", "generation", "reward", "scoring", "update", "sync")
    timed = steps[1:] or steps
    res = {f"warmup_{k}": steps[0].get(k, 0.0) for k in keys}
    res.update({k: statistics.mean(s.get(k, 0.0) for s in timed) for k in keys})
    res["step_totals"] = [round(s["total"], 1) for s in steps]
    res["step_parts"] = {k: [round(s.get(k, 0.0), 2) for s in steps] for k in ("generation", "update", "sync")}
    res["tokens_per_s_gen"] = sum(s["tokens"] for s in timed) / max(sum(s["generation"] for s in timed), 1e-9)
    res["reward_first"], res["reward_last"] = steps[0]["reward_mean"], steps[-1]["reward_mean"]
    res["steps"] = len(steps)
    return res


def trl_run(rows: list[dict], model_dir: str, out: Path, args: argparse.Namespace) -> dict:
    """TRL GRPOTrainer, timed per optimizer step with wrappers around its generate and reward calls."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.k, gradient_accumulation_steps=1,
        num_generations=args.k, max_completion_length=args.max_tokens, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, beta=0.0, num_iterations=1,
        epsilon=0.2, loss_type=args.loss_type, scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0,
        bf16=False, use_cpu=True, gradient_checkpointing=False, report_to=[], save_strategy="no",
        logging_steps=1, seed=args.seed, dataloader_num_workers=0, disable_tqdm=True, log_completions=False,
        use_vllm=args.trl_vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    steps: list[dict] = []
    cur: dict = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            cur.clear()
            cur.update(generation=0.0, reward=0.0, sync=0.0, prep=0.0, tokens=0, reward_mean=0.0,
                       threads=torch.get_num_threads(), t0=time.perf_counter())

        def on_step_end(self, *a, **k):
            total = time.perf_counter() - cur.pop("t0")
            gen, prep = cur["generation"] - cur["sync"], cur.pop("prep")
            scoring = prep - cur["generation"] - cur["reward"]
            steps.append({**cur, "total": total, "generation": gen, "scoring": scoring,
                          "update": total - prep})

    trainer = GRPOTrainer(model=model, reward_funcs=length_reward, args=cfg, train_dataset=dataset,
                          processing_class=tok, callbacks=[Timer()])
    _wrap(trainer, "_generate_and_score_completions", "prep", cur)
    _wrap(trainer, "_generate", "generation", cur, count=lambda r: sum(len(c) for c in r[1]))
    _wrap(trainer, "_calculate_rewards", "reward", cur, mean=lambda r: float(r.nanmean()))
    if args.trl_vllm:
        _wrap(trainer.vllm_generation, "sync_weights", "sync", cur)
    load = time.perf_counter() - t0
    trainer.train()
    mode = ("vLLM colocate" if args.trl_vllm else "transformers generate")
    return {**summarise(steps), "threads": sorted({s["threads"] for s in steps}), "load_s": load,
            "wall_s": time.perf_counter() - t0, "mode": mode}


def _wrap(obj, name: str, key: str, cur: dict, count=None, mean=None) -> None:
    """Replace obj.name by a timed call that adds its seconds to cur[key] (and tokens / reward mean)."""
    inner = getattr(obj, name)

    def timed(*a, **k):
        t = time.perf_counter()
        res = inner(*a, **k)
        cur[key] = cur.get(key, 0.0) + time.perf_counter() - t
        if count:
            cur["tokens"] = cur.get("tokens", 0) + count(res)
        if mean:
            cur["reward_mean"] = mean(res)
        return res

    setattr(obj, name, timed)


class UpdateSplit:
    """Where rlaif's ``update`` time goes (``--split``): perf_counter timers around the functions a step
    calls (patched on `rlaif.train.online.step` / `trainer` for the run, restored after), summed per step.

    forward = `step.micro_loss` (packed forward, log-probs, loss); backward = `Tensor.backward` inside
    the update; optimizer = the AdamW step (global optimizer hooks); clip = `clip_grad_norm_`;
    micro_batch = `step._micro_batch` (slicing the batch), tally = `_Tally.finish`, metrics =
    `trainer.step_metrics`, build_batch / score_batch (in time/scoring); gc = the collector's pauses
    (`gc.callbacks`) inside the update; other = time/update minus its timed parts. Also the torch thread
    count and CPU affinity seen inside the update, and the batch's tokens (packed sequence, completions)."""

    PARTS = ("forward", "backward", "optimizer", "clip", "micro_batch", "tally", "gc")

    def __init__(self) -> None:
        self.cur: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.threads: set[int] = set()
        self.affinity: set[int] = set()  # the cores the trainer may run on, inside the update
        self._undo: list = []
        self._in_update = False
        self._gc_t = 0.0

    def add(self, key: str, seconds: float) -> None:
        self.cur[key] = self.cur.get(key, 0.0) + seconds

    def _patch(self, obj: object, name: str, key: str | None, around=None) -> None:
        inner = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k) if around is None else around(inner, *a, **k)
            finally:
                if key == "metrics" and self.steps:  # after the update: the step just appended
                    self.steps[-1]["metrics"] = self.steps[-1].get("metrics", 0.0) + time.perf_counter() - t
                elif key is not None and (self._in_update or key in ("build_batch", "score_batch")):
                    self.add(key, time.perf_counter() - t)

        setattr(obj, name, timed)
        self._undo.append((obj, name, inner))

    def __enter__(self) -> "UpdateSplit":
        import torch.optim.optimizer as optimizer
        from rlaif.train.online import step, trainer

        def update(inner, cfg, step_index, batch, *a, **k):
            self._in_update, self.threads = True, self.threads | {torch.get_num_threads()}
            self.affinity |= set(os.sched_getaffinity(0))
            self.cur["tokens"] = float(batch.attention_mask.sum())  # the packed sequence's length
            self.cur["completion_tokens"] = float(batch.mask.sum())
            t = time.perf_counter()
            try:
                return inner(cfg, step_index, batch, *a, **k)
            finally:
                self._in_update = False
                self.add("update", time.perf_counter() - t)
                self.steps.append(self.cur)
                self.cur = {}

        self._patch(trainer, "update", None, update)
        self._patch(trainer, "build_batch", "build_batch")
        self._patch(trainer, "score_batch", "score_batch")
        self._patch(trainer, "step_metrics", "metrics")
        self._patch(step, "micro_loss", "forward")
        self._patch(step, "_micro_batch", "micro_batch")
        self._patch(step._Tally, "finish", "tally")
        self._patch(torch.Tensor, "backward", "backward")
        self._patch(torch.nn.utils, "clip_grad_norm_", "clip")
        starts: dict[str, float] = {}
        self._hooks = [optimizer.register_optimizer_step_pre_hook(lambda *a: starts.update(t=time.perf_counter())),
                       optimizer.register_optimizer_step_post_hook(
                           lambda *a: self.add("optimizer", time.perf_counter() - starts["t"]))]
        gc.callbacks.append(self._gc)
        return self

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t = time.perf_counter()
        elif self._in_update:
            self.add("gc", time.perf_counter() - self._gc_t)

    def __exit__(self, *exc) -> None:
        for obj, name, inner in reversed(self._undo):
            setattr(obj, name, inner)
        for hook in self._hooks:
            hook.remove()
        gc.callbacks.remove(self._gc)

    def summary(self) -> dict:
        """Means over the timed steps (the first is warm-up), seconds."""
        timed = self.steps[1:] or self.steps
        keys = ("update", *self.PARTS, "build_batch", "score_batch", "metrics", "tokens", "completion_tokens")
        res = {f"split_{k}": statistics.mean(s.get(k, 0.0) for s in timed) for k in keys}
        res["split_other"] = res["split_update"] - sum(res[f"split_{k}"] for k in self.PARTS if k != "gc")
        res["split_threads"], res["split_affinity"] = sorted(self.threads), sorted(self.affinity)
        return res


def rlaif_run(prompts: Path, model_dir: str, out: Path, args: argparse.Namespace, **options: object) -> dict:
    """rlaif grpo (vllm engine): the parts from its metrics.jsonl, the step from a timer around
    each call of its step function (so both totals include everything a step does); ``options``
    are more GRPOConfig fields (is_correction, async_generation). Also the mean mismatch metrics
    of the timed steps."""
    from rlaif.train.online import trainer
    from rlaif.train.online.config import GRPOConfig, RolloutOptions

    walls: list[float] = []
    inner = trainer.rollout_step

    def timed_step(*a, **k):
        t = time.perf_counter()
        res = inner(*a, **k)
        walls.append(time.perf_counter() - t)
        return res

    n = args.prompts * args.k
    cfg = GRPOConfig(prompts=str(prompts), model=model_dir, out=str(out),
                     reward=[f"python:{Path(__file__).resolve()}:length_reward"], engine=args.engine,
                     prompts_per_step=args.prompts, k=args.k, max_tokens=args.max_tokens, steps=args.steps,
                     lr=args.lr, beta=0.0, loss_type=args.loss_type, scale_rewards="group", temperature=1.0,
                     top_p=1.0, clip_eps=0.2, epochs_per_step=1, minibatch_size=n, micro_batch_size=n,
                     seed=args.seed, precision="fp32", save_steps=0, logging_steps=1, log_rollouts_every=0,
                     progress=False, overwrite=True,
                     rollout=RolloutOptions(gpu_memory_utilization=args.rollout_memory,
                                            cpu_reserved_cores=args.reserved_cores), **options)
    t0 = time.perf_counter()
    trainer.rollout_step = timed_step
    split = UpdateSplit() if args.split else None
    try:
        with split or nullcontext():
            trainer.train_online(cfg)
    finally:
        trainer.rollout_step = inner
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [_rlaif_step(r, w) for r, w in zip([r for r in rows if "time/generation" in r], walls)]
    load = wall - sum(walls)
    timed = [r for r in rows if "time/generation" in r][1:] or rows
    mismatch = {key: statistics.mean(r[key] for r in timed) for key in timed[0]
                if key.startswith("mismatch/") or key == "logprob_gap"}
    return {**summarise(steps), **mismatch, **(split.summary() if split else {}), "load_s": load, "wall_s": wall,
            "mode": f"{args.engine} engine, in-place weight sync"
                    + ("" if args.reserved_cores is None else f", {args.reserved_cores} reserved cores")}


MISMATCH_RUNS = {  # name: GRPOConfig options
    "on-policy": {},
    "one-step-off + TIS": {"is_correction": "token", "async_generation": True},
    "one-step-off + MIS": {"is_correction": "sequence", "async_generation": True},
}


def mismatch_table(prompts: Path, model_dir: str, tmp: Path, args: argparse.Namespace) -> None:
    """rlaif grpo on-policy against one-step-off generation, with and without the IS correction, in
    one process: seconds per step and the mismatch metrics (means over the timed steps)."""
    results = {}
    for name, options in MISMATCH_RUNS.items():
        torch.manual_seed(args.seed)
        results[name] = rlaif_run(prompts, model_dir, tmp / name.replace(" ", "_"), args, **options)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        gc.collect()
    base = results["on-policy"]["total"]
    print(f"\n{args.engine} engine, {args.prompts} prompts x k={args.k}, max {args.max_tokens} new tokens, "
          f"{args.steps} steps (first = warm-up), lr {args.lr}\n")
    print("| run | s/step | vs on-policy | generation (exposed) | logprob_gap | mismatch KL (k3) | clipped / masked "
          "| mean weight |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        cut, weight = r.get("mismatch/clipped", r.get("mismatch/masked")), r.get("mismatch/weight_mean")
        print(f"| {name} | {r['total']:.2f} | {base / r['total']:.2f}x | {r['generation']:.2f} | "
              f"{r['logprob_gap']:.2e} | {r['mismatch/kl_k3']:.2e} | {'-' if cut is None else f'{cut:.3f}'} | "
              f"{'-' if weight is None else f'{weight:.3f}'} |")


def _rlaif_step(r: dict, total: float) -> dict:
    gen, rew, sync, scoring = r["time/generation"], r["time/reward"], r["time/sync"], r["time/scoring"]
    return {"total": total, "generation": gen, "reward": rew, "sync": sync, "scoring": scoring,
            "update": total - gen - rew - sync - scoring,
            "tokens": r["rollout/tokens_per_s"] * gen, "reward_mean": r["reward/mean"]}


LOSSES = {"grpo (PPO-clip)": {}, "gspo": {"importance_sampling_level": "sequence"}, "cispo": {"loss_type": "cispo"}}


def losses_run(prompts: Path, model_dir: str, out: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Each of LOSSES trained from the same start on the same seed; per loss the reward mean of every
    step, the mean clip fraction and the seconds per step (first step apart)."""
    from rlaif.train.online.config import GRPOConfig, RolloutOptions
    from rlaif.train.online.trainer import train_online

    n = args.prompts * args.k
    results = {}
    for name, options in LOSSES.items():
        folder = out / name.split()[0]
        cfg = GRPOConfig(prompts=str(prompts), model=model_dir, out=str(folder),
                         reward=[f"python:{Path(__file__).resolve()}:{args.reward}_reward"], engine=args.engine,
                         prompts_per_step=args.prompts, k=args.k, max_tokens=args.max_tokens, steps=args.steps,
                         lr=args.lr, beta=0.0, temperature=1.0, epochs_per_step=2, minibatch_size=n // 2,
                         micro_batch_size=n, seed=args.seed, precision="fp32", save_steps=0, log_rollouts_every=0,
                         progress=False, overwrite=True,
                         rollout=RolloutOptions(gpu_memory_utilization=args.rollout_memory,
                                                cpu_reserved_cores=args.reserved_cores), **options)
        torch.manual_seed(args.seed)
        train_online(cfg)
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        results[name] = {"rewards": [r["reward/mean"] for r in rows],
                         "clip_fraction": statistics.mean(r["clip_fraction"] for r in rows),
                         "s_per_step": statistics.mean(r["time/train"] + r["time/generation"]
                                                       for r in rows[1:] or rows)}
        gc.collect()
    return results


def print_losses(results: dict[str, dict], args: argparse.Namespace) -> None:
    print(f"\n{args.model}, {args.reward} reward, engine {args.engine}, {args.prompts} prompts x k={args.k}, "
          f"max {args.max_tokens} tokens, "
          f"{args.steps} steps, lr {args.lr}, seed {args.seed}, 2 epochs x 2 minibatches per batch\n")
    print("| loss | reward per step | mean first 3 | mean last 3 | clip fraction | s/step |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in results.items():
        rewards = r["rewards"]
        print(f"| {name} | {' '.join(f'{x:.2f}' for x in rewards)} | {statistics.mean(rewards[:3]):.3f} | "
              f"{statistics.mean(rewards[-3:]):.3f} | {r['clip_fraction']:.3f} | {r['s_per_step']:.1f} |")


def print_table(runs: list[tuple[str, dict]], args: argparse.Namespace) -> None:
    """One row per run (in the order they ran), then the ratio of the median seconds per step."""
    import transformers
    import trl

    print(f"\nSmolLM2-135M-Instruct, CPU fp32 ({torch.get_num_threads()} torch threads), {args.prompts} prompts x "
          f"k={args.k}, max {args.max_tokens} new tokens, {args.steps} steps (first = warm-up), lr {args.lr}, "
          f"beta 0, loss_type {args.loss_type}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, trl {trl.__version__}\n")
    print("| run | rollouts | s/step | generation | reward | scoring | update | sync | gen tokens/s | steps/min "
          "| warm-up step s | reward first -> last | load avg after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for who, r in runs:
        print(f"| {who} | {r['mode']} | {r['total']:.2f} | {r['generation']:.2f} | {r['reward']:.3f} | "
              f"{r['scoring']:.2f} | {r['update']:.2f} | {r['sync']:.2f} | {r['tokens_per_s_gen']:.0f} | "
              f"{60 / r['total']:.1f} | {r['warmup_total']:.1f} | {r['reward_first']:.2f} -> {r['reward_last']:.2f} | "
              f"{' '.join(map(str, r['loadavg']))} |")
    if args.split:
        parts = [k for k in runs[-1][1] if k.startswith("split_") and k not in ("split_threads", "split_affinity")]
        print("\nrlaif time/update split (s, means of the timed steps): "
              "| run | " + " | ".join(k[6:] for k in parts) + " | torch threads | cores |")
        for who, r in runs:
            if who == "rlaif":
                print("| rlaif | " + " | ".join(f"{r[k]:.3f}" for k in parts)
                      + f" | {r['split_threads']} | {r['split_affinity']} |")
    med = {who: statistics.median(r["total"] for w, r in runs if w == who) for who in {w for w, _ in runs}}
    med_update = {who: statistics.median(r["update"] for w, r in runs if w == who) for who in med}
    if len(med) == 2:
        print(f"\nmedian s/step: rlaif {med['rlaif']:.2f}, TRL {med['trl']:.2f}; steps/min ratio rlaif / TRL "
              f"(ratio of medians over {args.rounds} rounds): {med['trl'] / med['rlaif']:.2f}x (goal >= 2x); "
              f"update time rlaif / TRL: {med_update['rlaif'] / med_update['trl']:.2f}")


def _run_one(who: str, rows: list[dict], model_dir: str, tmp: Path, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    res = (trl_run(rows, model_dir, tmp / "trl", args) if who == "trl"
           else rlaif_run(tmp / "prompts.jsonl", model_dir, tmp / "rlaif", args))
    res["loadavg"] = [round(x, 1) for x in os.getloadavg()]
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (the first N demo prompts)")
    parser.add_argument("--k", type=int, default=4, help="completions per prompt (num_generations)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run, the first is warm-up")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--loss-type", default="dapo", choices=["grpo", "dapo", "dr_grpo"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["rlaif", "trl"], default=None)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run TRL then rlaif this many times, alternating (A B A B), and compare the medians")
    parser.add_argument("--isolate", action="store_true",
                        help="run each trainer in its own fresh process (as users run them), not one after the other "
                             "in this one")
    parser.add_argument("--split", action="store_true",
                        help="time the functions inside rlaif's update (UpdateSplit) and print the split")
    parser.add_argument("--trl-vllm", action="store_true", help="TRL with use_vllm=True, vllm_mode=colocate")
    parser.add_argument("--model", default="smollm2-135m", help="alias or local folder")
    parser.add_argument("--losses", action="store_true", help="compare grpo / gspo / cispo reward curves instead")
    parser.add_argument("--mismatch", action="store_true",
                        help="rlaif only: on-policy vs one-step-off generation, with and without IS correction")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"], help="--losses / --mismatch: rollout engine")
    parser.add_argument("--reward", default="length", choices=["length", "vowels"],
                        help="--losses: length_reward or vowels_reward (for a tiny random --model folder)")
    parser.add_argument("--rollout-memory", type=float, default=0.1,
                        help="rlaif's vLLM KV-cache share of RAM (CPU: of one NUMA node; default 0.15 may not fit "
                             "next to the TRL run on a small machine)")
    parser.add_argument("--reserved-cores", type=int, default=None,
                        help="rlaif's rollout.cpu_reserved_cores (vLLM on CPU; default: vLLM's, 1 core)")
    args = parser.parse_args()

    from rlaif.models import resolve_model

    model_dir = resolve_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-rl-"))
    try:
        rows = write_prompts(tmp / "prompts.jsonl", args.prompts)
        if args.losses or args.mismatch:
            if args.losses:
                print_losses(losses_run(tmp / "prompts.jsonl", model_dir, tmp / "losses", args), args)
            else:
                mismatch_table(tmp / "prompts.jsonl", model_dir, tmp, args)
            return
        runs: list[tuple[str, dict]] = []
        for round_ in range(args.rounds):
            for who in ("trl", "rlaif") if args.only is None else (args.only,):
                res = (in_fresh_process(_run_one, who, rows, model_dir, tmp, args) if args.isolate
                       else _run_one(who, rows, model_dir, tmp, args))
                runs.append((who, res))
                gc.collect()  # the TRL trainer's model and optimizer go before vLLM reserves its memory
                print(f"{who} (round {round_ + 1}): {json.dumps(res)}", flush=True)
        print_table(runs, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
