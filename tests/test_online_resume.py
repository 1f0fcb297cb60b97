"""Resume of the online trainers (a run stopped at a checkpoint and resumed equals the run straight
through: GRPO, RLOO, with LoRA, with dynamic sampling) and dynamic sampling itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train.config import LoraOptions
from rlaif.train.online.config import CONFIGS, PPOConfig, RolloutOptions, check_config
from rlaif.train.online.dynamic import informative
from rlaif.train.online.state import PromptSampler, prompt_order
from tests.conftest import build_tiny_model

ASSETS = Path(__file__).parent / "assets"
REWARDS = ASSETS / "rewards_trainer.py"
FINAL = ("summary.json", "config.json", "model.safetensors", "adapter")  # what only the end of a run writes


def config(algorithm: str, tmp_path: Path, model: str, out: str = "out", reward: str = "short", **kw: object) -> object:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say something about {i}."}) + "\n"
                               for i in range(5)))
    base = dict(prompts=str(prompts), model=model, out=str(tmp_path / out), reward=[f"python:{REWARDS}:{reward}"],
                engine="hf", steps=3, save_steps=2, k=2, prompts_per_step=2, max_tokens=6, micro_batch_size=4,
                progress=False, log_rollouts_every=1, lr=1e-2)
    base.update(kw)
    return CONFIGS[algorithm](**base)


def metrics(out: Path) -> list[dict[str, float]]:
    """metrics.jsonl without the timings and memory (they differ between any two runs)."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if not k.startswith(("time/", "memory/")) and k != "rollout/tokens_per_s"}
            for x in lines]


def trained(out: Path, lora: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / ("adapter/adapter_model.safetensors" if lora else "model.safetensors")))


def stop_after_checkpoint(out: Path, copy: Path) -> Path:
    """A copy of a finished run's folder as a kill after its last checkpoint leaves it (no final files)."""
    shutil.copytree(out, copy)
    for name in FINAL:
        shutil.rmtree(copy / name, ignore_errors=True)
        (copy / name).unlink(missing_ok=True)
    return copy


def test_prompt_sampler_is_a_cursor_over_the_seeded_shuffles():
    whole = prompt_order(5, 3, 0, 12)
    assert sorted(whole[:5]) == sorted(whole[5:10]) == list(range(5)) and whole[:5] != whole[5:10]
    sampler = PromptSampler(5, 3)
    assert sampler.take(2) + sampler.take(7) + sampler.take(3) == whole and sampler.position == 12
    assert PromptSampler(5, 3, position=4).take(6) == whole[4:10]  # resumed at a saved position
    assert prompt_order(5, 3, 2, 3) == whole[6:9]  # fixed steps: step * per_step


def test_informative_groups_exclude_masked_samples():
    assert informative([1.0, 1.0, 1.0, 1.0, None, 2.0, 2.0, None, 2.0], 3) == [False, True, False]
    assert informative([0.5, None, 0.5, 0.5], 2) == [False, False]  # one unmasked sample: no variance


