"""`rlaif train rm|dpo` and `rlaif rm score`: shipped configs load, bad input is one line + exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.config import load_config
from rlaif.train.config import DPOConfig, RMConfig

ROOT = Path(__file__).parent.parent
ASSETS = Path(__file__).parent / "assets" / "prefs"


CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TRAINER_CONFIGS = [p for p in CONFIGS if p.name.startswith(("dpo_", "rm_"))]
# Each family of shipped config is loaded by its own tests.
CHECKED_ELSEWHERE = {"accelerate_": "tests/test_configs.py", "loop_": "tests/test_loop.py"}


def test_every_shipped_config_is_checked():
    families = tuple(CHECKED_ELSEWHERE)
    unchecked = [p.name for p in CONFIGS if p not in TRAINER_CONFIGS and not p.name.startswith(families)]
    assert not unchecked, f"configs without a test: {unchecked}"
    assert {p.name for p in TRAINER_CONFIGS} >= {"dpo_cpu.yaml", "dpo_gpu_lora.yaml", "rm_cpu.yaml"}


@pytest.mark.parametrize("path", TRAINER_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_trainer_config_loads(path):
    import yaml

    cls = DPOConfig if path.name.startswith("dpo") else RMConfig
    assert path.name.startswith(("dpo", "rm")), "name a trainer config after its trainer"
    cfg = load_config(cls, path)
    # every key in the file reached the config, with its value (nothing ignored or misread)
    for key, value in yaml.safe_load(path.read_text()).items():
        if isinstance(value, dict):
            for sub, v in value.items():
                assert getattr(getattr(cfg, key), sub) == v, f"{key}.{sub}"
        else:
            assert getattr(cfg, key) == value, key
    assert 0 < cfg.lr < 1e-3 and 0 < cfg.max_prompt_length < cfg.max_length
    assert cfg.batch_size >= 1 and cfg.grad_accum >= 1 and cfg.precision in ("fp32", "bf16", "fp16")
    if cls is DPOConfig:
        assert cfg.beta > 0 and cfg.reference == "precompute"


def test_a_broken_accelerate_config_fails_to_load(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "accelerate_ddp.yaml").read_text() + "num_gpus: 8\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(bad))


def test_flags_and_overrides_layer(tmp_path, capsys):
    from rlaif.commands.train import _train_config
    from rlaif.cli import build_parser

    args = build_parser().parse_args(["train", "dpo", "--config", str(ROOT / "configs" / "dpo_cpu.yaml"),
                                      "--data", "D", "--out", "O", "beta=0.3", "lora.enabled=true"])
    cfg = _train_config(args, DPOConfig, "train dpo")
    assert (cfg.data, cfg.out, cfg.beta, cfg.lora.enabled, cfg.batch_size) == ("D", "O", 0.3, True, 4)


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("verb", ["rm", "dpo"])
def test_missing_data_dir(tmp_path, capsys, verb):
    code, err = _run(["train", verb, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no such folder" in err and err.count("\n") == 1


def test_malformed_line_names_file_line_field(tmp_path, capsys):
    data = tmp_path / "d"  # beside --out: an --out inside --data is refused
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                                      + json.dumps({"prompt": "a", "chosen": 3, "rejected": "c"}) + "\n")
    code, err = _run(["train", "rm", "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "train.jsonl:2: field 'chosen'" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists(), "nothing is written before the input is known good"


def test_empty_split_and_bad_option(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("")
    code, err = _run(["train", "dpo", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")], capsys)
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


@pytest.mark.parametrize("argv, message", [
    (["train", "dpo", "--out", "O"], "train dpo: --data and --out are required"),
    (["train", "rm", "--data", "D"], "train rm: --data and --out are required"),
    (["rm", "score", "--data", "D"], "rm score: --model and --data are required"),
])
def test_missing_required_flags_are_reported_before_torch_is_imported(argv, message):
    """A forgotten --data must not cost the seconds of importing torch and transformers first."""
    code = ("import sys\nfrom rlaif.cli import main\ncode = main(%r)\n"
            "print('torch' in sys.modules, code)" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert message in out.stderr
    assert out.stdout.split() == ["False", "2"]
