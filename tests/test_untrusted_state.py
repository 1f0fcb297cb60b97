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