@pytest.mark.parametrize("algorithm,extra", [
    ("grpo", {}),
    ("rloo", {}),
    ("grpo", {"dynamic_sampling": True, "reward": "flat_on_even_ids"}),
    ("rloo", {"lora": True, "dynamic_sampling": True, "reward": "flat_on_even_ids"}),
], ids=["grpo", "rloo", "grpo-dynamic", "rloo-lora-dynamic"])
def test_resumed_run_equals_the_straight_run(algorithm, extra, tmp_path, tiny_model_dir):
    """Steps 1-3 straight, against the same run stopped after checkpoint step-2 (the final files
    removed, as after a kill) and resumed: the same metrics per step and the same final weights."""
    from rlaif.train.online.trainer import train_online

    lora = bool(extra.pop("lora", False))
    if lora:
        extra["lora"] = LoraOptions(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    straight = config(algorithm, tmp_path, tiny_model_dir, "straight", **extra)
    train_online(straight)
    stopped = stop_after_checkpoint(Path(straight.out), tmp_path / "stopped")
    summary = train_online(config(algorithm, tmp_path, tiny_model_dir, "stopped", **extra))
    assert summary["resumed_from"] == 2
    assert metrics(stopped) == metrics(Path(straight.out))
    a, b = trained(stopped, lora), trained(Path(straight.out), lora)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_dynamic_sampling_drops_flat_groups_and_refills(tmp_path, tiny_model_dir):
    from rlaif.train.online.trainer import train_online

    cfg = config("grpo", tmp_path, tiny_model_dir, reward="flat_on_even_ids", dynamic_sampling=True, steps=3,
                 max_refill_rounds=8)
    train_online(cfg)
    out = Path(cfg.out)
    lines = metrics(out)
    rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    for step, line in enumerate(lines, 1):
        ids = [r["prompt_id"] for r in rows if r["step"] == step]
        assert len(ids) == 2 * 2 and all(int(i[1:]) % 2 == 1 for i in ids)  # full batch, only odd (varied) ids
        assert line["dynamic/groups_kept"] == 2
        assert line["dynamic/prompts_consumed"] == 2 + line["dynamic/groups_dropped"]  # each drop refilled once
    assert sum(line["dynamic/groups_dropped"] for line in lines) > 0
    assert sum(line["dynamic/refill_rounds"] for line in lines) > 0
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["prompt_position"] == sum(line["dynamic/prompts_consumed"] for line in lines[:2])


def test_dynamic_sampling_short_of_groups_trains_on_what_there_is_and_says_so_once(tmp_path, tiny_model_dir, capsys):
    from rlaif.train.online.trainer import train_online

    cfg = config("grpo", tmp_path, tiny_model_dir, reward="constant", dynamic_sampling=True, steps=2, save_steps=0,
                 max_refill_rounds=1)
    train_online(cfg)
    lines = metrics(Path(cfg.out))
    assert [x["dynamic/refill_rounds"] for x in lines] == [1, 1]
    assert [x["dynamic/groups_kept"] for x in lines] == [0, 0]
    assert [x["dynamic/prompts_consumed"] for x in lines] == [4, 4]  # 2, then 2 in the refill round
    assert capsys.readouterr().err.count("dynamic sampling: 0 of 2 groups") == 1


def test_dynamic_sampling_is_refused_for_ppo_and_its_rounds_range_checked(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    base = dict(prompts=str(prompts), out=str(tmp_path / "out"), reward=["python:f.py:f"])
    with pytest.raises(UserError, match="dynamic_sampling"):
        check_config(PPOConfig(**base, dynamic_sampling=True))
    with pytest.raises(UserError, match="max_refill_rounds"):
        check_config(CONFIGS["grpo"](**base, max_refill_rounds=-1))


class EntropyCoef:
    """Stand-in for the entropy coefficient controller another module adds as ``run.entropy_coef``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def test_checkpoint_restores_entropy_kl_sampler_and_syncs_the_engine(tmp_path):
    from types import SimpleNamespace

    from rlaif.train.online.state import checkpoint_run, load_checkpoint, restore_run

    class Engine:
        synced = 0

        def sync(self, model: torch.nn.Module) -> float:
            self.synced += 1
            return 0.0

    def run() -> SimpleNamespace:
        policy = torch.nn.Linear(2, 2)
        return SimpleNamespace(policy=policy, value_model=None, optimizer=torch.optim.AdamW(policy.parameters()),
                               kl=SimpleNamespace(value=0.05), entropy_coef=EntropyCoef(0.01), engine=Engine(),
                               sampler=PromptSampler(5, 0, 0))

    cfg = SimpleNamespace(save_total_limit=0, prompts_per_step=2, seed=0)
    before = run()
    before.kl.value, before.entropy_coef.value, before.sampler.position = 0.2, 0.003, 7
    path = checkpoint_run(cfg, before, tmp_path, 3, {"fingerprint": "f"})
    after = run()
    restore_run(cfg, after, load_checkpoint(path, after.policy, None, after.optimizer), 5)
    assert (after.kl.value, after.entropy_coef.value, after.sampler.position) == (0.2, 0.003, 7)
    assert after.engine.synced == 1


@pytest.mark.slow
def test_resumed_vllm_engine_samples_from_the_restored_lora_weights(tmp_path, tiny_tokenizer_dir):
    """vLLM is built from the base weights; on resume it must get the checkpoint's (LoRA merged):
    the first resumed step's logprob_gap (engine vs trainer log-probs of the sampled tokens) is ~0,
    as it is in the straight run, not the gap of a policy one large update away."""
    from rlaif.train.online.trainer import train_online

    model = build_tiny_model(tmp_path / "model", tiny_tokenizer_dir, hidden=256)  # head_dim 64: vLLM's CPU kernels
    # dropout 0: LoRA dropout in the train-mode update forward would itself move the trainer's log-probs
    lora = LoraOptions(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    extra = dict(engine="vllm", lora=lora, steps=2, save_steps=1, lr=0.1, max_tokens=8,
                 rollout=RolloutOptions(max_model_len=256))
    straight = config("grpo", tmp_path, model, "straight", **extra)
    train_online(straight)
    stopped = stop_after_checkpoint(Path(straight.out), tmp_path / "stopped")
    assert train_online(config("grpo", tmp_path, model, "stopped", **extra))["resumed_from"] == 1
    gaps = [x["logprob_gap"] for x in metrics(stopped)]
    print(f"logprob_gap straight {[x['logprob_gap'] for x in metrics(Path(straight.out))]}, resumed {gaps}")
    assert gaps[1] < 1e-3


def test_dynamic_sampling_off_keeps_the_settings_of_runs_made_before_it(tmp_path):
    from dataclasses import replace

    from rlaif.train.online.state import run_settings

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    off = CONFIGS["grpo"](prompts=str(prompts), out=str(tmp_path / "out"), reward=["python:f.py:f"])
    assert not {"dynamic_sampling", "max_refill_rounds"} & run_settings(off).keys()  # old checkpoints still resume
    on = run_settings(replace(off, dynamic_sampling=True))
    assert on["dynamic_sampling"] is True and on["fingerprint"] != run_settings(off)["fingerprint"]


def test_a_later_option_marked_off_is_left_out_of_the_settings_at_that_value(tmp_path):
    """An option added after runs were checkpointed is marked on its field (`option(..., off=...)`, its
    dependents `parent=...`); at the off value both are left out of the settings, so old runs resume."""
    from dataclasses import dataclass

    from rlaif.config import option
    from rlaif.train.online.config import GRPOConfig
    from rlaif.train.online.state import run_settings

    @dataclass
    class Newer(GRPOConfig):
        knob: str = option("none", "an option added in a later release", off="none")
        knob_size: int = option(3, "knob: how much", parent="knob")

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    base = dict(prompts=str(prompts), out=str(tmp_path / "out"), reward=["python:f.py:f"])
    off = run_settings(Newer(**base))
    assert not {"knob", "knob_size"} & off.keys() and off == run_settings(GRPOConfig(**base))
    on = run_settings(Newer(**base, knob="more"))
    assert (on["knob"], on["knob_size"]) == ("more", 3) and on["fingerprint"] != off["fingerprint"]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "ppo"])
def test_the_settings_of_a_run_made_by_the_previous_release_are_unchanged(algorithm, tmp_path, monkeypatch):
    """tests/assets/online_settings_0.1.0.json: `run_settings` of a default run, written by rlaif 0.1.0.
    Equal settings (and fingerprint) are what lets such a run resume: a new option left out of this
    needs a marker, `option(..., off=VALUE)` (or ``parent=``), or every earlier run stops resuming."""
    from rlaif.train.online.state import run_settings

    recorded = json.loads((ASSETS / "online_settings_0.1.0.json").read_text())
    monkeypatch.chdir(tmp_path)
    Path(recorded["config"]["prompts"]).write_text(recorded["prompts_jsonl"])
    now = run_settings(CONFIGS[algorithm](**recorded["config"]))
    old = recorded["settings"][algorithm]
    assert sorted(now.keys() - old.keys()) == [], "new options in the settings: mark them off=... on their field"
    assert sorted(old.keys() - now.keys()) == [], "options gone from the settings: runs made with them stop resuming"
    assert {k: v for k, v in json.loads(json.dumps(now)).items() if old[k] != v} == {}
    assert now["fingerprint"] == old["fingerprint"]


def test_a_run_checkpointed_under_an_old_default_is_told_which_option_to_pass(tmp_path, capsys):
    """PPO's epochs_per_step was 4 on CPU too; now its default is 1 there (4 on a GPU). A run checkpointed
    with the old default is refused in one line naming the ``key=value`` that resumes it."""
    from dataclasses import replace

    from rlaif.cli import main
    from rlaif.train.online.config import resolve_device_defaults
    from rlaif.train.online.state import run_settings

    cfg = config("ppo", tmp_path, "tiny-model")
    resolve_device_defaults(cfg)
    old = 4 if cfg.epochs_per_step != 4 else 1  # the default that was: one the device does not give now
    step = Path(cfg.out) / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text(json.dumps({"step": 2, "settings":
                                                         run_settings(replace(cfg, epochs_per_step=old))}))
    argv = ["train", "ppo", "--prompts", cfg.prompts, "--model", "tiny-model", "--out", cfg.out, "--reward",
            cfg.reward[0], "save_steps=2", "k=2", "prompts_per_step=2", "max_tokens=6", "micro_batch_size=4",
            "engine=hf", "steps=3", "lr=0.01", "progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (f"{step}: was checkpointed with epochs_per_step={old}, a default that has changed since (now "
            f"epochs_per_step={cfg.epochs_per_step}); pass epochs_per_step={old} to resume it") in err
    assert main([*argv, "lr=0.02"]) == 2  # a difference the user chose: the usual refusal names it
    err = capsys.readouterr().err
    assert "lr 0.01 -> 0.02" in err and "pass epochs_per_step" not in err
    from rlaif.train.online.state import check_online_out

    resumed = replace(cfg, epochs_per_step=old)  # what the message says to pass
    assert check_online_out(resumed, Path(cfg.out), run_settings(resumed)) is None  # None: train, resuming
