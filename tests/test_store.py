"""Stage files: durable appends, torn-line repair, ordered atomic finish, settings fingerprints."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rlaif.errors import UserError
from rlaif.io.store import RunState, StageFile, atomic_write_text


def _stage(tmp_path):
    return StageFile(tmp_path, "rows", key_fn=lambda r: r["id"])


def test_append_load_finish_in_given_order(tmp_path):
    s = _stage(tmp_path)
    for k in ["b", "a", "c"]:
        s.append({"id": k, "v": k * 2})
    s.close()
    again = _stage(tmp_path)
    assert set(again.load()) == {"a", "b", "c"}
    rows = again.finish(["a", "b", "c"])
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert [json.loads(line)["id"] for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == ["a", "b", "c"]
    assert not again.partial.exists()


def test_finish_refuses_missing_rows(tmp_path):
    s = _stage(tmp_path)
    s.append({"id": "a"})
    with pytest.raises(RuntimeError, match="1 rows missing"):
        s.finish(["a", "b"])
    assert not (tmp_path / "rows.jsonl").exists()


@pytest.mark.parametrize("tail", [b'{"id": "c", "v"', b'{"id": "c"}', b"garbage\n"])
def test_torn_last_line_is_dropped_and_truncated(tmp_path, tail):
    s = _stage(tmp_path)
    s.append({"id": "a"})
    s.append({"id": "b"})
    s.close()
    good = s.partial.read_bytes()
    with open(s.partial, "ab") as fh:
        fh.write(tail)  # what kill -9 in the middle of a write leaves
    again = _stage(tmp_path)
    assert set(again.load()) == {"a", "b"} and again.dropped_torn == 1
    assert again.partial.read_bytes() == good
    again.append({"id": "c"})
    assert [json.loads(x)["id"] for x in again.partial.read_text().splitlines()] == ["a", "b", "c"]


def test_kill_9_while_appending_leaves_only_whole_rows(tmp_path):
    """A real SIGKILL of a process appending rows as fast as it can: every row read back is whole."""
    code = (
        "import sys; from rlaif.io.store import StageFile\n"
        f"s = StageFile({str(tmp_path)!r}, 'rows', key_fn=lambda r: r['id'])\n"
        "i = 0\n"
        "while True:\n"
        "    s.append({'id': str(i), 'payload': 'x' * 5000}); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    partial = tmp_path / ".rlaif" / "rows.jsonl"
    deadline = time.time() + 30
    while time.time() < deadline and (not partial.exists() or partial.stat().st_size < 200_000):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = _stage(tmp_path).load()
    assert len(rows) >= 30
    assert sorted(int(k) for k in rows) == list(range(len(rows)))  # no gaps, no duplicates
    assert all(r["payload"] == "x" * 5000 for r in rows.values())


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(tmp_path / "f.txt", "two")
    assert (tmp_path / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_run_state_refuses_other_settings(tmp_path):
    state = RunState(tmp_path)
    state.check("generate", "abc", "n")  # nothing recorded yet: fine
    state.update("generate", fingerprint="abc")
    RunState(tmp_path).check("generate", "abc", "n")
    with pytest.raises(UserError, match="other settings \\(n\\).*overwrite=true"):
        RunState(tmp_path).check("generate", "xyz", "n")


def test_begin_runs_a_new_stage_skips_a_finished_one_and_refuses_others(tmp_path, capsys):
    state = RunState(tmp_path)
    assert state.begin("gen", "fp1", "the settings", "out.jsonl", "gen") is True
    assert state.stage("gen") == {"fingerprint": "fp1", "done": False}
    assert state.begin("gen", "fp1", "the settings", "out.jsonl", "gen") is True  # not done yet: resume
    state.update("gen", done=True)
    assert state.begin("gen", "fp1", "the settings", "out.jsonl", "gen") is True  # done, but its file is gone
    state.update("gen", done=True)
    (tmp_path / "out.jsonl").write_text("")
    assert RunState(tmp_path).begin("gen", "fp1", "the settings", "out.jsonl", "gen") is False
    assert "gen: already done" in capsys.readouterr().err
    with pytest.raises(UserError, match="other settings \\(the settings\\)"):
        RunState(tmp_path).begin("gen", "fp2", "the settings", "out.jsonl", "gen")
    (tmp_path / "other.jsonl").write_text("")
    with pytest.raises(UserError, match="other.jsonl: exists but was not made by these settings"):
        RunState(tmp_path).begin("judge", "fp3", "the settings", "other.jsonl", "judge")
