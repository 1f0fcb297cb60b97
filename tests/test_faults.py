"""Fault injection: `kill -9` at random moments and a full disk at random writes, for the data job
(`rlaif run`, fake engine) and a trainer (`rlaif train rm`, tiny random model). After each fault
the same command, rerun, must end with the files of an uninterrupted run.

A kill lands at a seeded random time after the run made its --out folder (so it falls anywhere in
the writing, the final renames included); a full disk is `OSError(ENOSPC)` from the K-th write of
a file opened for writing (half the bytes written first, as a real full disk tears a line), with
the stage run in this process: the command must print one line naming the file and exit 4.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from test_pipeline import FAKE, snapshot, small_prompts

from rlaif.cli import main
from rlaif.io.diskfull import EXIT_CODE, is_disk_full, message, names_path

PREFS = Path(__file__).parent / "assets" / "prefs"
# one rubric keeps the fast tests fast (the report's plots cost most); the slow test judges with three methods
RUN = ["--rubric", "helpfulness", "--out", "out", *FAKE, "n=3"]
MORE_RUBRICS = ["--rubric", "overall_preference", "--rubric", "truthfulness", "require_position_consistent=false",
                "pairwise_min_confidence=0.5"]
RM = ["max_steps=8", "save_steps=1", "lr=0.003", "batch_size=4", "warmup_ratio=0", "progress=false", "logging_steps=1"]
# metrics.jsonl fields that time the run, and summary.json fields that describe this attempt only
TIMING = ("train/step_time", "train/tokens_per_s")
ATTEMPT = ("resumed_from",)


# ----------------------------------------------------------------------------- kill -9

Ready = Callable[[Path], bool]  # has the run in this folder got far enough to be killed?


def made_out(cwd: Path) -> bool:
    return (cwd / "out").exists()


def run_killed(cmd: list[str], cwd: Path, delay: float | None, ready: Ready = made_out,
               timeout: float = 300) -> tuple[bool, float]:
    """Run ``cmd`` in ``cwd``; ``delay`` seconds after ``ready(cwd)`` first holds, SIGKILL it (None:
    let it end). Returns whether it was killed and the seconds from then to its end; a run that ends
    by itself must succeed. stderr goes to a file (a full pipe would stall the run)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        deadline, started = time.monotonic() + timeout, None
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"{cmd} did not end within {timeout} s"
                if started is None and ready(cwd):
                    started = time.monotonic()
                if started is not None and delay is not None and time.monotonic() >= started + delay:
                    proc.kill()
                    proc.wait()
                    return True, time.monotonic() - started
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        assert proc.returncode == 0, err.read().decode(errors="replace")[-3000:]
        return False, time.monotonic() - (started or time.monotonic())


def kill_and_resume(cmd: list[str], base: Path, seeds: range, reference: Callable[[Path], Any],
                    when: Callable[[random.Random], tuple[float, Ready]]) -> int:
    """For each seed: kill ``cmd`` (once or twice) at a moment ``when(rng)`` draws (seconds after a
    condition), rerun it to the end, compare ``reference(out)`` with the uninterrupted run's.
    Returns how many runs were killed before their end."""
    (base / "clean").mkdir()
    expected = reference_of(cmd, base / "clean", reference)
    kills = 0
    for seed in seeds:
        rng = random.Random(seed)
        work = base / f"seed-{seed}"
        work.mkdir()
        for _ in range(rng.choice([1, 2])):  # a second kill lands in the resumed run
            kills += run_killed(cmd, work, *when(rng))[0]
        run_killed(cmd, work, None)
        got = reference(work / "out")
        assert got.keys() == expected.keys(), f"seed {seed}"
        for name in expected:
            assert got[name] == expected[name], f"seed {seed}: {name} differs from the uninterrupted run's"
    return kills


def reference_of(cmd: list[str], cwd: Path, reference: Callable[[Path], Any]) -> Any:
    run_killed(cmd, cwd, None)
    return reference(cwd / "out")


