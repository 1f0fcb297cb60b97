"""The online trainers across processes, on this CPU machine: two processes (gloo) under
`accelerate launch` with the shipped DDP config reach the weights and write the rollouts one
process does with the same step batch (grpo, rloo with beta > 0, ppo; several minibatch updates per
step), and a two-process run killed with SIGKILL after a checkpoint resumes to the same weights.
Fast tests: the prompt slices, the micro-batch split, the gradient sum and the launch checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train.online.config import GRPOConfig, check_config
from rlaif.train.online.distributed import Dist, mine, prompt_slice
from test_train_distributed import ROOT, WORKER, _free_port, _kill, _launch_config, _max_diff

ASSETS = Path(__file__).parent / "assets"
REWARDS = ASSETS / "rewards_trainer.py"
TOLERANCE = 1e-6  # max abs weight difference, float32 (measured: 0.0, each minibatch's 2 micro-batches on 2 ranks)
# 3 prompts a step over 2 processes: slices of 2 and 1 prompts (uneven); k 4 -> 12 completions, minibatches
# of 4 (3 updates an epoch), micro-batches of 2: rank 0 runs micro-batches 0, 2, 4..., rank 1 1, 3, 5...
# rollout.batch_size = k: each hf generate() call samples one prompt, in one process as in two (a call mixing
# prompts pads them, and on smollm2-135m that flipped 2 of 8 samples at step 2; with it, 0 of 24 and weights equal)
COMMON = ["steps=3", "prompts_per_step=3", "k=4", "max_tokens=6", "minibatch_size=4", "micro_batch_size=2",
          "lr=0.01", "engine=hf", "rollout.batch_size=4", "progress=false", "log_rollouts_every=1", "save_steps=0"]
HF_ONLY = ("engine=hf", "rollout.batch_size=4")
CASES = {"grpo": ("grpo", ("epochs_per_step=2",)), "rloo": ("rloo", ("beta=0.1",)),
         "ppo": ("ppo", ("epochs_per_step=2", "missing_eos_score=null")),
         "rloo-lora": ("rloo", ("beta=0.1", "lora.enabled=true", "lora.r=4", "lora.alpha=8", "lora.dropout=0"))}


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Say something about number {i}."} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _argv(algorithm: str, model: str, prompts: Path, out: Path, extra: tuple[str, ...]) -> list[str]:
    return ["train", algorithm, "--prompts", str(prompts), "--model", model, "--out", str(out),
            "--reward", f"python:{REWARDS}:length_target", *COMMON, *extra]


# ----------------------------------------------------------------------------- fast

def test_prompt_slices_cover_the_step_in_order_for_any_process_count():
    for n in (1, 3, 8, 13):
        for world in (1, 2, 3, 8):
            slices = [prompt_slice(n, world, r) for r in range(world)]
            assert [i for lo, hi in slices for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in slices) - min(hi - lo for lo, hi in slices) <= 1


def test_each_micro_batch_runs_on_exactly_one_rank():
    for world in (1, 2, 3):
        owners = [[r for r in range(world) if mine(j, world, r)] for j in range(10)]
        assert all(len(o) == 1 for o in owners)
        assert {o[0] for o in owners} == set(range(world))


class SumOverRanks(Dist):
    """A stand-in for W ranks in one process: `sum_` adds the other ranks' tensors, pre-computed."""

    def __init__(self, others: list[list[torch.Tensor]]) -> None:
        super().__init__(world=len(others) + 1, rank=0, device=torch.device("cpu"))
        self.others, self.calls = others, 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        add = self.others_for(tensor)
        for t in add:
            tensor += t
        return tensor

    def others_for(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        return [o[self.calls - 1] for o in self.others]


def test_summed_gradients_keep_none_where_no_rank_has_one_and_fill_zeros_elsewhere():
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.tensor([1.0, 2.0, 3.0])  # b: only the other rank has a gradient; c: nobody
    other_has = torch.tensor([1.0, 1.0, 0.0])
    other_grads = torch.tensor([10.0, 10.0, 10.0, 5.0, 6.0, 7.0])  # a's then b's, flattened
    dist = SumOverRanks([[other_has, other_grads]])
    dist.sum_grads([a, b, c])
    assert a.grad.tolist() == [11.0, 12.0, 13.0] and b.grad.tolist() == [5.0, 6.0, 7.0] and c.grad is None


def test_micro_losses_split_over_ranks_sum_to_the_one_process_gradient(tiny_model_dir):
    """update() on 2 "ranks" (each its micro-batches, the minibatch normaliser, gradients summed)
    gives the gradient of one process, checked on the first minibatch's gradient."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.online.batch import RolloutBatch, Scored
    from rlaif.train.online.step import Learner, update

    torch.manual_seed(0)
    n, width = 6, 4
    ids = torch.randint(3, 200, (n, 7))
    mask = torch.ones(n, width)
    mask[1, 2:] = 0
    mask[4, 1:] = 0
    batch = RolloutBatch(ids, torch.ones_like(ids), torch.arange(2, 6).repeat(n, 1), ids[:, 3:7], mask,
                         torch.zeros(n, width))
    cfg = GRPOConfig(minibatch_size=0, micro_batch_size=2, max_grad_norm=0, lr=1e-3)
    adv = {"adv": torch.randn(n), "kl": torch.zeros(n)}
    grads = []

    class Capture(torch.optim.SGD):
        def step(self, closure=None):  # record the (summed) gradient instead of stepping
            grads.append([p.grad.clone() if p.grad is not None else None for p in self.param_groups[0]["params"]])

    def run(dist: Dist | None) -> list:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        params = [p for p in model.parameters() if p.requires_grad]
        scored = Scored(None, None, None, float("nan"))  # old = current: the update fills old_logp
        update(cfg, 0, batch, scored, adv, torch.ones(n),
               Learner(model, None, Capture(params, lr=0.0), params, "cpu", nullcontext, dist or Dist()))
        return grads.pop()

    one = run(None)

    class Rank(Dist):
        def __init__(self, rank: int) -> None:
            super().__init__(world=2, rank=rank, device=torch.device("cpu"))

        def sum_grads(self, params):  # keep this rank's own share
            shares.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])

        def sum_(self, tensor):
            return tensor

        def gather(self, obj):
            return [obj]

    shares: list = []
    run(Rank(0))
    run(Rank(1))
    summed = [x + y for x, y in zip(shares[0], shares[1])]
    assert max(float((s - o).abs().max()) for s, o in zip(summed, one)) < 1e-6
    assert max(float(s.abs().max()) for s in shares[1]) > 0, "rank 1 had micro-batches of its own"


def test_fsdp_and_deepspeed_launches_are_refused_in_one_line(monkeypatch):
    cfg = GRPOConfig(prompts="p", out="o", reward=["python:f.py:g"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_config(cfg)  # DDP: fine
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        monkeypatch.setenv(var, "true")
        with pytest.raises(UserError, match=f"{name} is not supported by the online trainers") as err:
            check_config(cfg)
        assert "\n" not in str(err.value)
        monkeypatch.delenv(var)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_config(cfg)  # one process: the accelerate config does not matter


def test_an_fsdp_launch_exits_2_with_one_line(tmp_path, tiny_model_dir):
    """The CLI under an FSDP launch's environment (no process group is started before the check)."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "ACCELERATE_USE_FSDP": "true",
           "PYTHONWARNINGS": "ignore"}
    argv = _argv("grpo", tiny_model_dir, _prompts(tmp_path), tmp_path / "out", ())
    proc = subprocess.run([sys.executable, str(worker), *argv], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "FSDP is not supported by the online trainers" in lines[0]


# ----------------------------------------------------------------------------- slow: real processes

def _start(tmp_path: Path, argv: list[str], sleep: float = 0) -> subprocess.Popen:
    """`accelerate launch` (shipped DDP config, 2 processes, fp32) of WORKER with ``argv``."""
    config = _launch_config(tmp_path, "accelerate_ddp.yaml")
    worker = tmp_path / "online_worker.py"
    worker.write_text(ONLINE_WORKER)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RLAIF_TEST_ONLINE_STEP_SLEEP": str(sleep) if sleep else ""}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config),
           "--main_process_port", str(_free_port()), str(worker), *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)


