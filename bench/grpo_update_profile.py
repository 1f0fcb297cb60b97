"""One GRPO update's forward + backward: rlaif's loss path against TRL 1.16's, interleaved in one process.

The embedded SmolLM2-135M-Instruct (fp32, CPU), the first 4 demo prompts (chat template) x k=4, fixed
random completions of 20-32 tokens (seeded), one micro-batch of 16 as `update` runs it
(micro_batch_size = minibatch_size = 16, loss_type dapo, clip 0.2, beta 0, old-policy pass skipped so
the update's forward also gives the entropy). Variants, timed round-robin, medians of --repeats:

- ``rlaif``: `step.micro_loss`, as `update` calls it (rows packed, LM head at completion positions only);
- ``padded``: the same with `batch.token_logprobs`'s padded forward (rlaif before the lean path);
- ``varlen``: ``rlaif`` with attention run per packed row (`rlaif.train.packing.use_varlen_attention`,
  what the online trainers set) instead of transformers' block-diagonal mask over the packed sequence,
  so a group's k rows run their prompt once (`packing.pack_sharing_prefixes`);
- ``unshared``: ``varlen`` with every row packed whole (the prompt run k times, as before sharing);
- ``trl``: `GRPOTrainer._get_per_token_logps_and_entropies` (its fused chunked LM head, `add_fused_lm_head`)
  on TRL's batch layout (left-padded prompts, right-padded completions) + its dapo loss.

``--optimizer`` then times clip_grad_norm_ and AdamW's step (for-loop, foreach, fused); ``--engine`` starts
rlaif's vLLM rollout engine in the process, prints the cores its processes use in the 2 s after a generate
and after a sync, and times the variants again beside it; ``--profile`` prints
torch.profiler tables.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/grpo_update_profile.py [--repeats 5] [--only rlaif padded trl]
        [--optimizer] [--engine] [--profile]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from rlaif.train.online import batch as rollout_batch
from rlaif.train.online import maths, step
from rlaif.train.online.config import GRPOConfig

ROOT = Path(__file__).resolve().parent.parent


def rollouts(tok: Any, prompts: int, k: int, max_tokens: int, seed: int) -> list[SimpleNamespace]:
    """Demo prompts through the chat template, k random completions each (ids of ordinary tokens)."""
    rows = [json.loads(x) for x in (ROOT / "prompts" / "demo.jsonl").read_text().splitlines() if x.strip()][:prompts]
    rng = random.Random(seed)
    out = []
    for r in rows:
        p = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                    tokenize=True)
        p = list(p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p)
        for _ in range(k):
            c = [rng.randrange(1000, 40000) for _ in range(rng.randint(max_tokens - 12, max_tokens))]
            out.append(SimpleNamespace(prompt_ids=p, completion_ids=c, engine_logprobs=[0.0] * len(c)))
    return out


def trl_inputs(rs: list[SimpleNamespace], pad_id: int) -> dict[str, torch.Tensor]:
    """TRL's layout: prompts left-padded, completions right-padded."""
    pw, cw = max(len(r.prompt_ids) for r in rs), max(len(r.completion_ids) for r in rs)
    pid, pm = torch.full((len(rs), pw), pad_id), torch.zeros((len(rs), pw), dtype=torch.long)
    cid, cm = torch.full((len(rs), cw), pad_id), torch.zeros((len(rs), cw), dtype=torch.long)
    for i, r in enumerate(rs):
        pid[i, pw - len(r.prompt_ids):], pm[i, pw - len(r.prompt_ids):] = torch.tensor(r.prompt_ids), 1
        cid[i, :len(r.completion_ids)], cm[i, :len(r.completion_ids)] = torch.tensor(r.completion_ids), 1
    return {"prompt_ids": pid, "prompt_mask": pm, "completion_ids": cid, "completion_mask": cm}


