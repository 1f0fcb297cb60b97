"""An output folder rlaif did not make is never written over (issue 20, item 1): every command
refuses an --out holding entries its marker (``DIR/.rlaif/outputs.json``) does not list, before
writing anything; ``--overwrite`` removes only listed names and never ``/``, ``$HOME`` or a folder
holding the cwd; folders made before the marker existed keep resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.errors import UserError
from rlaif.io.outdir import listed, marker_path, refuse_dangerous

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "prompts" / "demo.jsonl"
PREFS = Path(__file__).parent / "assets" / "prefs"
FAKE_RUN = ["--rubric", "helpfulness", "policy.engine=fake", "progress=false", "n=2"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys: pytest.CaptureFixture, argv: list[str], needle: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    return err


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A finished `rlaif run` on the fake engine (its prompts beside it, outside --out)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:6]))
    out = tmp_path / "run"
    assert main(["run", "--prompts", str(prompts), "--out", str(out), *FAKE_RUN]) == 0
    return out


def test_build_into_the_cwd_with_a_user_readme_is_refused(tmp_path, finished_run, monkeypatch, capsys):
    home = tmp_path / "project"
    home.mkdir()
    for name in ("judgements.jsonl", "candidates.jsonl"):  # inputs in --out: read, never written
        shutil.copy(finished_run / name, home / name)
    (home / "README.md").write_text("# my project\n")
    before = _snapshot(home)
    monkeypatch.chdir(home)
    err = _refused(capsys, ["build", "--judgements", "judgements.jsonl", "--out", "."],
                   "holds README.md, which rlaif did not write")
    assert "nothing was written" in err
    assert _snapshot(home) == before  # not even a .rlaif/ folder
    (home / "README.md").unlink()
    assert main(["build", "--judgements", "judgements.jsonl", "--out", ".", "--overwrite"]) == 0
    assert (home / "preferences" / "train.jsonl").is_file() and "judgements.jsonl" not in listed(home)
    assert (home / "judgements.jsonl").read_bytes() == before["judgements.jsonl"]


def test_run_into_a_folder_with_foreign_files_is_refused(tmp_path, finished_run, capsys):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "data.csv").write_text("a,b\n")
    (out / "report.html").write_text("<p>mine</p>")  # a name rlaif writes, but rlaif did not write this one
    before = _snapshot(out)
    prompts = str(finished_run.parent / "prompts.jsonl")
    _refused(capsys, ["run", "--prompts", prompts, "--out", str(out), *FAKE_RUN], "holds sub")
    _refused(capsys, ["run", "--prompts", prompts, "--out", str(out), *FAKE_RUN, "--overwrite"], "holds sub")
    assert _snapshot(out) == before and not (out / ".rlaif").exists()


def test_rerun_of_a_run_resumes_and_overwrite_keeps_nothing_unlisted(finished_run, capsys):
    names = listed(finished_run)
    assert {"candidates.jsonl", "judgements.jsonl", "preferences", "report.html", "README.md",
            "manifest.json"} <= names
    (finished_run / ".manifest.json.tmp").write_text("{")  # a write cut by a crash: rlaif's own temp file
    prompts = str(finished_run.parent / "prompts.jsonl")
    assert main(["run", "--prompts", prompts, "--out", str(finished_run), *FAKE_RUN]) == 0
    assert "already done" in capsys.readouterr().err
    (finished_run / "tokenizer_notes.py").write_text("# mine\n")
    _refused(capsys, ["build", "--judgements", str(finished_run / "judgements.jsonl"), "--out", str(finished_run),
                      "--overwrite"], "holds tokenizer_notes.py")
    assert (finished_run / "tokenizer_notes.py").read_text() == "# mine\n"
    assert (finished_run / "preferences" / "train.jsonl").is_file()  # nothing removed either


def test_a_run_made_before_markers_still_resumes(finished_run, capsys):
    marker_path(finished_run).unlink()
    prompts = str(finished_run.parent / "prompts.jsonl")
    assert main(["run", "--prompts", prompts, "--out", str(finished_run), *FAKE_RUN]) == 0
    assert "already done" in capsys.readouterr().err
    assert "judgements.jsonl" in listed(finished_run)  # adopted: the marker now lists the old outputs


def test_eval_and_loop_refuse_a_folder_with_foreign_files(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    side = tmp_path / "a.jsonl"
    side.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "q", "responses": ["a b"]}) + "\n" for i in range(4)))
    reward = tmp_path / "r.py"
    reward.write_text("def words(prompts, completions, **kw):\n    return [len(c.split()) for c in completions]\n")
    _refused(capsys, ["eval", "--a", str(side), "--b", str(side), "--reward", f"python:{reward}:words",
                      "--out", str(out), "progress=false"], "holds notes.txt")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Q {i}?"}) + "\n" for i in range(10)))
    _refused(capsys, ["loop", "--prompts", str(prompts), "--out", str(out), "policy.engine=fake", "eval_size=2",
                      "prompts_per_round=4", "--overwrite"], "holds notes.txt")
    assert _snapshot(out) == {"notes.txt": b"mine"}


@pytest.mark.parametrize("trainer", ["rm", "dpo"])
def test_train_into_a_users_model_folder_is_refused(trainer, tmp_path, tiny_model_dir, capsys):
    users = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, users)  # config.json, model.safetensors, tokenizer*: all names a trainer writes
    before = _snapshot(users)
    for extra in ([], ["--overwrite"]):
        _refused(capsys, ["train", trainer, "--model", tiny_model_dir, "--data", str(PREFS), "--out", str(users),
                          "max_steps=1", "progress=false", *extra], "which rlaif did not write")
    assert _snapshot(users) == before


def test_train_overwrite_removes_listed_files_only(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "rm"
    argv = ["train", "rm", "--model", tiny_model_dir, "--data", str(PREFS), "--out", str(out), "max_steps=1",
            "progress=false", "save_steps=1"]
    assert main(argv) == 0
    names = listed(out)
    assert {"model.safetensors", "config.json", "summary.json", "checkpoints"} <= names
    assert all("*" not in name for name in names)  # exact names, never patterns
    assert not (out / ".rlaif" / "final").exists()  # the staging folder of save_pretrained is gone
    assert main(argv) == 0  # a rerun finds the finished run
    (out / "tokenizer_notes.py").write_text("# mine\n")
    _refused(capsys, [*argv, "--overwrite"], "holds tokenizer_notes.py")
    assert (out / "tokenizer_notes.py").read_text() == "# mine\n" and (out / "model.safetensors").is_file()
    (out / "tokenizer_notes.py").unlink()
    shutil.rmtree(out / ".rlaif")  # a folder made before markers: its summary.json proves it is rlaif's
    assert main([*argv, "lr=1e-4", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["settings"]["lr"] == 1e-4


def test_overwrite_of_root_home_or_a_folder_holding_the_cwd_is_refused(tmp_path, finished_run, monkeypatch, capsys):
    for folder in (Path("/"), Path.home()):
        with pytest.raises(UserError, match="refusing --overwrite"):
            refuse_dangerous(folder)
    monkeypatch.setenv("HOME", str(finished_run))  # a home folder every entry of which rlaif wrote
    judgements = finished_run.parent / "judgements.jsonl"
    shutil.copy(finished_run / "judgements.jsonl", judgements)
    shutil.copy(finished_run / "candidates.jsonl", finished_run.parent / "candidates.jsonl")
    before = _snapshot(finished_run)
    _refused(capsys, ["build", "--judgements", str(judgements), "--out", str(finished_run), "--overwrite"],
             "home folder")
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(finished_run / "preferences")
    _refused(capsys, ["build", "--judgements", str(judgements), "--out", "..", "--overwrite"],
             "holds the current folder")
    assert _snapshot(finished_run) == before