ONLINE_WORKER = """
import os, sys, time
if os.environ.get("RLAIF_TEST_ONLINE_STEP_SLEEP"):  # slow steps, so the test can kill the run mid-way
    from rlaif.train.online import trainer
    real = trainer.rollout_step
    def slow(*args, **kwargs):
        time.sleep(float(os.environ["RLAIF_TEST_ONLINE_STEP_SLEEP"]))
        return real(*args, **kwargs)
    trainer.rollout_step = slow
from rlaif.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        output, _ = proc.communicate()
        pytest.fail(f"2-process run still going after {timeout} s: {output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    return output


def _rollouts(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", "prompt_id", "response", "reward", "finished")} for r in rows]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir):
    """The one-process run of each algorithm, trained once per module, on one thread: the launcher
    runs each process with OMP_NUM_THREADS=1, and a CPU matmul's float result depends on its thread
    count (with this machine's 2 threads the weights differ by ~3e-6 after 3 steps; PPO's value model,
    whose Adam steps of lr 0.1 turn float noise in near-zero gradients into full steps, by 5e-2)."""
    from rlaif.cli import main

    done: dict[tuple, Path] = {}

    def get(algorithm: str, extra: tuple[str, ...]) -> Path:
        if (algorithm, extra) not in done:
            folder = tmp_path_factory.mktemp(f"one-{algorithm}")
            out = folder / "out"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert main(_argv(algorithm, tiny_model_dir, _prompts(folder), out, extra)) == 0
            finally:
                torch.set_num_threads(threads)
            done[(algorithm, extra)] = out
        return done[(algorithm, extra)]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_reach_the_weights_and_rollouts_of_one(tmp_path, tiny_model_dir, one_process, case):
    algorithm, extra = CASES[case]
    want = one_process(algorithm, extra)
    out = tmp_path / "out"
    started = time.monotonic()
    _finish(_start(tmp_path, _argv(algorithm, tiny_model_dir, _prompts(tmp_path), out, extra)))
    print(f"{case}: 2 processes {time.monotonic() - started:.1f} s, max |w2 - w1| {_max_diff(out, want):.2e}")
    assert _rollouts(out) == _rollouts(want), "the same samples, rewards and order as one process"
    assert len(_rollouts(out)) == 3 * 3 * 4
    assert _max_diff(out, want) < TOLERANCE
    assert _max_diff(out, Path(tiny_model_dir), same_keys=False) > 1e-3, "training moved the weights"
    got, exp = _metrics(out), _metrics(want)
    assert [x["step"] for x in got] == [1, 2, 3], "metrics written once, by the main process"
    for g, e in zip(got, exp):  # of the full batch: one process's
        for key in ("reward/mean", "reward/std", "kl", "loss", "grad_norm", "clip_fraction", "entropy"):
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-6), key
    if algorithm == "ppo":
        assert _max_diff(out / "value", want / "value") < TOLERANCE
    if "lora.enabled=true" in extra:
        assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir, one_process):
    extra = ("beta=0.1", "save_steps=1")
    want = one_process("rloo", extra)
    out = tmp_path / "out"
    argv = _argv("rloo", tiny_model_dir, _prompts(tmp_path), out, extra)
    proc = _start(tmp_path, argv, sleep=1.5)
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "step-1").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill(proc)
    output, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {output[-3000:]}"
    assert not (out / "config.json").exists() and (out / "checkpoints" / "step-1" / "trainer_state.json").is_file()

    output = _finish(_start(tmp_path, argv))
    assert "resuming from step" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] >= 1 and summary["steps"] == 3
    assert [x["step"] for x in _metrics(out)] == [1, 2, 3]
    assert _rollouts(out) == _rollouts(want)
    assert _max_diff(out, want) < TOLERANCE


POOL_WORKER = """
import os, sys
from rlaif.train.online.rollouts import RolloutEngine
import test_online_pool  # the fake engine (its module is on PYTHONPATH, so Ray's workers import it too)
RolloutEngine.__init__.__kwdefaults__["engine_factory"] = test_online_pool.fake_factory
built = []
real_init = RolloutEngine.__init__
def counted(self, *args, **kwargs):
    built.append(1)
    real_init(self, *args, **kwargs)