def trl_loss(model: Any, inp: dict[str, torch.Tensor], adv: torch.Tensor, eps: float = 0.2) -> torch.Tensor:
    """TRL 1.16 `_compute_loss` for loss_type dapo, beta 0, num_iterations 1 (old = current, detached)."""
    from trl import GRPOTrainer

    shim = SimpleNamespace(accelerator=SimpleNamespace(autocast=nullcontext))
    input_ids = torch.cat([inp["prompt_ids"], inp["completion_ids"]], 1)
    attention_mask = torch.cat([inp["prompt_mask"], inp["completion_mask"]], 1)
    logps, _ent, _ = GRPOTrainer._get_per_token_logps_and_entropies.__wrapped__(  # past its timing decorator
        shim, model, input_ids, attention_mask, inp["completion_ids"].size(1), compute_entropy=True)
    mask = inp["completion_mask"]
    coef_1 = torch.exp(logps - logps.detach())
    a = adv.unsqueeze(1)
    per_token = -torch.min(coef_1 * a, torch.clamp(coef_1, 1 - eps, 1 + eps) * a)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def rlaif_loss(model: Any, batch: rollout_batch.RolloutBatch, adv: torch.Tensor) -> torch.Tensor:
    """`step.update`'s micro-batch work for one micro-batch of the whole batch (old-policy pass skipped)."""
    cfg = GRPOConfig(temperature=1.0, clip_eps=0.2, max_tokens=32, loss_type="dapo")
    rows = batch.rows(list(range(batch.mask.shape[0])))
    norm = max(float(rows.mask.sum()), 1.0)
    micro = rollout_batch.MicroBatch(rows, adv, None, None, None, None, norm, norm)
    loss, _stats, _logp, _ent = step.micro_loss(cfg, micro, model, None)
    return loss


def padded_loss(model: Any, batch: rollout_batch.RolloutBatch, adv: torch.Tensor) -> torch.Tensor:
    """`rlaif_loss` through the padded forward (token_logprobs' path for models it cannot split)."""
    lean = rollout_batch._decoder_and_head
    rollout_batch._decoder_and_head = lambda model: None
    try:
        return rlaif_loss(model, batch, adv)
    finally:
        rollout_batch._decoder_and_head = lean


def timed(model: Any, fn: Callable[[], torch.Tensor]) -> float:
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    fn().backward()
    return time.perf_counter() - t


def rounds(model: Any, variant: Callable[[str], Callable[[], torch.Tensor]], names: list[str], repeats: int
           ) -> dict[str, float]:
    """One warm-up call of each, then ``repeats`` round-robin rounds; prints and returns the medians."""
    import os

    print(f"torch threads {torch.get_num_threads()}, affinity {sorted(os.sched_getaffinity(0))}")
    for name in names:
        timed(model, variant(name))
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            times[name].append(timed(model, variant(name)))
    med = {n: statistics.median(v) for n, v in times.items()}
    for n, v in times.items():
        print(f"{n:13s} median {med[n]:.3f} s  runs {' '.join(f'{x:.3f}' for x in v)}")
    if "trl" in med:
        for n in med:
            if n != "trl":
                print(f"{n} / trl: {med[n] / med['trl']:.3f}")
    return med


def start_engine(model_dir: str, tok: Any, model: Any, rs: list[SimpleNamespace]) -> Any:
    """rlaif's vLLM rollout engine as bench/rl.py builds it; one generate of the 4 prompts x 4, one sync."""
    from rlaif.backends.base import BackendConfig
    from rlaif.train.online.rollouts import RolloutEngine

    options = BackendConfig(engine="vllm", model=model_dir, gpu_memory_utilization=0.1, enable_sample_logprobs=True)
    engine = RolloutEngine("vllm", model_dir, tok, backend_options=options, max_prompt_length=512)
    prompts = [r.prompt_ids for r in rs[::4]]
    t = time.perf_counter()
    engine.generate(prompts, 4, temperature=1.0, top_p=1.0, max_tokens=32, seed=0)
    print(f"engine: generate {time.perf_counter() - t:.2f} s, sync {engine.sync(model):.2f} s")
    return engine


def engine_idle_cpu(engine: Any, rs: list[SimpleNamespace], model: Any, windows: int = 4) -> None:
    """Cores the engine's processes (EngineCore, worker) use in 0.5 s windows after a generate and after
    a sync while this process idles: what they would take from an update running then."""
    import psutil

    def children_cpu() -> float:
        total = 0.0
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def watch(label: str) -> None:
        cpu, t, cores = children_cpu(), time.perf_counter(), []
        for _ in range(windows):
            time.sleep(0.5)
            cpu2, t2 = children_cpu(), time.perf_counter()
            cores.append(round((cpu2 - cpu) / (t2 - t), 2))
            cpu, t = cpu2, t2
        print(f"engine cores busy after {label}, per 0.5 s: {cores}")

    engine.generate([r.prompt_ids for r in rs[::4]], 4, temperature=1.0, top_p=1.0, max_tokens=32, seed=1)
    watch("generate")
    engine.sync(model)
    watch("sync")


