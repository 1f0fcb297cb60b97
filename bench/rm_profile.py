"""Reward-model forward + backward per position: rlaif's packed batches against padded ones, interleaved.

The question (issue 23): `bench/train.py` gives rlaif's RM 1.88x TRL's tokens/s on its 32-pair set,
where TRL pads 41% of the positions it runs. Is rlaif slower per position it runs, or is 2x out of
reach on that set? Both variants here run the same model weights on the same micro-batches of
`bench/train.py`'s pairs (batches of ``--batch-size`` pairs in file order), forward + backward of the
summed rewards, no optimizer:

- ``packed``: `rlaif.train.rm.pair_rewards` on `packing.pack_pairs` (rlaif's default: one sequence,
  attention per row, each prompt run once, the rejected row a branch of the chosen one);
- ``padded``: `modeling.reward_scores` on right-padded rows with an attention mask and SDPA (TRL's
  RewardTrainer's layout: chosen and rejected rows each padded to the batch's longest).

Reported per variant (median of ``--repeats`` passes over all batches, order alternating): seconds,
positions run, positions/s, and real tokens/s (`TokenizedPair.num_tokens`: what `bench/train.py`
counts). ``--faults`` prints each micro-batch's forward and backward time and page faults;
``--profile`` torch.profiler's top operators per variant.

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/rm_profile.py [--pairs 32] [--repeats 3] [--faults] [--profile]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from train import make_data

from rlaif.io.heap import keep_freed_memory
from rlaif.models import resolve_model
from rlaif.train.data import TokenizedPair, collate, read_preferences, tokenize_rows
from rlaif.train.modeling import load_reward_model, reward_scores
from rlaif.train.packing import pack_pairs, use_varlen_attention
from rlaif.train.rm import pair_rewards


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def variants(path: str, pad: int) -> dict[str, tuple[Any, Callable[[list[TokenizedPair]], tuple[torch.Tensor, int]]]]:
    """name -> (model, batch -> (rewards, positions run)); the two models hold the same weights."""
    packed_model = load_reward_model(path, pad)
    use_varlen_attention(packed_model)
    padded_model = load_reward_model(path, pad)
    padded_model.load_state_dict(packed_model.state_dict())

    def packed(pairs: list[TokenizedPair]) -> tuple[torch.Tensor, int]:
        batch = pack_pairs(pairs)
        return pair_rewards(packed_model, batch), batch.input_ids.numel()

    def padded(pairs: list[TokenizedPair]) -> tuple[torch.Tensor, int]:
        batch = collate(pairs, pad)
        return reward_scores(padded_model, batch.input_ids, batch.attention_mask), batch.input_ids.numel()

    return {"packed": (packed_model, packed), "padded": (padded_model, padded)}


def one_pass(model: Any, run: Callable, batches: list[list[TokenizedPair]], faults: bool, name: str) -> tuple[float, int]:
    """Forward + backward of every batch; (seconds, positions run)."""
    seconds, positions = 0.0, 0
    for i, pairs in enumerate(batches):
        f0, t0 = page_faults(), time.perf_counter()
        rewards, n = run(pairs)
        f1, t1 = page_faults(), time.perf_counter()
        rewards.sum().backward()
        f2, t2 = page_faults(), time.perf_counter()
        seconds, positions = seconds + t2 - t0, positions + n
        if faults:
            print(f"{name} batch {i}: {n} positions, forward {t1 - t0:.2f} s ({f1 - f0} faults), "
                  f"backward {t2 - t1:.2f} s ({f2 - f1} faults)", flush=True)
    model.zero_grad(set_to_none=True)
    return seconds, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--model", default="smollm2-135m", help="alias or local folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faults", action="store_true", help="per micro-batch times and page faults")
    parser.add_argument("--profile", action="store_true", help="torch.profiler's top operators per variant")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    keep_freed_memory("cpu")  # as the trainers run
    path = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp), args.pairs)
        rows = read_preferences(Path(tmp) / "preferences" / "train.jsonl")
    pairs, _ = tokenize_rows(tok, rows, args.max_length, args.max_length // 2)
    batches = [pairs[i:i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]
    real = sum(p.num_tokens for p in pairs)
    runs = variants(path, tok.pad_token_id)
    for name, (model, run) in runs.items():  # warm-up pass each
        one_pass(model, run, batches, args.faults, f"{name} warm-up")
    times: dict[str, list[float]] = {name: [] for name in runs}
    positions: dict[str, int] = {}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            model, run = runs[name]
            seconds, positions[name] = one_pass(model, run, batches, args.faults, name)
            times[name].append(seconds)
    print(f"{len(pairs)} pairs, {real} real tokens, batches of {args.batch_size} pairs")
    print("| variant | s per pass (rounds) | positions run | positions/s | real tokens/s |")
    print("|---|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} ({', '.join(f'{t:.2f}' for t in ts)}) | {positions[name]} | "
              f"{positions[name] / med:.0f} | {real / med:.0f} |")
    ratio = statistics.median(times["padded"]) / statistics.median(times["packed"])
    print(f"packed / padded real tokens/s: {ratio:.2f}x; positions run, padded / packed: "
          f"{positions['padded'] / positions['packed']:.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, (model, run) in runs.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                one_pass(model, run, batches, False, name)
            print(f"===== {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
