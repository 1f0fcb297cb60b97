"""Training across processes, on this CPU machine: two processes (gloo) under `accelerate launch` with
the shipped DDP and FSDP configs (process count 2, fp32) reach the weights one process reaches with
the same global batch (2 x batch_size 4 = one process with grad_accum 2): DPO with DDP, FSDP and
FSDP + LoRA, the reward model with FSDP; a two-process FSDP DPO run killed with SIGKILL after a
checkpoint resumes to the same weights.

accelerate enables FSDP only on GPU device types; WORKER lets it take its FSDP path on gloo/CPU
(a test shim: what runs is accelerate's and torch's FSDP2 code, with CPU tensors).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rlaif.train.config import DPOConfig
from rlaif.train.data import load_splits, tokenize_rows
from rlaif.train.runtime import MicroBatches

ROOT = Path(__file__).parent.parent
ASSETS = Path(__file__).parent / "assets" / "prefs"
TOLERANCE = 1e-5  # max abs weight difference, float32 (measured: 0.0 with DDP, ~4e-9 with FSDP)
STEPS, SAVE_STEPS = 6, 2  # 44 pairs / (4 x 2) = 5 steps per epoch: step 6 is in the second epoch
COMMON = [f"max_steps={STEPS}", f"save_steps={SAVE_STEPS}", "batch_size=4", "lr=0.002", "warmup_ratio=0",
          "progress=false", "logging_steps=1"]

WORKER = """
import os, sys, time
if os.environ.get("RLAIF_TEST_FSDP_ON_CPU") == "1":  # accelerate's FSDP path with gloo on CPU
    import torch.distributed
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    torch.distributed.init_process_group("gloo")
    PartialState._prepare_backend = lambda self, *a, **k: ("gloo", DistributedType.MULTI_GPU)
if os.environ.get("RLAIF_TEST_STEP_SLEEP"):  # slow steps, so the test can kill the run mid-way
    from rlaif.train import runtime
    real = runtime.optimizer_step
    def slow(*args, **kwargs):
        time.sleep(float(os.environ["RLAIF_TEST_STEP_SLEEP"]))
        return real(*args, **kwargs)
    runtime.optimizer_step = slow
from rlaif.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------- fast: the batch order

class FakeAccelerator:
    def __init__(self, world: int, rank: int) -> None:
        self.num_processes, self.process_index, self.device = world, rank, "cpu"


