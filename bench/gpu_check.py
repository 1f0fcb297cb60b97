"""GPU check: RM, DPO and GRPO steps in bf16 on SmolLM2-360M / 1.7B-shaped models, random weights.

Needs only torch and transformers (no vLLM, no network, no weights: models are built from a
LlamaConfig in the SmolLM2 shapes, batches are random token ids). Self-contained: it imports
nothing from rlaif. Precision as rlaif's trainers run on a GPU: fp32 master weights, AdamW,
bf16 autocast. Each task runs one warm-up step and then timed steps:

- rm:   a pairwise (Bradley-Terry) step of a sequence-classification head on chosen + rejected;
- dpo:  a sigmoid-DPO step (reference log-probs precomputed, not timed), LM head only on the
        response positions;
- grpo: hf rollouts (`model.generate`, k samples per prompt) + a synthetic reward + group-normalised
        advantages + a PPO-clip step on prompt+completion (beta 0, one update per batch).

tokens/s counts the tokens a step trains on (all real: no padding). MFU = model FLOPs / s / peak, with
the PaLM appendix count (Chowdhery et al. 2022): a trained token costs 6 N_body + 12 L d T (N_body: the
matmul parameters of the layers, embedding table excluded; L layers, d hidden size, T sequence
length), plus 6 V d for each position the LM head runs on (tied table; DPO/GRPO run it only on the
response positions, the RM not at all). A generated token costs 2 (N_body + V d) + 4 L d C (C: its
mean context length; the prompt prefill is not counted). Peak dense bf16 FLOP/s by GPU name from
PEAK_BF16 (printed).

    python bench/gpu_check.py                 # both shapes, about 3-5 minutes on one H100
    python bench/gpu_check.py --quick         # 360M only, fewer steps
    python bench/gpu_check.py --cpu --tiny    # smoke test on CPU with a tiny config
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES = {  # SmolLM2 shapes (HuggingFaceTB/SmolLM2-360M and -1.7B config.json)
    "360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                 intermediate_size=2560, vocab_size=49152),
    "1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=8192, vocab_size=49152),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1024),
}
# dense bf16 FLOP/s (no sparsity); the first name contained in the device name wins
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]
PAD, EOS = 0, 2


@dataclass
class Sizes:
    batch: int        # RM/DPO: pairs per step
    seq: int          # RM/DPO: tokens per sequence (prompt half, response half)
    prompts: int      # GRPO: prompts per step
    k: int            # GRPO: samples per prompt
    prompt_len: int   # GRPO
    new_tokens: int   # GRPO: generated tokens per sample
    steps: int        # timed steps per task (plus one warm-up)


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu (no peak table)", None
    name = torch.cuda.get_device_name(device)
    return next(((f"{name} -> {k} {v / 1e12:.0f} TFLOP/s", v) for k, v in PEAK_BF16 if k in name),
                (f"{name} (not in the table)", None))


def build(shape: str, kind: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=8192,
                      pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS, num_labels=1)
    torch.manual_seed(0)
    with torch.device(device):
        model = (AutoModelForSequenceClassification if kind == "rm" else AutoModelForCausalLM).from_config(cfg)
    model.float()  # fp32 master weights (older transformers spell the dtype argument differently)
    model.config.use_cache = False
    return model.train()


def flops_parts(model: torch.nn.Module) -> tuple[int, int, int]:
    """(N_body, V*d, L*d): layer matmul parameters (embedding table excluded; tied, it is counted
    once, as the LM head, through V*d), LM-head parameters, and layers x hidden size."""
    c = model.config
    table = c.vocab_size * c.hidden_size
    return sum(p.numel() for p in model.parameters()) - table, table, c.num_hidden_layers * c.hidden_size


def train_flops(model: torch.nn.Module, rows: int, seq: int, head_positions: int) -> float:
    """PaLM training FLOPs of one step on ``rows`` sequences of ``seq`` tokens, the LM head on
    ``head_positions`` positions in all."""
    body, table, ld = flops_parts(model)
    return rows * seq * (6 * body + 12 * ld * seq) + 6 * table * head_positions


def tokens(rows: int, length: int, vocab: int, device: torch.device, seed: int) -> torch.Tensor:
    """Random ids in [3, vocab): never PAD or EOS, so no padding and every row is full length."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (rows, length), generator=g).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def response_logps(model, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Summed log-probs of ids[:, start:] (the LM head runs only on the positions predicting them)."""
    hidden = model.model(input_ids=ids).last_hidden_state[:, start - 1:-1]
    logits = model.lm_head(hidden).float()
    return torch.gather(logits.log_softmax(-1), 2, ids[:, start:, None]).squeeze(-1).sum(-1)


