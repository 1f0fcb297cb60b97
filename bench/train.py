"""Training throughput, rlaif vs TRL (RewardTrainer, DPOTrainer), side by side in one process;
and peak memory of a DPO run, rlaif vs TRL, each in its own process (``--memory``).

Same model (the embedded SmolLM2-135M-Instruct), same preference pairs, batch size, max length,
precision (fp32, CPU), one epoch each; the first optimizer step is warm-up and is not timed.
Tokens/s counts real (non-padding) tokens of prompt+chosen and prompt+rejected per second of
optimizer-step wall time. Both DPO runs precompute the reference log-probs before training
(not timed), so each step is one policy forward+backward in both.

rlaif runs twice per trainer: ``packing=false`` (right-padded rows, the trainer before issue 23)
and ``packing=true`` (the default: one padding-free sequence per micro-batch).

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/train.py [--pairs 32] [--batch-size 4] [--rounds 3]
    .venv/bin/python bench/train.py --memory --pairs 8 --batch-size 2 --max-length 1024 --repeats 8,20

``--rounds N`` repeats the runs, who goes first alternating per round, and reports the medians
(and the packed / TRL ratio of each round): on a shared machine read the ratio of medians.
``--isolate`` runs each trainer in its own fresh process, as users run them (one after the other in
one process, a run inherits the heap and thread pools of the run before it).
``--threads 1`` on an oversubscribed machine: with two threads each op waits for both to be
scheduled, so a step's time follows its number of ops rather than its arithmetic.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from isolate import in_fresh_process

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets" / "prefs" / "train.jsonl"


def make_data(out: Path, pairs: int, seed: int = 0, repeats: tuple[int, int] = (1, 8)) -> list[dict]:
    """Pairs of varied length (about 40-400 tokens with the default): asset answers repeated 1-8 times."""
    rng = random.Random(seed)
    base = [json.loads(x) for x in ASSETS.read_text().splitlines()]
    rows = []
    for i in range(pairs):
        r = base[i % len(base)]
        good, bad = r["chosen"][0]["content"], r["rejected"][0]["content"]
        rows.append({"prompt": r["prompt"],
                     "chosen": [{"role": "assistant", "content": " ".join([good] * rng.randint(*repeats))}],
                     "rejected": [{"role": "assistant", "content": " ".join([bad] * rng.randint(*repeats))}]})
    (out / "preferences").mkdir(parents=True)
    (out / "preferences" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def rlaif_run(kind: str, data: Path, model: str, out: Path, args: argparse.Namespace, packing: bool = True) -> dict:
    from rlaif.train.config import DPOConfig, RMConfig

    common = dict(data=str(data), model=model, out=str(out), batch_size=args.batch_size, epochs=1,
                  max_length=args.max_length, max_prompt_length=args.max_length // 2, precision="fp32",
                  save_steps=0, logging_steps=1, progress=False, overwrite=True, packing=packing)
    t0 = time.perf_counter()
    if kind == "rm":
        from rlaif.train.rm import train_rm

        summary = train_rm(RMConfig(**common, lr=1e-5))
    else:
        from rlaif.train.dpo import train_dpo

        summary = train_dpo(DPOConfig(**common, lr=1e-6))
    wall = time.perf_counter() - t0
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    timed = steps[1:]
    return {"tokens_per_s": sum(s["train/tokens"] for s in timed) / sum(s["train/step_time"] for s in timed),
            "steps": len(steps), "padding": summary["padding_fraction"], "wall_s": wall,
            "rss_growth_gib": max(s.get("train/memory/rss_growth_gib", 0.0) for s in steps)}


def peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _Counting:
    """Wraps TRL's collator to count real tokens and padding per batch."""

    def __init__(self, inner) -> None:
        self.inner, self.tokens, self.padded = inner, [], []

    def __call__(self, examples):
        batch = self.inner(examples)
        mask = batch["attention_mask"]
        self.tokens.append(int(mask.sum()))
        self.padded.append(int(mask.numel() - mask.sum()))
        return batch


def trl_run(kind: str, rows: list[dict], model_dir: str, out: Path, args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    common = dict(output_dir=str(out), per_device_train_batch_size=args.batch_size, num_train_epochs=1,
                  max_length=args.max_length, bf16=False, use_cpu=True, report_to=[], save_strategy="no",
                  logging_steps=10_000, gradient_checkpointing=False, dataloader_num_workers=0, seed=0)
    dataset = Dataset.from_list(rows)
    if kind == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common, learning_rate=1e-5),
                                train_dataset=dataset, processing_class=tok, callbacks=[Timer()])
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, learning_rate=1e-6, beta=0.1,
                                                         precompute_ref_log_probs=True),
                             train_dataset=dataset, processing_class=tok, callbacks=[Timer()])
    counter = _Counting(trainer.data_collator)
    trainer.data_collator = counter
    trainer.train()
    wall = time.perf_counter() - t0
    # precomputed reference passes (DPO) also go through the collator: the training batches are the last ones
    tokens, padded = counter.tokens[-len(times):], counter.padded[-len(times):]
    return {"tokens_per_s": sum(tokens[1:]) / sum(times[1:]), "steps": len(times),
            "padding": sum(padded) / (sum(tokens) + sum(padded)), "wall_s": wall}


