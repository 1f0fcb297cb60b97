"""Trainer configs: every key explained in --help; flags, YAML and key=value go through one
type-checked loader."""

import dataclasses

import pytest

from rlaif.cli import build_parser, main
from rlaif.errors import UserError
from rlaif.train.config import DPOConfig, LoraOptions, RMConfig, ScoreConfig, TrainConfig, TrainerOptions


@pytest.mark.parametrize("cls", [TrainerOptions, TrainConfig, RMConfig, DPOConfig, LoraOptions, ScoreConfig],
                         ids=lambda c: c.__name__)
def test_every_field_has_help_text(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help", "").strip()]
    assert missing == []


def test_offline_and_online_trainers_share_one_help_text_per_common_option():
    """The options every trainer has come from `TrainerOptions`; a recipe changes a default, not the
    help (PPO's lr alone says that the value model has its own)."""
    from rlaif.train.online.config import GRPOConfig, PPOConfig, RLOOConfig

    shared = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainerOptions)}
    for cls in (RMConfig, DPOConfig, GRPOConfig, RLOOConfig, PPOConfig):
        assert issubclass(cls, TrainerOptions)
        helps = {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}
        assert [name for name in shared if helps[name] != shared[name]] == (["lr"] if cls is PPOConfig else [])


def test_dpo_help_lists_every_key_with_its_text(capsys):
    with pytest.raises(SystemExit):
        main(["train", "dpo", "--help"])
    out = capsys.readouterr().out
    assert "--overwrite" in out
    out = out.split("config options")[1]
    for f in dataclasses.fields(DPOConfig):
        keys = [f"lora.{g.name}" for g in dataclasses.fields(LoraOptions)] if f.name == "lora" else [f.name]
        for key in keys:
            line = next((x for x in out.splitlines() if x.strip().startswith(key + "=")), "")
            assert line.count(")  ") == 1, f"{key}: no help in {line!r}"


def _config(argv):
    from rlaif.commands.train import _train_config

    args = build_parser().parse_args(argv)
    return _train_config(args, RMConfig if argv[1] == "rm" else DPOConfig, f"train {argv[1]}")


def test_flags_are_type_checked_and_overwrite_flag_sets_the_key():
    cfg = _config(["train", "rm", "--data", "D", "--model", "M", "--out", "O", "--overwrite", "seed=3"])
    assert (cfg.data, cfg.model, cfg.out, cfg.overwrite, cfg.seed) == ("D", "M", "O", True, 3)
    assert _config(["train", "rm", "--data", "D", "--out", "O"]).overwrite is False
    with pytest.raises(UserError, match="train rm: --data and --out are required"):
        _config(["train", "rm", "--out", "O"])


@pytest.mark.parametrize("override, key", [("batch_size=abc", "batch_size"), ("lora.r=1.5", "lora.r"),
                                           ("overwrite=maybe", "overwrite"), ("lr=fast", "lr")])
def test_a_wrong_type_is_one_line_naming_the_key(tmp_path, capsys, override, key):
    code = main(["train", "dpo", "--data", str(tmp_path), "--out", str(tmp_path / "o"), override])
    err = capsys.readouterr().err
    assert code == 2 and f"option '{key}'" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_wrong_type_in_yaml_names_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("save_steps: often\n")
    code = main(["train", "rm", "--config", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "c.yaml" in err and "option 'save_steps'" in err and err.count("\n") == 1
