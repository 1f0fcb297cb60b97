"""Trainer reruns: a run killed by the test resumes and ends where an uninterrupted one does;
other settings are refused (one line, naming what differs); overwrite starts over."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train.config import DPOConfig, RMConfig

ASSETS = Path(__file__).parent / "assets" / "prefs"

# Runs `rlaif` with every optimizer step slowed down, so the test has time to kill it mid-run.
SLOW_CLI = """
import sys, time
from rlaif.train import runtime
real = runtime.optimizer_step
def slow(*args, **kwargs):
    time.sleep(1.0)
    return real(*args, **kwargs)
runtime.optimizer_step = slow
from rlaif.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_when(cmd: list[str], path: Path, timeout: float = 240) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``path`` exists; fail if it ends first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rlaif.train.dpo import train_dpo

    killed = tmp_path / "killed"
    common = ["max_steps=6", "save_steps=2", "lr=0.002", "batch_size=4", "warmup_ratio=0", "progress=false",
              "logging_steps=1"]
    cmd = [sys.executable, "-c", SLOW_CLI, "train", "dpo", "--data", str(ASSETS), "--model", tiny_model_dir,
           "--out", str(killed), *common]
    _kill_when(cmd, killed / "checkpoints" / "step-4")
    assert sorted(p.name for p in (killed / "checkpoints").iterdir() if not p.name.startswith(".")) \
        == ["step-2", "step-4"]
    assert not (killed / "config.json").exists()

    cfg = DPOConfig(data=str(ASSETS), model=tiny_model_dir, out=str(killed), max_steps=6, save_steps=2, lr=2e-3,
                    batch_size=4, warmup_ratio=0.0, progress=False, logging_steps=1)
    resumed = train_dpo(cfg)
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 6
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert steps == list(range(1, 7)), "lines logged after the checkpoint are dropped, then logged again"

    straight = train_dpo(DPOConfig(**{**vars(cfg), "out": str(tmp_path / "straight"), "save_steps": 0}))
    assert straight["steps"] == 6
    assert resumed["test"]["loss"] == pytest.approx(straight["test"]["loss"], abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(killed).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "straight").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def _rm_cfg(tiny_model_dir, out, **kw):
    base = dict(data=str(ASSETS), model=tiny_model_dir, out=str(out), lr=3e-3, batch_size=8, max_steps=2,
                save_steps=1, warmup_ratio=0.0, logging_steps=1, progress=False)
    return RMConfig(**{**base, **kw})


def test_other_settings_are_refused_and_overwrite_starts_over(tmp_path, tiny_model_dir):
    from rlaif.train.rm import train_rm

    out = tmp_path / "rm"
    first = train_rm(_rm_cfg(tiny_model_dir, out))
    weights = (out / "model.safetensors").read_bytes()
    (out / "notes.txt").write_text("mine")  # a file rlaif did not write: the folder is refused, untouched
    with pytest.raises(UserError, match="holds notes.txt, which rlaif did not write"):
        train_rm(_rm_cfg(tiny_model_dir, out, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").read_bytes() == weights
    (out / "notes.txt").unlink()

    # same settings, only how it logs and saves differs: the finished run is returned, nothing trains
    again = train_rm(_rm_cfg(tiny_model_dir, out, logging_steps=5, save_steps=7, progress=True))
    assert again == json.loads((out / "summary.json").read_text()) and again["test"] == first["test"]
    assert (out / "model.safetensors").read_bytes() == weights

    with pytest.raises(UserError) as e:
        train_rm(_rm_cfg(tiny_model_dir, out, lr=1e-3, margin_coef=0.5))
    msg = str(e.value)
    assert "\n" not in msg and "a trained model" in msg and "--overwrite" in msg
    assert "lr 0.003 -> 0.001" in msg and "margin_coef 0.0 -> 0.5" in msg and "seed" not in msg

    # an unfinished run (a checkpoint, no final model) made with other data is refused too
    (out / "summary.json").unlink()
    data = tmp_path / "data"
    shutil.copytree(ASSETS, data)
    with (data / "train.jsonl").open("a") as fh:
        fh.write(json.dumps({"prompt": "one more", "chosen": "yes", "rejected": "no"}) + "\n")
    with pytest.raises(UserError, match=r"step-1: holds a checkpoint made with other settings: data \(the pref"):
        train_rm(_rm_cfg(tiny_model_dir, out, data=str(data)))

    # overwrite: what the trainer wrote goes, the new settings are recorded
    (out / "checkpoints" / "step-9").mkdir()
    second = train_rm(_rm_cfg(tiny_model_dir, out, lr=1e-3, save_steps=0, overwrite=True))
    assert second["resumed_from"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["lr"] == 1e-3 and summary["config"]["overwrite"] is True
    assert not (out / "checkpoints").exists(), "old checkpoints are removed by overwrite"
    assert (out / "model.safetensors").read_bytes() != weights