def timed_steps(step, n: int, device: torch.device) -> list[float]:
    """Runs step() once untimed (warm-up) and n times timed; seconds of each timed call."""
    step()
    out = []
    for _ in range(n):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def run_rm(shape: str, sz: Sizes, device: torch.device, autocast) -> dict:
    model = build(shape, "rm", device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    v = model.config.vocab_size
    chosen, rejected = tokens(sz.batch, sz.seq, v, device, 1), tokens(sz.batch, sz.seq, v, device, 2)

    def step():
        with autocast():
            scores = model(input_ids=torch.cat([chosen, rejected])).logits.float().squeeze(-1)
        loss = -F.logsigmoid(scores[:sz.batch] - scores[sz.batch:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    secs = timed_steps(step, sz.steps, device)
    return {"tokens_per_step": 2 * sz.batch * sz.seq, "seconds": secs, "params": flops_parts(model)[0],
            "train_flops": train_flops(model, 2 * sz.batch, sz.seq, 0)}


def run_dpo(shape: str, sz: Sizes, device: torch.device, autocast) -> dict:
    model = build(shape, "dpo", device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    v, half = model.config.vocab_size, sz.seq // 2
    ids = torch.cat([tokens(sz.batch, sz.seq, v, device, 3), tokens(sz.batch, sz.seq, v, device, 4)])
    with torch.no_grad(), autocast():  # reference log-probs precomputed, as both trainers do
        ref = response_logps(model, ids, half)

    def step():
        with autocast():
            logps = response_logps(model, ids, half)
        margin = (logps - ref)[:sz.batch] - (logps - ref)[sz.batch:]
        loss = -F.logsigmoid(0.1 * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    secs = timed_steps(step, sz.steps, device)
    body, table, _ = flops_parts(model)
    return {"tokens_per_step": 2 * sz.batch * sz.seq, "seconds": secs, "params": body + table,
            "train_flops": train_flops(model, 2 * sz.batch, sz.seq, 2 * sz.batch * (sz.seq - half))}


def run_grpo(shape: str, sz: Sizes, device: torch.device, autocast) -> dict:
    """hf rollouts + one PPO-clip update per batch (old log-probs = current: ratio 1, beta 0)."""
    model = build(shape, "grpo", device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    v, n = model.config.vocab_size, sz.prompts * sz.k
    prompts = tokens(sz.prompts, sz.prompt_len, v, device, 5).repeat_interleave(sz.k, 0)
    gen_s: list[float] = []

    def step():
        sync(device)
        t = time.perf_counter()
        model.eval()
        with torch.no_grad(), autocast():
            seqs = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                  temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=sz.new_tokens,
                                  min_new_tokens=sz.new_tokens, use_cache=True, pad_token_id=PAD,
                                  eos_token_id=EOS)
        sync(device)
        gen_s.append(time.perf_counter() - t)
        model.train()
        assert seqs.shape == (n, sz.prompt_len + sz.new_tokens), seqs.shape  # no padding in the batch
        completion = seqs[:, sz.prompt_len:]
        reward = (completion % 2 == 0).float().mean(-1)  # synthetic: share of even token ids
        grouped = reward.view(sz.prompts, sz.k)
        adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
        with autocast():
            hidden = model.model(input_ids=seqs).last_hidden_state[:, sz.prompt_len - 1:-1]
            logits = model.lm_head(hidden).float()
        logp = torch.gather(logits.log_softmax(-1), 2, completion[..., None]).squeeze(-1)
        ratio = torch.exp(logp - logp.detach())
        per_token = -torch.min(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])
        loss = per_token.sum() / per_token.numel()  # dapo: sum over the batch's tokens / their number
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    secs = timed_steps(step, sz.steps, device)
    gen = gen_s[1:]
    body, table, ld = flops_parts(model)
    mean_ctx = sz.prompt_len + sz.new_tokens / 2
    return {"tokens_per_step": n * (sz.prompt_len + sz.new_tokens), "seconds": secs, "params": body + table,
            "train_flops": train_flops(model, n, sz.prompt_len + sz.new_tokens, n * sz.new_tokens),
            "gen_seconds": gen, "gen_tokens_per_step": n * sz.new_tokens,
            "gen_flops": n * sz.new_tokens * (2 * (body + table) + 4 * ld * mean_ctx)}


def report(task: str, shape: str, res: dict, peak: float | None) -> dict:
    """tokens/s and MFU of a task: the training part for rm/dpo, and for grpo also the
    generation part and the whole step (FLOP counts: module docstring)."""
    n = res["params"]
    step_s = sum(res["seconds"]) / len(res["seconds"])
    row = {"shape": shape, "task": task, "params_m": n / 1e6, "step_s": step_s}
    if task == "grpo":
        gen_s = sum(res["gen_seconds"]) / len(res["gen_seconds"])
        train_s = step_s - gen_s
        row.update(gen_s=gen_s, train_s=train_s, gen_tokens_per_s=res["gen_tokens_per_step"] / gen_s,
                   gen_mfu=res["gen_flops"] / gen_s / peak if peak else None)
    else:
        train_s = step_s
    row["train_tokens_per_s"] = res["tokens_per_step"] / train_s
    row["train_tflops"] = res["train_flops"] / train_s / 1e12
    row["train_mfu"] = res["train_flops"] / train_s / peak if peak else None
    if task == "grpo":
        row["step_mfu"] = (res["train_flops"] + res["gen_flops"]) / step_s / peak if peak else None
    return row


def sizes(args: argparse.Namespace, shape: str) -> Sizes:
    if args.tiny:
        return Sizes(batch=2, seq=32, prompts=2, k=2, prompt_len=8, new_tokens=8, steps=2)
    big = shape == "1.7b"
    return Sizes(batch=4 if big else 8, seq=512, prompts=8, k=4, prompt_len=64,
                 new_tokens=64 if args.quick else 128, steps=2 if args.quick else 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="360M only, 2 timed steps, 64 new tokens")
    parser.add_argument("--cpu", action="store_true", help="run on CPU (smoke test)")
    parser.add_argument("--tiny", action="store_true", help="a tiny 2-layer config instead of the SmolLM2 shapes")
    parser.add_argument("--shapes", default=None, help="comma-separated: 360m,1.7b (default both; --quick: 360m)")
    parser.add_argument("--tasks", default="rm,dpo,grpo")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("bench/gpu_check.py: no CUDA GPU (use --cpu --tiny for a smoke test)")
    device = torch.device("cpu" if args.cpu else "cuda")
    shapes = ["tiny"] if args.tiny else (args.shapes or ("360m" if args.quick else "360m,1.7b")).split(",")
    label, peak = peak_flops(device)
    import transformers

    print(f"device: {label}; torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    runners = {"rm": run_rm, "dpo": run_dpo, "grpo": run_grpo}
    rows, t_all = [], time.perf_counter()
    for shape in shapes:
        for task in args.tasks.split(","):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            row = report(task, shape, runners[task](shape, sizes(args, shape), device, autocast), peak)
            row["wall_s"] = time.perf_counter() - t
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, label, use_bf16, time.perf_counter() - t_all)


def print_table(rows: list[dict], label: str, bf16: bool, wall: float) -> None:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    print(f"\n{label}; {'bf16 autocast' if bf16 else 'fp32'}; total {wall:.0f} s\n")
    print("| shape | task | params | step s | train tokens/s | train MFU | gen tokens/s | gen MFU | step MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gen = (f"{r['gen_tokens_per_s']:.0f} | {pct(r['gen_mfu'])} | {pct(r['step_mfu'])}"
               if r["task"] == "grpo" else "- | - | -")
        print(f"| {r['shape']} | {r['task']} | {r['params_m']:.2f}M | {r['step_s']:.2f} | "
              f"{r['train_tokens_per_s']:.0f} | {pct(r['train_mfu'])} | {gen} |")


if __name__ == "__main__":
    main()
