"""Online RL rollouts on engine replicas (`RolloutEngine` with ``replicas`` > 1) on a local Ray, with
a fake engine that samples from per-prompt seeds and stamps every log-prob with the weights it
last loaded: the rollouts of one engine whatever the fleet, every replica loads every sync, and a
replica that dies (mid-step or between steps) loses nothing and leaves the others with the current
weights. One Ray for the module (start-up ~5 s on 2 cores)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ray = pytest.importorskip("ray")

from rlaif.backends.base import BackendConfig, Completion, Generation  # noqa: E402
from rlaif.backends.pool import EnginePool  # noqa: E402
from rlaif.train.online.rollouts import RolloutEngine  # noqa: E402

SLOW_S = 0.3  # seconds per generate_ids call: long enough to kill a replica while it samples
PROMPTS = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], [11, 12]]  # 5 prompts: parts of 2 and 3 on 2 replicas


class RolloutFake:
    """A rollout engine without a model: prompt i's sample j is drawn from Random(seed_i + j)
    (never an EOS, ids >= 20), and every token's log-prob is minus the sum of the weights it last
    loaded (0 before any), so a rollout shows which weights sampled it."""

    def __init__(self, config: BackendConfig) -> None:
        self.model_id = "fake-rollout"
        self.version = 0.0
        self.loads = 0
        self.prompts_seen = 0

    def generate_ids(self, prompts, params, seeds=None, progress=True):
        time.sleep(SLOW_S)
        self.prompts_seen += len(prompts)
        out = []
        for p, s in zip(prompts, seeds):
            comps = []
            for j in range(params.n):
                rng = random.Random(s * 1000 + j)
                ids = [rng.randrange(20, 200) for _ in range(params.max_tokens)]
                comps.append(Completion(text=" ".join(map(str, ids)), num_tokens=len(ids), finish_reason="length",
                                        token_ids=ids, logprobs=[-self.version] * len(ids)))
            out.append(Generation(completions=comps, prompt_tokens=len(p)))
        return out

    def update_weights(self, named_tensors, timeout_s: float = 600.0) -> None:
        self.received = {name: t.clone() for name, t in named_tensors}
        self.version = float(sum(t.double().sum() for t in self.received.values()))
        self.loads += 1

    def close(self) -> None:
        pass


class Bf16Fake(RolloutFake):
    """Says, as a vLLM engine does, that it holds its weights in bfloat16."""

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_config=SimpleNamespace(dtype=torch.bfloat16)))


def bf16_factory(config: BackendConfig) -> RolloutFake:
    return Bf16Fake(config)


def fake_factory(config: BackendConfig) -> RolloutFake:
    assert config.engine == "vllm" and config.enable_sample_logprobs and config.replicas == 1
    return RolloutFake(config)


def _received(engine: RolloutFake) -> dict[str, torch.Tensor]:
    return engine.received


def _state(engine: RolloutFake) -> tuple[float, int, int]:
    return engine.version, engine.loads, engine.prompts_seen


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray whose workers import this test file (the fake above)."""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture()
def model(tiny_model_dir: str):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def make(tiny_model_dir: str, replicas: int) -> RolloutEngine:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return RolloutEngine("vllm", tiny_model_dir, tok, max_prompt_length=64, engine_factory=fake_factory,
                         backend_options=BackendConfig(replicas=replicas, max_model_len=256))


def sample(engine: RolloutEngine) -> list[tuple]:
    out = engine.generate(PROMPTS, 2, temperature=1.0, top_p=1.0, max_tokens=4, seed=11)
    return [(r.prompt_index, r.prompt_ids, r.completion_ids, r.engine_logprobs, r.text, r.finished) for r in out]


def stamps(rollouts: list[tuple]) -> list[float]:
    """The distinct log-probs of the rollouts: minus the weights' sum each sampling replica held."""
    return sorted({lp for r in rollouts for lp in r[3]})