def optimizer_times(model: Any, loss_fn: Callable[[], torch.Tensor], repeats: int) -> None:
    """clip_grad_norm_ and AdamW.step on one set of gradients, the three AdamW implementations interleaved
    (lr 0: the weights do not move, so every repeat steps the same model)."""
    params = [p for p in model.parameters() if p.requires_grad]
    timed(model, loss_fn)
    kinds = {"for-loop (torch default on CPU)": {"foreach": False}, "foreach": {"foreach": True},
             "fused": {"fused": True}}
    opts = {k: torch.optim.AdamW(params, lr=0.0, **kw) for k, kw in kinds.items()}
    times: dict[str, list[float]] = {k: [] for k in ["clip_grad_norm_", *kinds]}
    for _ in range(repeats + 1):
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1e9)
        times["clip_grad_norm_"].append(time.perf_counter() - t)
        for k, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            times[k].append(time.perf_counter() - t)
    for k, v in times.items():  # the first round builds the optimizer states: left out
        print(f"{k:32s} median {statistics.median(v[1:]):.3f} s  runs {' '.join(f'{x:.3f}' for x in v[1:])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of one call of each")
    parser.add_argument("--only", nargs="*", default=["rlaif", "varlen", "padded", "trl"])
    parser.add_argument("--engine", action="store_true",
                        help="then start rlaif's vLLM rollout engine in this process (as bench/rl.py: 10%% memory), "
                             "sample and sync once, and time the variants again next to it")
    parser.add_argument("--optimizer", action="store_true",
                        help="also time the rest of an update: grad-norm clip and AdamW's step (for-loop, foreach, "
                             "fused: TRL's default, transformers' adamw_torch_fused)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from rlaif.models import resolve_model

    model_dir = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))  # off unless fused_lm_head=True
    rs = rollouts(tok, 4, 4, 32, seed=0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch, inp = rollout_batch.build_batch(rs, pad), trl_inputs(rs, pad)
    torch.manual_seed(0)
    adv = maths.grpo_advantages(torch.randn(16), 4)

    from rlaif.train.packing import use_varlen_attention

    default_attention = model.config._attn_implementation
    use_varlen_attention(model)  # registers the implementation; each call below picks one
    model.config._attn_implementation = default_attention

    def with_attention(name: str, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            model.config._attn_implementation = name
            try:
                return fn()
            finally:
                model.config._attn_implementation = default_attention
        return call

    def variant(name: str) -> Callable[[], torch.Tensor]:
        if name == "varlen":
            from rlaif.train.packing import VARLEN

            return with_attention(VARLEN, lambda: rlaif_loss(model, batch, adv))
        if name == "unshared":
            from rlaif.train import packing

            def each_row_whole() -> torch.Tensor:
                kept, packing.MIN_SHARED = packing.MIN_SHARED, 1 << 30
                try:
                    return rlaif_loss(model, batch, adv)
                finally:
                    packing.MIN_SHARED = kept

            return with_attention(packing.VARLEN, each_row_whole)
        if name == "trl":
            return lambda: trl_loss(model, inp, adv)
        if name == "padded":
            return lambda: padded_loss(model, batch, adv)
        return lambda: rlaif_loss(model, batch, adv)

    print(f"batch: rlaif input {tuple(batch.input_ids.shape)} completions {tuple(batch.mask.shape)}, "
          f"{int(batch.mask.sum())} tokens; TRL input ({inp['prompt_ids'].shape[0]}, "
          f"{inp['prompt_ids'].shape[1] + inp['completion_ids'].shape[1]}); torch threads {torch.get_num_threads()}")
    med = rounds(model, variant, args.only, args.repeats)
    if args.engine:
        engine = start_engine(model_dir, tok, model, rs)
        try:
            engine_idle_cpu(engine, rs, model)
            print("next to a live vLLM engine (after one generate and one sync):")
            with_engine = rounds(model, variant, args.only, args.repeats)
        finally:
            engine.close()
        for n in med:
            print(f"{n}: with engine / without: {with_engine[n] / med[n]:.3f}")
    if args.optimizer:
        optimizer_times(model, variant("rlaif"), args.repeats)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in args.only:
            fn = variant(name)
            model.zero_grad(set_to_none=True)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn().backward()
            print(f"\n== {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))


if __name__ == "__main__":
    main()
