"""`rlaif loop` end to end on tiny random models (hf engine): resume after SIGKILL to the same files,
flat memory over rounds, the grpo and rm+ppo trainers, and a round without pairs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rlaif.cli import main
from rlaif.config import load_config

ASSETS = Path(__file__).parent / "assets"
REWARDS = ASSETS / "rewards_trainer.py"


def prompts_file(path: Path, n: int = 14) -> str:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about the number {i}."}) + "\n"
                            for i in range(n)))
    return str(path)


def loop_args(prompts: str, model: str, *extra: str) -> list[str]:
    return ["loop", "--prompts", prompts, "policy.engine=hf", f"policy.model={model}", "prompts_per_round=5",
            "eval_size=4", "n=3", "max_tokens=10", "truncated=keep", "chunk_size=2", "progress=false",
            "dpo.batch_size=2", "dpo.lr=1e-3", "dpo.max_length=64", "dpo.max_prompt_length=32", "dpo.save_steps=1",
            "eval.max_tokens=10", *extra]


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *argv], capture_output=True, text=True, timeout=900,
                          cwd=cwd)


def kill_when(argv: list[str], cwd: Path, trigger: Path) -> None:
    """Start the loop and SIGKILL it as soon as ``trigger`` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not trigger.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the loop ended before {trigger} appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def result_files(root: Path) -> dict[str, bytes]:
    """What must not depend on interruptions: weights, every data/eval row file, round records and the
    manifest without its timings (logs, checkpoints, stage partials and reports with timings left out)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or any(part in (".rlaif", "runs", "checkpoints") for part in p.relative_to(root).parts):
            continue
        if p.name in ("metrics.jsonl", "summary.json", "ref_logps.pt", "report.html", "README.md", "loop.json"):
            continue
        if p.name == "manifest.json":
            data = json.loads(p.read_text())
            data.pop("timings", None)
            out[rel] = json.dumps(data, sort_keys=True).encode()
        else:
            out[rel] = p.read_bytes()
    return out


def test_sigkill_twice_then_rerun_gives_the_files_of_an_uninterrupted_run(tmp_path, tiny_model_dir, monkeypatch,
                                                                         capsys):
    prompts = prompts_file(tmp_path / "prompts.jsonl")
    argv = loop_args(prompts, tiny_model_dir, "--out", "loop", "rounds=2")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    killed.mkdir()
    whole.mkdir()
    # 1st kill: inside round 1's DPO training, after its first checkpoint; 2nd: inside round 2's data stage
    kill_when(argv, killed, killed / "loop" / "round-1" / "model" / "checkpoints" / "step-1" / "trainer_state.json")
    assert not (killed / "loop" / "round-1" / "round.json").exists()
    kill_when(argv, killed, killed / "loop" / "round-2" / "data" / "candidates.jsonl")
    assert (killed / "loop" / "round-1" / "round.json").exists() and not (killed / "loop" / "report.html").exists()
    resumed = run_cli(argv, killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "round 1: already done" in resumed.stderr
    assert "vs initial [95% CI]" in resumed.stdout and "0 (start)" in resumed.stdout

    monkeypatch.chdir(whole)  # the same relative --out as the killed run: paths inside the files match
    assert main(argv) == 0
    a, b = result_files(killed / "loop"), result_files(whole / "loop")
    assert a.keys() == b.keys()
    assert "round-2/model/model.safetensors" in a and "round-2/eval/vs-previous/eval.json" in a
    assert [k for k in a if a[k] != b[k]] == []

    # round 2's DPO reference was the starting policy (reference=initial), not round 1's model
    summaries = [json.loads((whole / "loop" / f"round-{k}" / "model" / "summary.json").read_text()) for k in (1, 2)]
    assert summaries[1]["reference"] == tiny_model_dir and summaries[1]["settings"]["ref_model"] == tiny_model_dir
    assert summaries[0]["reference"] == tiny_model_dir and summaries[0]["settings"]["ref_model"] == ""
    manifest = json.loads((whole / "loop" / "manifest.json").read_text())
    assert [r["round"] for r in manifest["rounds"]] == [1, 2]
    assert manifest["rounds"][1]["kl"] > 0 and set(manifest["rounds"][1]["eval"]) == {"vs-initial", "vs-previous"}

    # a rerun of the finished loop does nothing new; other settings are refused; more rounds continue it
    capsys.readouterr()
    assert main(argv) == 0 and "round 2: already done" in capsys.readouterr().err
    assert main([*argv, "dpo.beta=0.5"]) == 2
    err = capsys.readouterr().err
    assert "dpo.beta 0.1 -> 0.5" in err and len(err.strip().splitlines()) == 1


def test_memory_stays_flat_over_three_rounds(tmp_path, tiny_model_dir, monkeypatch):
    """Engines and trainers are released between stages: no model object outlives its round, and RSS
    after round 3 is close to round 1's."""
    import gc

    import torch

    import rlaif.loop.rounds as rounds
    from rlaif.loop.config import LoopConfig

    def live_models() -> int:
        gc.collect()
        return sum(type(o).__name__.endswith("ForCausalLM") and isinstance(o, torch.nn.Module)
                   for o in gc.get_objects())

    from transformers import AutoModelForCausalLM

    held = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert live_models() == 1  # the counter sees a model that is still referenced
    del held
    live: list[int] = []
    real_round = rounds.run_round

    def counting_round(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_round(*args, **kwargs)
        live.append(live_models())
        return result

    monkeypatch.setattr(rounds, "run_round", counting_round)
    prompts = prompts_file(tmp_path / "prompts.jsonl", 20)
    argv = loop_args(prompts, tiny_model_dir, f"out={tmp_path / 'loop'}", "rounds=3", "dpo.save_steps=0")[3:]
    cfg = load_config(LoopConfig, None, argv, flags={"prompts": prompts}, inherit={"judge": "policy"})
    manifest = rounds.run_loop(cfg)
    assert live == [0, 0, 0]  # policy engines, judges, trainers, eval and KL models: all gone after each round
    rss = [manifest["timings"]["rounds"][k]["rss_mb"] for k in ("1", "2", "3")]
    assert rss[0] > 0 and rss[2] - rss[0] < 60, rss  # generous: allocator noise, not models


def test_grpo_trainer_learns_online_and_is_judged_by_its_reward(tmp_path, tiny_model_dir):
    prompts = prompts_file(tmp_path / "prompts.jsonl", 10)
    out = tmp_path / "loop"
    argv = loop_args(prompts, tiny_model_dir, "--out", str(out), "rounds=1", "trainer=grpo",
                     f"rewards=[python:{REWARDS}:length_target]", "grpo.k=2", "grpo.steps=2",
                     "grpo.prompts_per_step=2", "grpo.max_tokens=8", "grpo.engine=hf", "measure_kl=false")
    assert main(argv) == 0
    record = json.loads((out / "round-1" / "round.json").read_text())
    assert record["train"]["trainer"] == "grpo" and record["train"]["steps"] == 2
    assert not (out / "round-1" / "data").exists()  # online: no preference data
    ev = record["eval"]["vs-initial"]
    assert ev["rewards"] == [f"python:{REWARDS}:length_target"] and ev["rubrics"] == [] and ev["n"] == 4


def test_rm_ppo_trainer_uses_the_rounds_reward_model(tmp_path, tiny_model_dir):
    prompts = prompts_file(tmp_path / "prompts.jsonl", 10)
    out = tmp_path / "loop"
    argv = loop_args(prompts, tiny_model_dir, "--out", str(out), "rounds=1", "trainer=rm+ppo", "rm.batch_size=2",
                     "rm.max_length=64", "rm.max_prompt_length=32", "ppo.steps=1", "ppo.prompts_per_step=2",
                     "ppo.max_tokens=8", "ppo.engine=hf", "ppo.epochs_per_step=1", "measure_kl=false")
    assert main(argv) == 0
    rd = out / "round-1"
    assert (rd / "rm" / "config.json").is_file() and (rd / "model" / "value").is_dir()
    summary = json.loads((rd / "model" / "summary.json").read_text())
    assert summary["config"]["reward"] == [f"rm:{rd / 'rm'}"]


def test_a_round_without_pairs_stops_with_one_line_and_keeps_earlier_rounds(tmp_path, tiny_model_dir, monkeypatch,
                                                                           capsys):
    prompts = prompts_file(tmp_path / "prompts.jsonl")
    out = tmp_path / "loop"
    argv = loop_args(prompts, tiny_model_dir, "--out", str(out), "measure_kl=false")
    assert main([*argv, "rounds=1"]) == 0
    before = (out / "round-1" / "round.json").read_bytes()
    import rlaif.dataset.pipeline as pipeline

    real = pipeline.run_all
    monkeypatch.setattr(pipeline, "run_all",
                        lambda cfg: {**real(cfg), "train_pairs": 0} if "round-2" in cfg.out else real(cfg))
    capsys.readouterr()
    assert main([*argv, "rounds=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlaif: error: round 2: `rlaif run` produced no training pairs")
    assert "rounds 1-1 are kept" in err[-1]
    assert (out / "round-1" / "round.json").read_bytes() == before and (out / "round-1" / "model").is_dir()
    assert not (out / "round-2" / "round.json").exists()
    assert [r["round"] for r in json.loads((out / "manifest.json").read_text())["rounds"]] == [1]