def weights_sum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def perturb(model, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


def test_two_replicas_sample_one_engines_rollouts_and_every_replica_loads_every_sync(tiny_model_dir, model):
    one, two = make(tiny_model_dir, 1), make(tiny_model_dir, 2)
    try:
        assert isinstance(one.backend, RolloutFake) and two.replicas == 2
        assert sample(two) == sample(one)
        assert [s[2] for s in two.backend.call_all_with(_state)] == [2, 3]  # contiguous parts, one per replica
        for step in range(2):
            perturb(model, step)
            seconds = two.sync(model)
            one.sync(model)
            assert seconds > 0 and two.last_sync_s == seconds and two.replicas == 2
            want = weights_sum(model)
            states = two.backend.call_all_with(_state)
            assert [(v, n) for v, n, _ in states] == [(pytest.approx(want), step + 1)] * 2
            rollouts = sample(two)
            assert rollouts == sample(one)
            assert stamps(rollouts) == [pytest.approx(-want)]
    finally:
        one.close()
        two.close()
    assert ray.util.list_named_actors() == []


def test_replica_killed_mid_step_loses_nothing_and_its_part_sees_the_current_weights(tiny_model_dir, model, capsys):
    one, two = make(tiny_model_dir, 1), make(tiny_model_dir, 2)
    try:
        perturb(model, 7)
        one.sync(model)
        two.sync(model)
        want = sample(one)
        victim = two.backend.actors[1]

        def kill() -> None:  # both replicas are sampling their part by then
            time.sleep(SLOW_S / 2)
            ray.kill(victim)

        killer = threading.Thread(target=kill)
        killer.start()
        got = sample(two)
        killer.join()
        assert got == want  # the dead one's part re-sampled by the other, with the synced weights
        assert len(got) == 2 * len(PROMPTS) and "an engine replica died" in capsys.readouterr().err
        assert two.backend.call_all_with(_state)[0][2] == len(PROMPTS)  # the survivor sampled every prompt
        perturb(model, 8)
        two.sync(model)
        one.sync(model)
        assert two.replicas == 1 and sample(two) == sample(one)
    finally:
        one.close()
        two.close()


def test_replica_dead_before_a_sync_is_dropped_and_the_others_load_it(tiny_model_dir, model, capsys):
    two = make(tiny_model_dir, 2)
    try:
        ray.kill(two.backend.actors[0])
        perturb(model, 3)
        two.sync(model)
        assert two.replicas == 1 and "it gets no more work" in capsys.readouterr().err
        assert two.backend.call_all_with(_state)[0][:2] == (pytest.approx(weights_sum(model)), 1)
        assert stamps(sample(two)) == [pytest.approx(-weights_sum(model))]
    finally:
        two.close()


def test_one_replica_is_the_in_process_engine_without_ray(tiny_model_dir):
    code = ("import sys; from transformers import AutoTokenizer; from rlaif.backends.base import BackendConfig; "
            "from rlaif.train.online.rollouts import RolloutEngine; d = sys.argv[1]; "
            "e = RolloutEngine('vllm', d, AutoTokenizer.from_pretrained(d), max_prompt_length=8, "
            "engine_factory=lambda c: ('built', c.replicas), backend_options=BackendConfig(replicas=1)); "
            "assert e.backend == ('built', 1), e.backend; assert 'ray' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, tiny_model_dir], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_weights_reach_every_replica_with_their_dtype_shape_and_values():
    sent = {"bf16": torch.randn(3, 5).to(torch.bfloat16), "scalar": torch.tensor(2.5), "int": torch.arange(6),
            "strided": torch.randn(4, 6).t(), "half": torch.randn(7, dtype=torch.float16)}
    pool = EnginePool(BackendConfig(engine="vllm", replicas=2, enable_sample_logprobs=True), fake_factory)
    try:
        assert pool.update_weights(sent.items()) == 2
        for got in pool.call_all_with(_received):
            assert list(got) == list(sent)
            for name, t in sent.items():
                assert got[name].dtype == t.dtype and got[name].shape == t.shape and torch.equal(got[name], t), name
    finally:
        pool.close()


@pytest.mark.parametrize("visible, local, want", [(None, None, "1,2,3"), ("4,5,6", None, "5,6"),
                                                   (None, "2", "2,3"), ("7", None, "")])
def test_local_ray_keeps_the_trainers_gpus_and_launch_variables_out(monkeypatch, visible, local, want):
    """On a GPU node (faked here): while the pool starts its local Ray, CUDA_VISIBLE_DEVICES holds the
    GPUs besides the trainers' and no launcher variable is set; all is restored after."""
    from rlaif.train.online import rollouts

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in (("CUDA_VISIBLE_DEVICES", visible), ("LOCAL_WORLD_SIZE", local)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", "29500")
    before = dict(os.environ)
    with rollouts.local_ray_env(None):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == want
        assert not any(k in os.environ for k in ("MASTER_PORT", "LOCAL_WORLD_SIZE"))
    assert dict(os.environ) == before
    with rollouts.local_ray_env(rollouts.RayOptions(address="auto")):  # a cluster of the user's: untouched
        assert dict(os.environ) == before


def test_weights_travel_in_the_engines_dtype(tiny_model_dir, model):
    """A bf16 engine would round the float32 weights on load: they are cast before the transfer."""
    engine = RolloutEngine("vllm", tiny_model_dir, AutoTokenizer.from_pretrained(tiny_model_dir), max_prompt_length=8,
                           engine_factory=bf16_factory, backend_options=BackendConfig(replicas=2))
    try:
        assert engine.wire_dtype == torch.bfloat16
        engine.sync(model)
        want = dict(model.named_parameters())
        for got in engine.backend.call_all_with(_received):
            assert set(got) == set(want)
            for name, t in got.items():
                assert t.dtype == torch.bfloat16 and torch.equal(t, want[name].detach().to(torch.bfloat16)), name
    finally:
        engine.close()
    assert make(tiny_model_dir, 1).wire_dtype is None  # in process: the engine's own copy casts
