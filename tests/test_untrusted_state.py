"""Resume state and caches are read in formats that cannot run code (issue 20, item 7)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train.online.state import load_checkpoint, save_checkpoint


class Payload:
    """A pickle that touches ``marker`` when unpickled: what a hostile checkpoint could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = save_checkpoint(tmp_path / "out", 1, 0, {"fingerprint": "x"}, model, None, optimizer, None, 2)
    return path, model, optimizer


def test_online_checkpoint_restores_every_rng_bit_for_bit(tmp_path):
    np = pytest.importorskip("numpy")
    random.seed(3), torch.manual_seed(3), np.random.seed(3)
    path, model, optimizer = _checkpoint(tmp_path)
    expected = (random.random(), random.gauss(0, 1), torch.rand(3).tolist(), np.random.rand(3).tolist())
    random.seed(9), torch.manual_seed(9), np.random.seed(9)
    load_checkpoint(path, model, None, optimizer)
    assert (random.random(), random.gauss(0, 1), torch.rand(3).tolist(), np.random.rand(3).tolist()) == expected


def test_online_checkpoint_holds_no_pickle_that_can_run_code(tmp_path):
    path, model, optimizer = _checkpoint(tmp_path)
    for file in path.glob("*.pt"):  # every .pt file loads with weights_only=True
        torch.load(file, weights_only=True)


def test_a_hostile_rng_file_runs_no_code_on_resume(tmp_path):
    path, model, optimizer = _checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    for file in ("rng.pt", "rng_tensors.pt"):
        torch.save({"python": Payload(marker)}, path / file)
    try:
        load_checkpoint(path, model, None, optimizer)
    except UserError:
        pass
    assert not marker.exists()


def test_an_old_format_checkpoint_is_refused_with_one_line(tmp_path):
    path, model, optimizer = _checkpoint(tmp_path)
    for file in path.glob("rng*"):
        file.unlink()
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, path / "rng.pt")
    with pytest.raises(UserError, match="older rlaif") as e:
        load_checkpoint(path, model, None, optimizer)
    assert "\n" not in str(e.value)


def test_a_hostile_dpo_reference_cache_runs_no_code_and_is_recomputed(tmp_path):
    from rlaif.train.dpo import Reference

    marker = tmp_path / "pwned"
    torch.save({"key": Payload(marker)}, tmp_path / "ref_logps.pt")
    cfg = SimpleNamespace(reference="precompute", lora=SimpleNamespace(enabled=False))
    run = SimpleNamespace(out=tmp_path, base="base", train=[], test=[])
    ref = Reference(cfg, run, model=None)
    assert not marker.exists() and ref.train is None  # treated as missing: computed again


def _rm_checkpoint(tmp_path: Path, tiny_model_dir: str) -> tuple[Path, Path]:
    """A finished 2-step `rlaif train rm` run, made to resume from its step-1 checkpoint."""
    from rlaif.train.checkpoints import checkpoint_dirs
    from rlaif.train.config import RMConfig
    from rlaif.train.rm import train_rm

    out = tmp_path / "out"
    cfg = RMConfig(data=str(Path(__file__).parent / "assets" / "prefs"), model=tiny_model_dir, out=str(out),
                   lr=3e-3, batch_size=8, max_steps=2, save_steps=1, warmup_ratio=0.0, progress=False)
    train_rm(cfg)
    (out / "summary.json").unlink()  # not finished any more: a rerun resumes from the checkpoint
    return checkpoint_dirs(out)[-1], out


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "random_states_0.pkl"])
def test_a_planted_pickle_in_a_trainer_checkpoint_runs_no_code_on_resume(tmp_path, tiny_model_dir, planted, capsys):
    """accelerate loads registered custom objects with weights_only=False: rlaif registers none (the LR
    scheduler is kept as JSON) and refuses such a file in one line; the RNG file loads weights_only
    (accelerate skips an unloadable one). Either way no code runs."""
    from rlaif.cli import main

    checkpoint, out = _rm_checkpoint(tmp_path, tiny_model_dir)
    assert not list(checkpoint.glob("custom_checkpoint*"))
    marker = tmp_path / "pwned"
    torch.save({"step": 0, "random_state": Payload(marker)}, checkpoint / planted)
    code = main(["train", "rm", "--data", str(Path(__file__).parent / "assets" / "prefs"), "--model", tiny_model_dir,
                 "--out", str(out), "lr=0.003", "batch_size=8", "max_steps=2", "save_steps=1", "warmup_ratio=0",
                 "progress=false"])
    err = capsys.readouterr().err
    assert not marker.exists()
    if planted.startswith("custom"):
        assert code == 2 and "Traceback" not in err and planted in err.strip().splitlines()[-1]


def test_a_trainer_checkpoint_without_its_json_schedule_is_refused_with_one_line(tmp_path, tiny_model_dir):
    import json

    from rlaif.train.checkpoints import load_checkpoint

    checkpoint, _ = _rm_checkpoint(tmp_path, tiny_model_dir)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    del state["progress"]["scheduler"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="older rlaif") as e:
        load_checkpoint(None, checkpoint)
    assert "\n" not in str(e.value)
