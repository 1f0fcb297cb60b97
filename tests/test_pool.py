"""Engine replicas on a local Ray (`rlaif.backends.pool`), with fake engines: the same bytes as one
engine whatever the fleet, a replica killed mid-run (its chunk goes to another, nothing lost or
duplicated), engine errors and a missing Ray as one-line errors, resume after kill -9 of the driver.

One Ray per module (start-up ~5 s on 2 cores); the driver-kill test starts its own in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from processes import has_rows, run_and_signal  # noqa: E402
from rlaif.backends import load_backend  # noqa: E402
from rlaif.backends.base import BackendConfig, SamplingParams  # noqa: E402
from rlaif.backends.fake import FakeBackend  # noqa: E402
from rlaif.backends.pool import EnginePool, call_method  # noqa: E402
from rlaif.dataset.options import RunConfig  # noqa: E402
from rlaif.dataset.pipeline import run_all  # noqa: E402
from rlaif.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "prompts" / "demo.jsonl"
# every judging method: logprob, pairwise, verdict, likelihood (response_logprobs), rules
RUBRICS = ["helpfulness", "overall_preference", "truthfulness", "answer_likelihood", "answer_checks"]
SLOW_S = 0.25  # the slow fake's seconds per engine call: long enough to kill a replica mid-chunk


class SlowFake(FakeBackend):
    """The fake engine, taking ``SLOW_S`` per call (so chunks overlap on two replicas)."""

    def chat(self, *args, **kwargs):
        time.sleep(SLOW_S)
        return super().chat(*args, **kwargs)

    def choice_logprobs(self, *args, **kwargs):
        time.sleep(SLOW_S)
        return super().choice_logprobs(*args, **kwargs)


def slow_factory(config: BackendConfig) -> FakeBackend:
    return SlowFake(config)


class WeightedFake(FakeBackend):
    """Records the weights it was given (an online trainer's weight sync)."""

    weights_sum = 0.0

    def update_weights(self, named_tensors, timeout_s: float = 600.0) -> None:
        self.weights_sum = float(sum(t.sum() for _, t in named_tensors))


def weighted_factory(config: BackendConfig) -> FakeBackend:
    return WeightedFake(config)


def failing_factory(config: BackendConfig) -> FakeBackend:
    raise UserError("option 'policy.model': no such model (raised inside the replica)")


def init_ray() -> None:
    """A local Ray whose workers import this test file (the factories above)."""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module."""
    init_ray()
    yield
    ray.shutdown()


def prompts_file(tmp_path: Path, n: int) -> str:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:n]))
    return str(f)


def run_config(tmp_path: Path, out: str, replicas: int, n_prompts: int = 10) -> RunConfig:
    engine = BackendConfig(engine="fake", replicas=replicas)
    return RunConfig(prompts=prompts_file(tmp_path, n_prompts), out=str(tmp_path / out), policy=engine,
                     judge=replace(engine), rubrics=list(RUBRICS), n=3, chunk_size=2, judge_chunk_size=2,
                     progress=False)


def outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("candidates.jsonl", "judgements.jsonl")}


def test_two_replicas_write_the_bytes_of_one_engine(tmp_path):
    run_all(run_config(tmp_path, "one", 1))
    run_all(run_config(tmp_path, "two", 2))
    one, two = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert one == two
    methods = {json.loads(line)["method"] for line in one["judgements.jsonl"].splitlines()}
    assert methods == {"logprob", "pairwise", "verdict", "likelihood", "rules"}
    assert ray.util.list_named_actors() == []  # the pool ended its actors; the module's Ray still runs


def test_replica_killed_mid_run_loses_and_duplicates_nothing(tmp_path, capsys):
    run_all(run_config(tmp_path, "one", 1, n_prompts=16))  # the slow fake only sleeps: same replies
    cfg = run_config(tmp_path, "two", 2, n_prompts=16)
    work = tmp_path / "two" / ".rlaif" / "candidates.jsonl"
    killed: list[str] = []

    def kill_one_replica() -> None:  # once the first chunk is saved, both replicas are busy
        deadline = time.time() + 60
        while time.time() < deadline and not has_rows(work):
            time.sleep(0.01)
        name = sorted(ray.util.list_named_actors())[0]
        ray.kill(ray.get_actor(name))
        killed.append(name)

    killer = threading.Thread(target=kill_one_replica)
    killer.start()
    run_all(cfg, factory=slow_factory)
    killer.join()
    assert killed and "an engine replica died" in capsys.readouterr().err
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")
    ids = [json.loads(line)["id"] for line in (tmp_path / "two" / "candidates.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 16  # each chunk written once, none missing


def test_pool_backend_calls_match_one_engine():
    fake = FakeBackend(BackendConfig(engine="fake"))
    pool = EnginePool(BackendConfig(engine="fake", replicas=2), load_backend)
    try:
        convs = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
        params = SamplingParams(n=2, max_tokens=8)
        assert pool.model_id == fake.model_id
        assert pool.chat(convs, params, seeds=list(range(5))) == fake.chat(convs, params, seeds=list(range(5)))
        assert pool.chat(convs, params) == fake.chat(convs, params)
        assert pool.choice_logprobs(convs, ["1", "2"], "Score: ") == fake.choice_logprobs(convs, ["1", "2"], "Score: ")
        replies = [f"answer {i}" for i in range(5)]
        assert pool.response_logprobs(convs, replies) == fake.response_logprobs(convs, replies)
        assert pool.chat([], params) == []
        assert pool.call_all_with(call_method, "close", (), {}) == [None, None]
    finally:
        pool.close()
    assert ray.is_initialized()  # a Ray the pool did not start is left running


def test_every_replica_dead_is_a_user_error():
    pool = EnginePool(BackendConfig(engine="fake", replicas=2), slow_factory)
    try:
        for actor in list(pool.actors):
            ray.kill(actor)
        with pytest.raises(UserError, match="every engine replica died"):
            list(pool.map_chunks(lambda engine, x: x, [(1,), (2,), (3,)]))
    finally:
        pool.close()


def test_engine_errors_reach_the_driver_as_they_are():
    with pytest.raises(UserError, match="raised inside the replica"):
        EnginePool(BackendConfig(engine="fake", replicas=2), failing_factory)
    pool = EnginePool(BackendConfig(engine="fake", replicas=2), load_backend)
    try:
        with pytest.raises(ValueError, match="3 responses for 2 conversations"):
            pool.map_chunks(lambda engine: engine.response_logprobs([[]] * 2, ["a"] * 3), [()]).__next__()
    finally:
        pool.close()


def test_gpus_per_replica_and_too_many_refused(monkeypatch):
    from rlaif.backends.pool import _gpus_per_replica

    assert _gpus_per_replica(BackendConfig(engine="vllm", tensor_parallel_size=4), 8) == 4
    assert _gpus_per_replica(BackendConfig(engine="vllm", tensor_parallel_size=4), 0) == 0  # CPU cluster
    assert _gpus_per_replica(BackendConfig(engine="openai"), 8) == 0
    assert _gpus_per_replica(BackendConfig(engine="hf", device="cpu"), 8) == 0
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 4.0})
    with pytest.raises(UserError, match=r"2 replicas x 4 GPUs .* need 8 GPUs; the Ray cluster has 4"):
        EnginePool(BackendConfig(engine="vllm", replicas=2, tensor_parallel_size=4), load_backend)
    assert ray.util.list_named_actors() == []


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"option 'judge.replicas'.*pip install 'rlaif\[ray\]'"):
        EnginePool(BackendConfig(engine="fake", replicas=2), load_backend, role="judge")


DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from dataclasses import replace
from rlaif.backends.base import BackendConfig
from rlaif.dataset.options import RunConfig
from rlaif.dataset.pipeline import run_all
from test_pool import RUBRICS, slow_factory
engine = BackendConfig(engine="fake", replicas=int(sys.argv[2]))
run_all(RunConfig(prompts={prompts!r}, out=sys.argv[1], policy=engine, judge=replace(engine), rubrics=RUBRICS, n=3,
                  chunk_size=2, judge_chunk_size=2, progress=False), factory=slow_factory)
"""


def test_driver_kill_9_then_resume_with_replicas(tmp_path):
    """A driver with its own local Ray, killed with SIGKILL mid-generation, then mid-judging: the
    resumed run (2 replicas) ends with the bytes of an uninterrupted 1-engine run."""
    script = DRIVER.format(tests=str(Path(__file__).parent), prompts=prompts_file(tmp_path, 12))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}

    def drive(out: str, replicas: int, kill_when: Path | None = None) -> None:
        # own process group: Ray's raylet and GCS follow the driver, its dashboard and runtime-env
        # agents can linger (Ray 2.60); the helper ends what is left so the test leaves nothing behind
        ended = run_and_signal([sys.executable, "-c", script, str(tmp_path / out), str(replicas)], kill_when,
                               sig=signal.SIGKILL, timeout=240, env=env, new_session=True)
        assert ended.returncode == (0 if kill_when is None else -signal.SIGKILL), ended.stderr[-2000:]

    run_all(run_config(tmp_path, "one", 1, n_prompts=12))  # in process, the plain fake (same replies)
    work = tmp_path / "two" / ".rlaif"
    drive("two", 2, kill_when=work / "candidates.jsonl")
    assert not (tmp_path / "two" / "candidates.jsonl").exists()
    drive("two", 2, kill_when=work / "judgements.jsonl")
    assert not (tmp_path / "two" / "judgements.jsonl").exists()
    drive("two", 2)
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")