RolloutEngine.__init__ = counted
from rlaif.cli import main
code = main(sys.argv[1:])
print(f"rank {os.environ.get('RANK', '0')} built {len(built)} rollout engine(s)", flush=True)
sys.exit(code)
"""


@pytest.mark.slow
def test_with_a_ray_pool_the_main_process_samples_for_all_and_two_processes_reach_the_weights_of_one(
        tmp_path, tiny_model_dir):
    """rollout.replicas 2 (fake engines on a local Ray): under 2 processes only the main one builds
    the pool and samples the whole step; the rollouts reach rank 1 through the gather."""
    pytest.importorskip("ray")
    worker = tmp_path / "pool_worker.py"
    worker.write_text(POOL_WORKER)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    prompts = _prompts(tmp_path)

    def argv(out: Path) -> list[str]:
        return ["train", "grpo", "--prompts", str(prompts), "--model", tiny_model_dir, "--out", str(out),
                "--reward", f"python:{REWARDS}:short", *[a for a in COMMON if a not in HF_ONLY], "engine=vllm",
                "rollout.replicas=2", "steps=2"]

    one = subprocess.run([sys.executable, str(worker), *argv(tmp_path / "one")], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    config = _launch_config(tmp_path, "accelerate_ddp.yaml")
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config),
           "--main_process_port", str(_free_port()), str(worker), *argv(tmp_path / "two")]
    output = _finish(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                      env=env))
    assert "rank 0 built 1 rollout engine(s)" in output and "rank 1 built 0 rollout engine(s)" in output
    assert _rollouts(tmp_path / "two") == _rollouts(tmp_path / "one")
    assert len({r["reward"] for r in _rollouts(tmp_path / "one")}) > 1, "rewards that differ: the policy learns"
    assert _max_diff(tmp_path / "two", tmp_path / "one") < TOLERANCE
    assert _max_diff(tmp_path / "two", Path(tiny_model_dir), same_keys=False) > 1e-3


@pytest.mark.slow
def test_an_fsdp_accelerate_launch_fails_with_the_one_line_error_and_exit_2(tmp_path, tiny_model_dir):
    """accelerate launch itself exits 1 with torchrun's report of the failed processes: a process
    printed the one-line error and exited 2 before any process group or model was set up (the
    first to exit gets the other SIGTERMed, which may then not have printed its own)."""
    config = _launch_config(tmp_path, "accelerate_fsdp.yaml")
    worker = tmp_path / "online_worker.py"
    worker.write_text(ONLINE_WORKER)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(config),
           "--main_process_port", str(_free_port()), str(worker),
           *_argv("grpo", tiny_model_dir, _prompts(tmp_path), tmp_path / "out", ())]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exitcode: 2" in output
    errors = [x for x in output.splitlines() if x.startswith("rlaif: error:")]
    assert 1 <= len(errors) <= 2 and all("FSDP is not supported by the online trainers" in x for x in errors)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_ranks_vllm_engine_sees_its_own_gpu_and_none_of_the_launchers_variables(monkeypatch):
    from rlaif.train.online.distributed import engine_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with engine_env(Dist(world=2, rank=1, local_rank=1, device=torch.device("cuda", 1))):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ
    assert (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["RANK"], os.environ["MASTER_PORT"]) == ("3,5", "1", "29500")
    with engine_env(Dist(world=2, rank=1, device=torch.device("cpu"))):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5" and "RANK" not in os.environ
    with engine_env(Dist()):  # one process: nothing changes
        assert os.environ["RANK"] == "1"


def test_the_cli_leaves_the_process_group_it_ran_in(tmp_path, capsys):
    """A rank that exits with gloo's process group alive may abort at interpreter exit ("terminate
    called without an active exception", seen in CI after a run had saved): `rlaif.cli.main` destroys
    the group on its way out, on success and on error alike."""
    from rlaif.cli import main

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["train", "grpo", "--prompts", str(tmp_path / "missing.jsonl"), "--model", "m",
                     "--out", str(tmp_path / "out"), "--reward", "python:x.py:f"]) == 2
        assert "rlaif: error:" in capsys.readouterr().err
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
