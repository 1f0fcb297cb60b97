"""One shape of the GPU session: rlaif's own RM, DPO and GRPO (hf rollouts) trainers on a random-weight
SmolLM2-shaped model, then bench/gpu_check.py's plain loop on the same shape, rows and batch, in the
same process; every result is appended to DIR/session.json as soon as it is known.

    python bench/gpu_session.py --shape 360m --tokenizer TOKDIR --out DIR [--cpu]
    python bench/gpu_session.py --table --out DIR      # DIR/session.md from DIR/session.json

Rows are 512-1024 tokens: RM/DPO pairs of a ~30-token prompt and responses of 480-960 tokens
(max_length 1024); GRPO prompts of ~400 tokens with 128 sampled tokens (decoding with hf generate
is the slow part, so the row length comes from the prompt). The plain loop gets rows of the
rlaif run's mean length. tokens/s counts the tokens a step trains on; MFU uses gpu_check's FLOP
count for both (PaLM appendix: 6 N_body + 12 L d T per token, plus 6 V d per LM-head position:
DPO and GRPO count it only on the response positions, the RM not at all); peak GiB is
torch.cuda.max_memory_allocated over the task. rlaif's first optimizer step (rm, dpo) and first
rollout step (grpo) are warm-up and not counted, like gpu_check's warm-up step.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# torch, gpu_check (the plain loop, its FLOP count and peak table) and train_gpu (rlaif's RM/DPO
# trainers, timed) are imported by `_heavy`, so `--table` starts at once
torch: Any = None
gpu_check: Any = None
train_gpu: Any = None


def _heavy() -> None:
    global torch, gpu_check, train_gpu
    import gpu_check as check_module
    import torch as torch_module
    import train_gpu as train_module

    torch, gpu_check, train_gpu = torch_module, check_module, train_module

SIZES = {  # per shape: RM/DPO pairs per step, pairs in all, response words; GRPO prompts per step, k, steps,
    # sampled tokens, prompt words (the rehearsal's tiny shape has short rows: CPU)
    "tiny": dict(batch=2, pairs=4, max_length=256, words=(100, 200), prompts=2, k=2, grpo_steps=2, new_tokens=8,
                 prompt_words=20),
    "360m": dict(batch=8, pairs=48, max_length=1024, words=(480, 960), prompts=4, k=8, grpo_steps=3,
                 new_tokens=128, prompt_words=380),
    "1.7b": dict(batch=4, pairs=24, max_length=1024, words=(480, 960), prompts=4, k=8, grpo_steps=3,
                 new_tokens=128, prompt_words=380),
}
REWARD = '''def distinct(prompts, completions, **columns):
    """Share of distinct characters in a completion (varies between a random model's samples)."""
    return [len(set(c)) / max(len(c), 1) for c in completions]
'''


def long_pairs(out: Path, pairs: int, words: tuple[int, int], seed: int = 0) -> None:
    """Preference pairs with responses of ``words`` one-token words (480-960: rows of 512-1024 tokens)."""
    rng = random.Random(seed)
    vocab = [" the", " of", " and", " to", " in", " is", " that", " for"]
    rows = []
    for i in range(pairs):
        chosen = "".join(rng.choice(vocab) for _ in range(rng.randint(*words)))
        rejected = "".join(rng.choice(vocab) for _ in range(rng.randint(*words)))
        rows.append({"prompt": f"Question {i}: write a long answer about the number {i}.",
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    (out / "preferences").mkdir(parents=True, exist_ok=True)
    (out / "preferences" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def long_prompts(path: Path, n: int, words: int) -> None:
    rng = random.Random(1)
    vocab = [" river", " stone", " light", " paper", " green", " north", " music", " winter"]
    rows = [{"id": f"p{i}", "prompt": f"Continue this text {i}:" + "".join(rng.choice(vocab) for _ in range(words))}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _peak_gib(cuda: bool) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def _reset(cuda: bool) -> None:
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _flops_of(model_dir: Path, kind: str) -> tuple[int, int, int]:
    """gpu_check.flops_parts of the built model (meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir, num_labels=1)
    with torch.device("meta"):
        model = (AutoModelForSequenceClassification if kind == "rm" else AutoModelForCausalLM).from_config(config)
    return gpu_check.flops_parts(model)


def rlaif_offline(kind: str, shape: str, model_dir: Path, work: Path, cuda: bool, peak: float | None) -> dict:
    sz = SIZES[shape]
    args = SimpleNamespace(batch_size=sz["batch"], max_length=sz["max_length"], gradient_checkpointing=False,
                           cpu=not cuda)
    _reset(cuda)
    res = train_gpu.run(kind, work / "data", str(model_dir), work / f"{kind}-out", args)
    body, table, ld = _flops_of(model_dir, kind)
    seq = res["mean_seq_tokens"]
    prompt = 32  # chat-templated prompt tokens of long_pairs (about): the LM head runs on the rest
    per_token = 6 * body + 12 * ld * seq + (6 * table * (seq - prompt) / seq if kind == "dpo" else 0)
    tflops = res["tokens_per_s"] * per_token / 1e12
    return {"shape": shape, "task": kind, "impl": "rlaif", "tokens_per_s": res["tokens_per_s"],
            "mean_row_tokens": seq, "tflops": tflops, "mfu": tflops * 1e12 / peak if peak else None,
            "peak_gib": _peak_gib(cuda), "steps": res["steps"], "padding": res["padding"]}


def rlaif_grpo(shape: str, model_dir: Path, work: Path, cuda: bool, peak: float | None) -> dict:
    from transformers import AutoTokenizer

    from rlaif.train.online.config import GRPOConfig
    from rlaif.train.online.trainer import train_online

    sz = SIZES[shape]
    prompts = work / "prompts.jsonl"
    long_prompts(prompts, sz["prompts"] * sz["grpo_steps"], sz["prompt_words"])
    (work / "reward.py").write_text(REWARD)
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [tok.apply_chat_template([{"role": "user", "content": json.loads(x)["prompt"]}],
                                     add_generation_prompt=True, tokenize=False)
             for x in prompts.read_text().splitlines()]
    prompt_len = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) / len(texts)
    cfg = GRPOConfig(prompts=str(prompts), model=str(model_dir), out=str(work / "grpo-out"), overwrite=True,
                     reward=[f"python:{work / 'reward.py'}:distinct"], engine="hf", steps=sz["grpo_steps"],
                     k=sz["k"], prompts_per_step=sz["prompts"], max_tokens=sz["new_tokens"], lr=1e-6,
                     micro_batch_size=8, max_prompt_length=1024, save_steps=0, log_rollouts_every=0,
                     progress=False, temperature=1.0, top_p=1.0, precision="bf16" if cuda else "fp32")
    cfg.rollout.batch_size = sz["prompts"] * sz["k"]
    _reset(cuda)
    train_online(cfg)
    lines = [json.loads(x) for x in (work / "grpo-out" / "metrics.jsonl").read_text().splitlines()][1:]
    rows = sz["prompts"] * sz["k"]
    new = sum(x["response_length"] for x in lines) / len(lines)
    seq = prompt_len + new
    update_s = sum(x["time/update"] + x["time/scoring"] for x in lines) / len(lines)
    gen_s = sum(x["time/generation"] for x in lines) / len(lines)
    step_s = sum(x["time/train"] + x["time/generation"] + x["time/reward"] + x["time/sync"] for x in lines) / len(lines)
    body, table, ld = _flops_of(model_dir, "grpo")
    train_flops = rows * seq * (6 * body + 12 * ld * seq) + 6 * table * rows * new
    gen_flops = rows * new * (2 * (body + table) + 4 * ld * (prompt_len + new / 2))
    return {"shape": shape, "task": "grpo", "impl": "rlaif", "tokens_per_s": rows * seq / update_s,
            "mean_row_tokens": seq, "tflops": train_flops / update_s / 1e12,
            "mfu": train_flops / update_s / peak if peak else None, "peak_gib": _peak_gib(cuda),
            "steps": len(lines) + 1, "gen_s": gen_s, "update_s": update_s, "step_s": step_s,
            "gen_tokens_per_s": rows * new / gen_s,
            "step_mfu": (train_flops + gen_flops) / step_s / peak if peak else None}


def plain(task: str, shape: str, model_shape: str, row_tokens: float, cuda: bool, peak: float | None) -> dict:
    """gpu_check's loop with the rlaif run's batch and (mean) row length."""
    sz = SIZES[shape]
    seq = max(int(round(row_tokens)) // 2 * 2, 8)
    new = sz["new_tokens"]
    sizes = gpu_check.Sizes(batch=sz["batch"], seq=seq, prompts=sz["prompts"], k=sz["k"],
                            prompt_len=max(seq - new, 4), new_tokens=new, steps=2)
    device = torch.device("cuda" if cuda else "cpu")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    _reset(cuda)
    runner = {"rm": gpu_check.run_rm, "dpo": gpu_check.run_dpo, "grpo": gpu_check.run_grpo}[task]
    row = gpu_check.report(task, model_shape, runner(model_shape, sizes, device, autocast), peak)
    out = {"shape": shape, "task": task, "impl": "plain", "tokens_per_s": row["train_tokens_per_s"],
           "mean_row_tokens": seq, "tflops": row["train_tflops"], "mfu": row["train_mfu"],
           "peak_gib": _peak_gib(cuda), "steps": 3}
    if task == "grpo":
        out.update(gen_s=row["gen_s"], update_s=row["train_s"], step_s=row["step_s"],
                   gen_tokens_per_s=row["gen_tokens_per_s"], step_mfu=row["step_mfu"])
    return out


def append(out: Path, row: dict) -> None:
    path = out / "session.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(rows + [row], indent=1) + "\n")
    print(json.dumps(row), flush=True)


def table(out: Path) -> str:
    """The markdown table of DIR/session.json: rlaif beside the plain loop, per shape and task."""
    rows = json.loads((out / "session.json").read_text()) if (out / "session.json").is_file() else []

    def fmt(x: float | None, pattern: str) -> str:
        return "n/a" if x is None else pattern.format(x)

    lines = ["| shape | task | impl | row tokens | tokens/s | TFLOP/s | MFU | peak GiB | gen tok/s | step MFU |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["shape"], ["rm", "dpo", "grpo"].index(r["task"]), r["impl"])):
        lines.append(f"| {r['shape']} | {r['task']} | {r['impl']} | {r['mean_row_tokens']:.0f} | "
                     f"{r['tokens_per_s']:.0f} | {r['tflops']:.2f} | {fmt(r['mfu'] and 100 * r['mfu'], '{:.1f}%')} | "
                     f"{fmt(r['peak_gib'], '{:.1f}')} | {fmt(r.get('gen_tokens_per_s'), '{:.0f}')} | "
                     f"{fmt(r.get('step_mfu') and 100 * r['step_mfu'], '{:.2f}%')} |")
    text = "\n".join(lines) + "\n"
    (out / "session.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SIZES), default="360m")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder for the built model")
    parser.add_argument("--out", type=Path, required=True, help="session.json / session.md go here")
    parser.add_argument("--tasks", default="rm,dpo,grpo")
    parser.add_argument("--cpu", action="store_true", help="rehearsal on CPU (fp32, no MFU)")
    parser.add_argument("--table", action="store_true", help="only write DIR/session.md")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rlaif-gpu-session"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(args.out))
        return
    _heavy()
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        sys.exit("bench/gpu_session.py needs a CUDA GPU (or --cpu for a rehearsal)")
    if args.tokenizer is None:
        sys.exit("--tokenizer is required (the carried tokenizer folder)")
    peak = gpu_check.peak_flops(torch.device("cuda"))[1] if cuda else None
    work = args.work / args.shape
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model_dir = work / "model"
    t0 = time.perf_counter()
    train_gpu.build_model(args.shape, args.tokenizer, model_dir)
    print(f"built {args.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    long_pairs(work / "data", SIZES[args.shape]["pairs"], SIZES[args.shape]["words"])
    for task in args.tasks.split(","):
        t0 = time.perf_counter()
        mine = rlaif_grpo(args.shape, model_dir, work, cuda, peak) if task == "grpo" else \
            rlaif_offline(task, args.shape, model_dir, work, cuda, peak)
        mine["wall_s"] = time.perf_counter() - t0
        append(args.out, mine)
        t0 = time.perf_counter()
        theirs = plain(task, args.shape, args.shape, mine["mean_row_tokens"], cuda, peak)
        theirs["wall_s"] = time.perf_counter() - t0
        append(args.out, theirs)
    print(table(args.out))


if __name__ == "__main__":
    main()
