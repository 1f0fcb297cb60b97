"""`rlaif train grpo|rloo|ppo` from the command line: resume after SIGKILL, refusal, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.cli import main

ASSETS = Path(__file__).parent / "assets"
REWARDS = ASSETS / "rewards_trainer.py"


def prompts_file(tmp_path: Path, n: int = 4) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {i}."}) + "\n" for i in range(n)))
    return str(path)


def args(algorithm: str, prompts: str, model: str, out: Path, reward: str = "length_target", *extra: str) -> list[str]:
    return ["train", algorithm, "--prompts", prompts, "--model", model, "--out", str(out),
            "--reward", f"python:{REWARDS}:{reward}", "engine=hf", "k=2", "prompts_per_step=2", "max_tokens=8",
            "lr=1e-3", "progress=false", "log_rollouts_every=1", *extra]


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *argv], capture_output=True, text=True, timeout=600)


def test_sigkill_mid_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    prompts = prompts_file(tmp_path)
    argv = args("ppo", prompts, tiny_model_dir, tmp_path / "killed", "length_target", "steps=5", "save_steps=1",
                "epochs_per_step=2")
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoints" / "step-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()
    resumed = run_cli(argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stdout + resumed.stderr
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["resumed_from"] >= 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # no step logged twice, none missing
    rollout_steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "rollouts.jsonl").read_text().splitlines()]
    assert rollout_steps == sorted(rollout_steps) and len(rollout_steps) == 5 * 4

    whole = run_cli(args("ppo", prompts, tiny_model_dir, tmp_path / "whole", "length_target", "steps=5",
                         "save_steps=1", "epochs_per_step=2"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    a = load_file(str(tmp_path / "killed" / "model.safetensors"))
    b = load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    va = load_file(str(tmp_path / "killed" / "value" / "value_head.safetensors"))
    vb = load_file(str(tmp_path / "whole" / "value" / "value_head.safetensors"))
    assert all((va[n] == vb[n]).all() for n in va)


def test_other_settings_refused_then_overwrite(tmp_path, tiny_model_dir, capsys):
    prompts = prompts_file(tmp_path)
    out = tmp_path / "out"
    assert main(args("grpo", prompts, tiny_model_dir, out, "length_target", "steps=1")) == 0
    capsys.readouterr()
    assert main(args("grpo", prompts, tiny_model_dir, out, "length_target", "steps=1", "temperature=0.5")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "temperature 1.0 -> 0.5" in err and "--overwrite" in err
    assert main([*args("grpo", prompts, tiny_model_dir, out, "length_target", "steps=1", "temperature=0.5"),
                 "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["temperature"] == 0.5


@pytest.mark.parametrize("case, message", [
    ("no_prompts", "no prompts"),
    ("unknown_spec", "unknown kind 'nope'"),
    ("raises", "reward server down"),
    ("wrong_length", "python:"),
    ("not_causal", "not a causal language model"),
    ("k1", "option 'k' must be >= 2"),
])
def test_bad_input_is_one_line_exit_2(case, message, tmp_path, tiny_model_dir, capsys):
    prompts, model, out = prompts_file(tmp_path), tiny_model_dir, tmp_path / "out"
    reward, extra = "length_target", ["steps=1"]
    if case == "no_prompts":
        (tmp_path / "empty.jsonl").write_text("")
        prompts = str(tmp_path / "empty.jsonl")
    elif case in ("raises", "wrong_length"):
        reward = case
    elif case == "not_causal":
        model = str(tmp_path / "t5")
        Path(model).mkdir()
        (Path(model) / "config.json").write_text(json.dumps({"model_type": "t5"}))
    elif case == "k1":
        extra.append("k=1")
    argv = args("grpo", prompts, model, out, reward, *extra)
    if case == "unknown_spec":
        argv[argv.index("--reward") + 1] = "nope:thing"
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after any model-loading progress bar
    assert last.startswith("rlaif: error: ") and err.count("rlaif: error") == 1, err
    assert message in last
    assert "Traceback" not in err


def test_refused_under_an_fsdp_launch(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Under accelerate launch with FSDP (or DeepSpeed): one line, before any process group or model
    (each process's rollout engine needs the full weights; DDP launches run, test_online_distributed.py)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert main(args("grpo", prompts_file(tmp_path), tiny_model_dir, tmp_path / "out", "length_target", "steps=1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FSDP is not supported by the online trainers" in err
    assert not (tmp_path / "out").exists()