def test_the_global_batch_of_each_step_does_not_depend_on_the_process_count(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    pairs, _ = tokenize_rows(tok, load_splits(ASSETS)["train"], 1024, 512)

    def steps(world: int, accum: int, n: int) -> list[list[tuple[int, ...]]]:
        cfg = DPOConfig(batch_size=3, grad_accum=accum, seed=5)
        ranks = [MicroBatches(cfg, pairs, tok.pad_token_id, FakeAccelerator(world, r)) for r in range(world)]
        assert len({b.per_epoch for b in ranks}) == 1 and ranks[0].per_epoch % accum == 0
        return [sorted(tuple(b(s * accum + k).indices) for b in ranks for k in range(accum)) for s in range(n)]

    one = steps(1, 4, 9)  # 44 pairs / 3 = 14 batches -> 12 kept = 3 steps per epoch: 9 steps = 3 epochs
    assert steps(2, 2, 9) == one and steps(4, 1, 9) == one
    assert one[0] != one[3], "each epoch has its own order"
    used = [i for batch in one[:3] for idx in batch for i in idx]
    assert len(used) == len(set(used)) == 36, "an epoch uses each pair at most once"


# ----------------------------------------------------------------------------- slow: real processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_config(tmp_path: Path, shipped: str) -> Path:
    """The shipped config with 2 processes and fp32 (CPU has no bf16 autocast worth comparing)."""
    conf = yaml.safe_load((ROOT / "configs" / shipped).read_text())
    conf.update(num_processes=2, mixed_precision="no")
    path = tmp_path / f"cpu-{shipped}"
    path.write_text(yaml.safe_dump(conf))
    return path


def _start(kind: str, tmp_path: Path, model: str, out: Path, trainer: str = "dpo", extra: tuple[str, ...] = (),
           sleep: float = 0) -> subprocess.Popen:
    """`accelerate launch` of WORKER, output captured."""
    config = _launch_config(tmp_path, f"accelerate_{kind}.yaml")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "RLAIF_TEST_FSDP_ON_CPU": "1" if kind == "fsdp" else "0", "PYTHONWARNINGS": "ignore",
           "RLAIF_TEST_STEP_SLEEP": str(sleep) if sleep else ""}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config),
           "--main_process_port", str(_free_port()), str(worker), "train", trainer, "--data", str(ASSETS),
           "--model", model, "--out", str(out), *COMMON, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts workers in their own sessions)."""
    import psutil

    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _finish(proc: subprocess.Popen, timeout: float = 420) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        output, _ = proc.communicate()
        pytest.fail(f"2-process run still going after {timeout} s: {output[-3000:]}")
    errors = [x for x in output.splitlines() if "Error" in x]
    assert proc.returncode == 0, f"{errors[-1:]} {output[-3000:]}"
    return output


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _max_diff(a: Path, b: Path, same_keys: bool = True) -> float:
    wa, wb = _weights(a), _weights(b)
    shared = wa.keys() & wb.keys()  # a tied lm_head may be written by one and left out by the other
    assert shared and (not same_keys or all(k.endswith("lm_head.weight") for k in wa.keys() ^ wb.keys()))
    return max(float((wa[k] - wb[k]).abs().max()) for k in shared)


def _train_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]


CASES = {  # id: (trainer, accelerate config, options)
    "dpo-ddp": ("dpo", "ddp", ()),
    "dpo-fsdp": ("dpo", "fsdp", ()),
    "dpo-fsdp-lora": ("dpo", "fsdp", ("lora.enabled=true", "lora.r=4", "lora.alpha=8", "lora.dropout=0")),
    "rm-fsdp": ("rm", "fsdp", ()),
}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir):
    """One process, batch_size 4, grad_accum 2 (the global batch of 2 processes with grad_accum 1),
    per (trainer, options), trained once per module."""
    from rlaif.cli import main

    done: dict[tuple, Path] = {}

    def get(trainer: str, extra: tuple[str, ...] = ()) -> Path:
        if (trainer, extra) not in done:
            out = tmp_path_factory.mktemp(f"one-{trainer}")
            argv = ["train", trainer, "--data", str(ASSETS), "--model", tiny_model_dir, "--out", str(out), *COMMON,
                    *extra, "grad_accum=2"]
            assert main(argv) == 0
            done[(trainer, extra)] = out
        return done[(trainer, extra)]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_reach_the_weights_of_one(tmp_path, tiny_model_dir, one_process, case):
    trainer, kind, extra = CASES[case]
    out, want_out = tmp_path / "out", one_process(trainer, extra)
    _finish(_start(kind, tmp_path, tiny_model_dir, out, trainer, extra))
    assert _max_diff(out, want_out) < TOLERANCE
    assert _max_diff(out, Path(tiny_model_dir), same_keys=False) > 1e-3, "training moved the weights"

    lines, want = _train_lines(out), _train_lines(want_out)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1)), "metrics written once, by one process"
    if trainer == "dpo":
        assert lines[0]["train/rewards/margin"] == pytest.approx(0, abs=1e-5), "the reference is the starting policy"
    for got, exp in zip(lines, want):  # averaged over both processes = the one process's mean
        assert got["train/loss"] == pytest.approx(exp["train/loss"], abs=1e-5)
        assert got["train/tokens"] == exp["train/tokens"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["test"]["loss" if trainer == "dpo" else "accuracy"] == pytest.approx(
        json.loads((want_out / "summary.json").read_text())["test"]["loss" if trainer == "dpo" else "accuracy"],
        abs=1e-5)
    checkpoint = out / "checkpoints" / "step-4"
    if kind == "fsdp":  # sharded: each process wrote its part of model and optimizer
        assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    if extra:
        assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_a_killed_two_process_fsdp_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir, one_process):
    out = tmp_path / "out"
    proc = _start("fsdp", tmp_path, tiny_model_dir, out, sleep=1.5)
    deadline = time.monotonic() + 420
    while not (out / "checkpoints" / "step-4").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill(proc)  # the launcher and both training processes
    output, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {output[-3000:]}"
    assert not (out / "config.json").exists() and (out / "checkpoints" / "step-4" / "trainer_state.json").is_file()

    _finish(_start("fsdp", tmp_path, tiny_model_dir, out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == 4 and summary["steps"] == STEPS
    assert [x["step"] for x in _train_lines(out)] == list(range(1, STEPS + 1))
    assert _max_diff(out, one_process("dpo")) < TOLERANCE


def test_a_frozen_reference_copy_is_refused_when_the_policy_is_sharded(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from transformers import AutoModelForCausalLM

    from rlaif.errors import UserError
    from rlaif.train.dpo import Reference

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        run = SimpleNamespace(out=tmp_path, base=tiny_model_dir, train=[], test=[],
                              accelerator=SimpleNamespace(distributed_type=kind, device="cpu"))
        with pytest.raises(UserError, match="reference=model.*use reference=precompute"):
            Reference(DPOConfig(reference="model"), run, model)
    run.accelerator.distributed_type = DistributedType.MULTI_CPU  # DDP: each process holds a full copy anyway
    assert Reference(DPOConfig(reference="model"), run, model).model is not model