def test_one_replica_never_imports_ray(tmp_path):
    code = ("import sys\nfrom rlaif.cli import main\n"
            f"main(['run', '--prompts', {prompts_file(tmp_path, 4)!r}, '--rubric', 'helpfulness', '--out', "
            f"{str(tmp_path / 'out')!r}, 'policy.engine=fake', 'progress=false'])\n"
            "assert 'ray' not in sys.modules, 'ray imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_run_with_replicas_shares_one_pool_for_policy_and_judge(tmp_path):
    """Through the CLI (local Ray started and stopped by the run): judge.* follows policy.replicas."""
    code = ("import sys\nfrom rlaif.cli import main\n"
            f"sys.exit(main(['run', '--prompts', {prompts_file(tmp_path, 4)!r}, '--rubric', 'helpfulness', "
            f"'--out', {str(tmp_path / 'out')!r}, 'policy.engine=fake', 'policy.replicas=2', 'progress=false']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stages"]["judge"]["config"]["judge"]["replicas"] == 2
    assert len((tmp_path / "out" / "judgements.jsonl").read_text().splitlines()) == 4


def test_unreachable_cluster_address_is_one_line():
    from rlaif.backends.base import RayOptions
    from servers import free_port

    ray.shutdown()  # the pool only joins a cluster when this process has no Ray yet
    try:
        start = time.monotonic()
        with pytest.raises(UserError, match=r"option 'ray.address': nothing answers at 127.0.0.1:\d+"):
            EnginePool(BackendConfig(engine="fake", replicas=2), load_backend,
                       RayOptions(address=f"127.0.0.1:{free_port()}"))
        assert time.monotonic() - start < 15 and not ray.is_initialized()
    finally:
        init_ray()


def test_update_weights_reaches_every_replica():
    import torch

    pool = EnginePool(BackendConfig(engine="fake", replicas=2), weighted_factory)
    try:
        pool.update_weights([("a", torch.ones(3)), ("b", torch.full((2,), 2.0))])
        assert pool.call_all_with(_weights_sum) == [7.0, 7.0]
    finally:
        pool.close()


def _weights_sum(engine) -> float:
    return engine.weights_sum