def one_run(kind: str, who: str, rows: list[dict], data: Path, model: str, out: Path,
            args: argparse.Namespace) -> dict:
    """One trainer's run: ``who`` is trl, rlaif (packed) or padded (rlaif, packing=false)."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if who == "trl":
        return trl_run(kind, rows, model, out, args)
    return rlaif_run(kind, data, model, out, args, packing=who == "rlaif")


def memory(args: argparse.Namespace) -> None:
    """DPO at ``--max-length``: each trainer in a fresh process (peak RSS is per process); prints the table."""
    import subprocess
    import sys

    rows = {}
    for who in ("rlaif", "trl"):
        cmd = [sys.executable, __file__, "--only", "dpo", "--who", who, "--pairs", str(args.pairs), "--batch-size",
               str(args.batch_size), "--max-length", str(args.max_length), "--model", args.model,
               "--repeats", args.repeats]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[who] = json.loads(out.strip().splitlines()[-1])
        print(who, rows[who], flush=True)
    print(f"\n| DPO, max_length {args.max_length}, batch {args.batch_size} | peak RSS GiB (process) | "
          f"RSS after model load GiB | tokens/s |\n|---|---|---|---|")
    for who, r in rows.items():
        print(f"| {who} | {r['peak_rss_gib']:.2f} | {r['loaded_rss_gib']:.2f} | {r['tokens_per_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--only", choices=["rm", "dpo"], default=None)
    parser.add_argument("--model", default="smollm2-135m", help="alias or local folder (a tiny one to smoke-test)")
    parser.add_argument("--repeats", default="1,8", help="each answer repeated between these many times")
    parser.add_argument("--memory", action="store_true", help="DPO peak memory, rlaif vs TRL, one process each")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the runs, alternating who goes first; medians")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    parser.add_argument("--no-padded", action="store_true", help="skip rlaif's padded (packing=false) runs")
    parser.add_argument("--isolate", action="store_true",
                        help="run each trainer in its own fresh process (as users run them), not one after the other "
                             "in this one")
    parser.add_argument("--who", choices=["rlaif", "trl"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        return memory(args)

    import transformers
    import trl

    from rlaif.models import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)

    model = resolve_model(args.model)
    repeats = tuple(int(x) for x in args.repeats.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-train-"))
    try:
        rows = make_data(tmp / "data", args.pairs, repeats=repeats)
        if args.who:  # one run in this process, for --memory
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(model)  # what both pay: load once, then the run's own
            loaded = peak_rss_gib()
            res = (rlaif_run("dpo", tmp / "data", model, tmp / "out", args) if args.who == "rlaif"
                   else trl_run("dpo", rows, model, tmp / "out", args))
            print(json.dumps({**res, "peak_rss_gib": peak_rss_gib(), "loaded_rss_gib": loaded}))
            return
        results: dict[tuple[str, str], list[dict]] = {}
        run = (lambda *a: in_fresh_process(one_run, *a)) if args.isolate else one_run
        kinds = ("rm", "dpo") if args.only is None else (args.only,)
        sides = ("rlaif", "trl") if args.no_padded else ("rlaif", "trl", "padded")
        for rnd in range(args.rounds):
            for kind in kinds:
                # alternate who goes first (per trainer and per round), so drift on a shared machine
                # does not favour one side
                flip = (rnd + (kind == "rm")) % 2
                for who in sides[::-1] if flip else sides:
                    out = tmp / f"{who}-{kind}-{rnd}"
                    res = run(kind, who, rows, tmp / "data", model, out, args)
                    results.setdefault((kind, who), []).append(res)
                    print(f"round {rnd} {kind} {who}: {json.dumps(res)}", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
        print(f"\nSmolLM2-135M-Instruct, CPU fp32 ({torch.get_num_threads()} threads), {args.pairs} pairs, "
              f"batch {args.batch_size} pairs, max_length {args.max_length}, {args.rounds} round(s), medians; "
              f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}\n")
        print("| trainer | rlaif packed tokens/s | rlaif padded tokens/s | TRL tokens/s | packed / TRL | "
              "padded / TRL | padding (padded / TRL) | steps | packed / TRL per round |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kind in kinds:
            med = {who: statistics.median(r["tokens_per_s"] for r in results[(kind, who)])
                   for who in sides}
            a, b = results[(kind, "rlaif")], results[(kind, "trl")]
            p = results.get((kind, "padded"))
            per_round = ", ".join(f"{x['tokens_per_s'] / y['tokens_per_s']:.2f}" for x, y in zip(a, b))
            pad_cols = ([f"{med['padded']:.1f}", f"{med['padded'] / med['trl']:.2f}x", f"{p[0]['padding']:.1%}"] if p
                        else ["-", "-", "-"])
            cells = [kind, f"{med['rlaif']:.1f}", pad_cols[0], f"{med['trl']:.1f}", f"{med['rlaif'] / med['trl']:.2f}x",
                     pad_cols[1], f"{pad_cols[2]} / {b[0]['padding']:.1%}", f"{a[0]['steps']} / {b[0]['steps']}",
                     per_round]
            print("| " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