@pytest.mark.parametrize("seeds, more", [pytest.param(range(3), [], id="3-seeds"),
                                         pytest.param(range(3, 23), MORE_RUBRICS, id="20-seeds", marks=pytest.mark.slow)])
def test_data_job_killed_at_random_resumes_to_the_same_files(tmp_path: Path, seeds: range, more: list[str]) -> None:
    cmd = [sys.executable, "-m", "rlaif.cli", "run", "--prompts", str(small_prompts(tmp_path, 8 + 8 * bool(more))),
           *RUN, *more]
    window = run_killed(cmd, _mkdir(tmp_path / "timing"), None)[1] * 1.2
    kills = kill_and_resume(cmd, tmp_path, seeds, snapshot, lambda rng: (rng.uniform(0, window), made_out))
    assert kills >= len(seeds) // 2, "most kills must land before the run ends, or they test nothing"


def trained(out: Path) -> dict[str, bytes]:
    """A trainer's final files: weights, config and tokenizer bytes; metrics.jsonl and summary.json
    without their timings and this attempt's own fields (checkpoints and TensorBoard left out)."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    lines = [json.loads(x) for x in files.pop("metrics.jsonl").decode().splitlines()]
    files["metrics.jsonl"] = json.dumps([{k: v for k, v in x.items() if k not in TIMING} for x in lines]).encode()
    summary = json.loads(files.pop("summary.json"))
    files["summary.json"] = json.dumps({k: v for k, v in summary.items() if k not in ATTEMPT}, sort_keys=True).encode()
    return files


@pytest.mark.slow
def test_trainer_killed_at_random_resumes_to_the_same_files(tmp_path: Path, tiny_model_dir: str) -> None:
    cmd = [sys.executable, "-m", "rlaif.cli", "train", "rm", "--data", str(PREFS), "--model", tiny_model_dir,
           "--out", "out", *RM]

    def when(rng: random.Random) -> tuple[float, Ready]:
        """After a random number of metrics.jsonl lines (0: once --out exists; 9, the last, is the
        test split's: the final save follows) and a random part of a step's time: a load, a step, a
        checkpoint or the final save is cut. Counting lines, not seconds, keeps it fair under load."""
        lines = rng.randint(0, 9)
        metrics = Path("out") / "metrics.jsonl"
        return rng.uniform(0, 0.4), lambda cwd: made_out(cwd) and (
            lines == 0 or ((cwd / metrics).is_file() and (cwd / metrics).read_bytes().count(b"\n") >= lines))

    kills = kill_and_resume(cmd, tmp_path, range(20), trained, when)
    assert kills >= 14


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# ----------------------------------------------------------------------------- ENOSPC

class FullDisk:
    """Patches ``open``: from the ``fail_at``-th write on (to files opened for writing, in the main
    thread), the disk is full: that write puts half its bytes on disk, then it and every later one
    raise OSError(ENOSPC) without a file name, as ``write``/``flush`` do. ``fail_at=None`` counts."""

    def __init__(self, fail_at: int | None) -> None:
        self.fail_at, self.writes, self.real = fail_at, 0, builtins.open

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = self.real(file, mode, *args, **kwargs)
        return _Faulty(fh, self) if any(c in mode for c in "wax+") else fh

    def write(self, fh: Any, data: Any) -> int:
        if threading.current_thread() is not threading.main_thread():  # e.g. TensorBoard's writer
            return fh.write(data)
        self.writes += 1
        if self.fail_at is None or self.writes < self.fail_at:
            return fh.write(data)
        if self.writes == self.fail_at:
            fh.write(data[:len(data) // 2])
            fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


class _Faulty:
    def __init__(self, fh: Any, disk: FullDisk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data: Any) -> int:
        return self._disk.write(self._fh, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _Faulty:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fh)


def run_with_full_disk(monkeypatch: pytest.MonkeyPatch, argv: list[str], fail_at: int | None) -> tuple[int, int]:
    """``main(argv)`` in this process with the K-th write failing; returns (exit code, writes)."""
    disk = FullDisk(fail_at)
    with monkeypatch.context() as m:
        m.setattr(builtins, "open", disk.open)
        m.setattr(io, "open", disk.open)  # pathlib's Path.open
        rc = main(argv)
    return rc, disk.writes


def check_full_disk_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                         argv: list[str], reference: Callable[[Path], Any], fail_ats: Callable[[int], list[int]]
                         ) -> list[str]:
    """A clean run counts the writes; then for each K of ``fail_ats(writes)`` a fresh folder: the
    K-th write fails (one line naming a file under --out, exit 4), a rerun with space ends with the
    clean run's files. Returns the files named."""
    monkeypatch.chdir(_mkdir(tmp_path / "clean"))
    rc, writes = run_with_full_disk(monkeypatch, argv, None)
    assert rc == 0 and writes > 5
    expected = reference(Path("out"))
    named = []
    for k in fail_ats(writes):
        monkeypatch.chdir(_mkdir(tmp_path / f"full-{k}"))
        capsys.readouterr()
        rc, _ = run_with_full_disk(monkeypatch, argv, k)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == EXIT_CODE, f"write {k}: {err}"
        assert err.startswith("rlaif: error: disk full writing ") and "free space and rerun" in err, err
        path = err.removeprefix("rlaif: error: disk full writing ").split(" (free space")[0]
        assert Path(path).resolve().is_relative_to(Path("out").resolve()), err
        named.append(path)
        assert main(argv) == 0, f"rerun after a full disk at write {k}"
        got = reference(Path("out"))
        assert got.keys() == expected.keys() and [n for n in expected if got[n] != expected[n]] == [], f"write {k}"
    return named


def test_data_job_disk_full_at_random_writes_one_line_then_resumes(monkeypatch, capsys, tmp_path):
    argv = ["run", "--prompts", str(small_prompts(tmp_path, 8)), *RUN]
    named = check_full_disk_runs(monkeypatch, capsys, tmp_path, argv, snapshot,
                                 lambda n: sorted({1, 2, 3, n // 2, n - 2, n - 1, n, *random.Random(0).sample(range(4, n), 3)}))
    assert any(p.startswith("out/.rlaif/") and p.endswith("s.jsonl") for p in named), named  # a stage's rows
    assert any(not p.startswith("out/.rlaif/") for p in named), named  # a final file


@pytest.mark.parametrize("fail_ats", [pytest.param(lambda n: [n // 2, n], id="2-writes"),
                                      pytest.param(lambda n: sorted({1, 2, n // 3, n // 2, n - 2, n - 1}), id="6-writes",
                                                   marks=pytest.mark.slow)])
def test_trainer_disk_full_one_line_then_resumes(monkeypatch, capsys, tmp_path, tiny_model_dir, fail_ats):
    argv = ["train", "rm", "--data", str(PREFS), "--model", tiny_model_dir, "--out", "out", *RM]
    check_full_disk_runs(monkeypatch, capsys, tmp_path, argv, trained, fail_ats)


def test_other_libraries_full_disk_errors_are_recognised_and_others_pass_through(tmp_path):
    @names_path(lambda err: "m.safetensors")
    def fail(err: Exception) -> None:
        raise err

    # safetensors' own error on a full disk (as seen on a full tmpfs) leaves as ENOSPC naming the file
    with pytest.raises(OSError, match="m.safetensors") as e:
        fail(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert e.value.errno == errno.ENOSPC and is_disk_full(e.value)
    with pytest.raises(FileNotFoundError):  # not a full disk: left as it was
        fail(FileNotFoundError(errno.ENOENT, "No such file or directory"))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # torch's write error with space left
        fail(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert "disk quota exceeded writing q" in message(OSError(errno.EDQUOT, "Disk quota exceeded", "q"))
