"""``--out`` equal to, inside or containing an input is refused before anything is deleted or loaded
(issue 20, item 2): ``--overwrite`` can never remove the model or data it is about to read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.cli import main


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A folder that looks like a model a trainer could load and save over."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text("{}")
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "d" / "preferences"
    folder.mkdir(parents=True)
    pair = {"id": "a", "prompt": [{"role": "user", "content": "hi"}], "chosen": "x", "rejected": "y"}
    (folder / "train.jsonl").write_text(json.dumps(pair) + "\n")
    return folder.parent


@pytest.mark.parametrize("trainer", ["rm", "dpo"])
@pytest.mark.parametrize("where", ["model", "inside model", "above model", "data"])
def test_train_out_overlapping_an_input_is_refused_and_nothing_deleted(trainer, where, tmp_path, model, data, capsys):
    out = {"model": model, "inside model": model / "sub", "above model": tmp_path, "data": data}[where]
    before = _snapshot(tmp_path)
    rc = main(["train", trainer, "--model", str(model), "--data", str(data), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "--out" in err and ("--model" in err or "--data" in err), err
    assert _snapshot(tmp_path) == before


def test_dpo_out_equal_to_ref_model_is_refused(tmp_path, model, data, capsys):
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "config.json").write_text("{}")
    rc = main(["train", "dpo", "--model", str(model), "--data", str(data), "--out", str(ref), "--overwrite",
               f"ref_model={ref}"])
    err = capsys.readouterr().err
    assert rc == 2 and "ref_model" in err, err
    assert (ref / "config.json").is_file()


@pytest.mark.parametrize("trainer", ["grpo", "rloo", "ppo"])
def test_online_out_equal_to_the_model_is_refused(trainer, tmp_path, model, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    before = _snapshot(model)
    rc = main(["train", trainer, "--model", str(model), "--prompts", str(prompts), "--out", str(model),
               "--reward", "python:x.py:f", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "--model" in err and err.count("\n") == 1, err
    assert _snapshot(model) == before


def test_build_out_that_would_overwrite_its_judgements_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    (out / "preferences").mkdir(parents=True)
    judgements = out / "preferences" / "j.jsonl"
    judgements.write_text("{}\n")
    rc = main(["build", "--judgements", str(judgements), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "--judgements" in err, err
    assert judgements.read_text() == "{}\n"


def test_generate_out_equal_to_the_prompt_file_is_refused(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    rc = main(["generate", "--prompts", str(prompts), "--out", str(prompts), "policy.engine=fake"])
    err = capsys.readouterr().err
    assert rc == 2 and "--prompts" in err, err


def test_eval_out_holding_a_candidates_side_it_would_remove_is_refused(tmp_path, capsys):
    out = tmp_path / "e"
    out.mkdir()
    side = out / "candidates_a.jsonl"
    side.write_text("{}\n")
    rc = main(["eval", "--a", str(side), "--b", str(side), "--rubric", "helpfulness", "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "--a" in err, err
    assert side.read_text() == "{}\n"
