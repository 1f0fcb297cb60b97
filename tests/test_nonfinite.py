"""Issue 20 item 6: a NaN/inf loss or gradient norm stops every trainer before the update, in one line,
exit 2, with nothing new written (the last good checkpoint stays); ``nonfinite=skip`` drops such
updates, counts them, and stops after 3 in a row. Tiny random models, real training steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rlaif.cli import main
from rlaif.train.nonfinite import NonFiniteError

PREFS = Path(__file__).parent / "assets" / "prefs"
REWARDS = Path(__file__).parent / "assets" / "rewards_trainer.py"
PAIR_ARGS = ["batch_size=8", "warmup_ratio=0", "save_steps=1", "max_steps=6", "progress=false"]


def written(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} - {"runs"}


def steps_saved(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("trainer", ["rm", "dpo"])
def test_lr_1e30_stops_in_one_line_and_saves_nothing_new(trainer: str, tmp_path: Path, tiny_model_dir: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["train", trainer, "--data", str(PREFS), "--model", tiny_model_dir, "--out", str(out), "lr=1e30",
                 *PAIR_ARGS])
    err = [line for line in capsys.readouterr().err.splitlines() if "rlaif:" in line or "Traceback" in line]
    assert code == 2, err
    assert len(err) == 1 and "non-finite" in err[0] and "nothing new saved" in err[0], err
    bad_step = int(err[0].split("step ")[1].split(":")[0])
    assert steps_saved(out) == list(range(1, bad_step))  # every step before the bad one, none after
    assert not written(out) & {"model.safetensors", "summary.json", "config.json"}


def nan_on_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, calls: set[int]) -> None:
    """``module.name`` returns a NaN loss on the given (1-based) calls."""
    real, count = getattr(module, name), [0]

    def patched(*args: Any, **kwargs: Any) -> Any:
        loss, stats = real(*args, **kwargs)
        count[0] += 1
        return (loss * math.nan if count[0] in calls else loss), stats

    monkeypatch.setattr(module, name, patched)


def test_rm_skip_drops_the_update_counts_it_and_stops_after_three_in_a_row(
        tmp_path: Path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import rlaif.train.rm as rm
    from safetensors.torch import load_file

    nan_on_calls(monkeypatch, rm, "rm_step", {2})
    out = tmp_path / "skip"
    args = ["train", "rm", "--data", str(PREFS), "--model", tiny_model_dir, "--out", str(out), "lr=1e-3",
            "logging_steps=1", *PAIR_ARGS]
    assert main([*args, "max_steps=3", "nonfinite=skip"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nonfinite_skipped"] == 1
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert [line["train/nonfinite_skipped"] for line in lines] == [0.0, 1.0, 0.0]
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "model.safetensors")).values())

    nan_on_calls(monkeypatch, rm, "rm_step", set(range(1, 100)))
    assert main([*args, "--overwrite", "nonfinite=skip"]) == 2
    assert "for 3 updates in a row (nonfinite=skip)" in capsys.readouterr().err
    assert "model.safetensors" not in written(out)


def online(tmp_path: Path, model: str, **kw: Any) -> Any:
    from rlaif.train.online.config import GRPOConfig

    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n"
                                                    for i in range(4)))
    base = dict(prompts=str(tmp_path / "prompts.jsonl"), model=model, out=str(tmp_path / "out"), engine="hf",
                reward=[f"python:{REWARDS}:length_target"], steps=3, k=2, prompts_per_step=2, max_tokens=8,
                micro_batch_size=2, progress=False, lr=1e-3, save_steps=1)
    return GRPOConfig(**{**base, **kw})


def test_grpo_stops_before_a_nan_update_and_saves_nothing_new(tmp_path: Path, tiny_model_dir: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from rlaif.train.online import maths
    from rlaif.train.online.trainer import train_online

    nan_on_calls(monkeypatch, maths, "policy_loss", {2})  # micro_batch_size=2 of 4 rows: call 2 is step 1's
    cfg = online(tmp_path, tiny_model_dir)
    with pytest.raises(NonFiniteError, match=r"^step 1, update 1: non-finite loss.*; stopped before the update"):
        train_online(cfg)
    out = Path(cfg.out)
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())
    assert "model.safetensors" not in written(out) and "summary.json" not in written(out)


def test_grpo_skip_counts_the_dropped_update(tmp_path: Path, tiny_model_dir: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from rlaif.train.online import maths
    from rlaif.train.online.trainer import train_online

    nan_on_calls(monkeypatch, maths, "policy_loss", {3})  # step 2's first micro-batch
    cfg = online(tmp_path, tiny_model_dir, nonfinite="skip", logging_steps=1)
    summary = train_online(cfg)
    lines = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    assert [line["nonfinite_skipped"] for line in lines] == [0.0, 1.0, 0.0]
    assert summary["steps"] == 3 and (Path(cfg.out) / "model.safetensors").is_file()
