"""`rlaif train rm|dpo` and `rlaif rm score`: shipped configs load, bad input is one line + exit 2."""

import json
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.config import load_config
from rlaif.train.config import DPOConfig, RMConfig

ROOT = Path(__file__).parent.parent
ASSETS = Path(__file__).parent / "assets" / "prefs"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_trainer_config_loads(path):
    if path.name.startswith("accelerate"):
        return  # accelerate's own format
    cls = DPOConfig if "dpo" in path.name else RMConfig
    cfg = load_config(cls, path)
    assert cfg.lr > 0 and cfg.max_prompt_length < cfg.max_length


def test_flags_and_overrides_layer(tmp_path, capsys):
    from rlaif.commands.train import _train_config
    from rlaif.cli import build_parser

    args = build_parser().parse_args(["train", "dpo", "--config", str(ROOT / "configs" / "dpo_cpu.yaml"),
                                      "--data", "D", "--out", "O", "beta=0.3", "lora.enabled=true"])
    cfg = _train_config(args, DPOConfig)
    assert (cfg.data, cfg.out, cfg.beta, cfg.lora.enabled, cfg.batch_size) == ("D", "O", 0.3, True, 4)


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("verb", ["rm", "dpo"])
def test_missing_data_dir(tmp_path, capsys, verb):
    code, err = _run(["train", verb, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no such folder" in err and err.count("\n") == 1


def test_malformed_line_names_file_line_field(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                                          + json.dumps({"prompt": "a", "chosen": 3, "rejected": "c"}) + "\n")
    code, err = _run(["train", "rm", "--data", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "train.jsonl:2: field 'chosen'" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists(), "nothing is written before the input is known good"


def test_empty_split_and_bad_option(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text("")
    code, err = _run(["train", "dpo", "--data", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "empty train split" in err
    code, err = _run(["train", "dpo", "--data", str(ASSETS), "loss_type=kto"], capsys)
    assert code == 2 and "loss_type" in err


def test_rm_score_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"prompt": "hi"}\n')
    code, err = _run(["rm", "score", "--model", str(tmp_path), "--data", str(bad)], capsys)
    assert code == 2 and "x.jsonl:1: field 'chosen'" in err
    code, err = _run(["rm", "score", "--model", str(tmp_path), "--data", str(tmp_path / "none.jsonl")], capsys)
    assert code == 2 and "file not found" in err
