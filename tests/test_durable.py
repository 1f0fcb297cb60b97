"""Every write is atomic, durable and keeps the file's mode (issue 20, item 11): a temporary file in
the same folder, fsynced, ``os.replace``, the folder fsynced; a checkpoint folder's files and the
folder itself fsynced before the rename, its parent after."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.io.store import atomic_write_text
from rlaif.studio.files import RubricFolder
from rlaif.train.checkpoints import checkpoint_dirs, cut_logs

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync was called on, in order (events ``replace SRC`` interleaved)."""
    seen: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001
        real_replace(src, dst)
        seen.append(f"replace {Path(src).resolve()}")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


@pytest.fixture
def umask() -> None:
    old = os.umask(0o077)  # what mkstemp-style writes would leave: 0600
    yield
    os.umask(old)


def test_atomic_write_keeps_the_mode_and_fsyncs_the_folder(tmp_path, umask, fsynced):
    for mode in (0o644, 0o640):
        path = tmp_path / f"kept-{mode:o}.json"
        path.write_text("old")
        path.chmod(mode)
        atomic_write_text(path, "new")
        assert path.read_text() == "new" and _mode(path) == mode
    fresh = tmp_path / "fresh.json"
    atomic_write_text(fresh, "x")
    assert _mode(fresh) == 0o600  # a new file: the umask's default
    assert fsynced[-1] == str(tmp_path) and fsynced[-2] == f"replace {tmp_path / '.fresh.json.tmp'}"
    assert not list(tmp_path.glob(".*.tmp"))


def test_studio_save_keeps_the_rubric_files_mode(tmp_path):
    folder = tmp_path / "rubrics"
    folder.mkdir()
    shutil.copy(ROOT / "rubrics" / "helpfulness.yaml", folder / "helpfulness.yaml")
    (folder / "helpfulness.yaml").chmod(0o644)
    text = (folder / "helpfulness.yaml").read_text().replace("helpful", "useful", 1)
    saved = RubricFolder(folder).save("helpfulness.yaml", text, draft=False)
    assert saved.path.read_text() == text and _mode(saved.path) == 0o644  # was 0600 after mkstemp


def test_the_log_cut_on_resume_replaces_the_file_whole(tmp_path, fsynced):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 5)) + '{"step": 5')  # torn last line
    log.chmod(0o640)
    inode = log.stat().st_ino
    cut_logs(tmp_path, ("metrics.jsonl",), 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n' and _mode(log) == 0o640
    assert log.stat().st_ino != inode, "written in place: a crash mid-write would lose the kept lines"
    assert str(tmp_path) in fsynced


def test_calibrate_json_is_written_atomically(tmp_path, fsynced):
    report = tmp_path / "calibration.json"
    report.write_text("old")
    inode = report.stat().st_ino
    main(["rubric", "calibrate", "answer_checks", "--json", str(report)])  # rules: no judge to load
    assert json.loads(report.read_text())["rubric"] == "answer_checks"
    assert report.stat().st_ino != inode and str(tmp_path) in fsynced


def _policy(tiny_model_dir: str):  # noqa: ANN202
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_a_checkpoint_save_killed_between_files_leaves_the_previous_one(tmp_path, tiny_model_dir, monkeypatch):
    import torch

    from rlaif.train.online import state

    model, optimizer = _policy(tiny_model_dir)
    state.save_checkpoint(tmp_path, 1, 0, {"fingerprint": "f"}, model, None, optimizer, None, 3)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)

    def killed(folder: Path) -> None:
        raise KeyboardInterrupt("killed after policy.pt and optimizer.pt")

    monkeypatch.setattr(state, "_save_rng_state", killed)
    with pytest.raises(KeyboardInterrupt):
        state.save_checkpoint(tmp_path, 2, 0, {"fingerprint": "f"}, model, None, optimizer, None, 6)
    assert checkpoint_dirs(tmp_path) == [tmp_path / "checkpoints" / "step-1"]
    restored = state.load_checkpoint(checkpoint_dirs(tmp_path)[-1], model, None, optimizer)
    assert restored.step == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_checkpoint_files_are_fsynced_before_the_rename_and_the_parent_after(tmp_path, tiny_model_dir, fsynced):
    from rlaif.train.online import state

    model, optimizer = _policy(tiny_model_dir)
    final = state.save_checkpoint(tmp_path, 1, 0, {"fingerprint": "f"}, model, None, optimizer, None, 0)
    tmp = str(tmp_path / "checkpoints" / ".step-1.tmp")
    renamed = fsynced.index(f"replace {tmp}")
    before = set(fsynced[:renamed])
    assert {tmp + "/" + p.name for p in final.iterdir()} | {tmp} <= before
    assert str(tmp_path / "checkpoints") in fsynced[renamed + 1:]
