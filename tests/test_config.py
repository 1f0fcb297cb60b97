from dataclasses import dataclass, field

import pytest

from rlaif.config import flatten_dict, load_config, parse_overrides
from rlaif.errors import UserError


@dataclass
class Inner:
    model: str = "m"
    temperature: float = 0.8


@dataclass
class Outer:
    n: int = 4
    rubrics: list[str] = field(default_factory=lambda: ["helpfulness"])
    seed: int | None = 0
    policy: Inner = field(default_factory=Inner)
    flag: bool = False


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=1", "c=x", "d=[1,2]", "e="]) == {"a": {"b": 1}, "c": "x", "d": [1, 2], "e": ""}


def test_layering_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("n: 2\npolicy:\n  model: from-file\n  temperature: 1\n")
    cfg = load_config(Outer, f, ["n=8", "rubrics=a,b", "flag=true"])
    assert cfg.n == 8 and cfg.policy.model == "from-file" and cfg.policy.temperature == 1.0
    assert isinstance(cfg.policy.temperature, float)
    assert cfg.rubrics == ["a", "b"] and cfg.flag is True


def test_unknown_key_names_source(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("policy:\n  modle: x\n")
    with pytest.raises(UserError, match=r"c.yaml: unknown option 'policy.modle'"):
        load_config(Outer, f)


def test_bad_type_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="option 'n': expected int"):
        load_config(Outer, None, ["n=many"])
    f = tmp_path / "bad.yaml"
    f.write_text("n: 1\n  x: [\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(Outer, f)


def test_float_accepts_yaml11_exponent_strings(tmp_path):
    @dataclass
    class Opt:
        lr: float = 1.0

    assert load_config(Opt, None, ["lr=1e-5"]).lr == 1e-5
    f = tmp_path / "c.yaml"
    f.write_text("lr: 3e-4\n")
    assert load_config(Opt, f).lr == 3e-4


def test_overrides_may_follow_options():
    from rlaif.cli import build_parser

    args = build_parser().parse_args(["rubric", "calibrate", "helpfulness", "--min-agreement", "0.5",
                                      "judge.engine=fake", "seed=3"])
    assert args.overrides == ["judge.engine=fake", "seed=3"] and args.min_agreement == 0.5
    args = build_parser().parse_args(["train", "rm", "--data", "D", "lr=1e-5", "--out", "O"])
    assert "lr=1e-5" in args.overrides


@dataclass
class WithJudge:
    out: str = ""
    policy: Inner = field(default_factory=Inner)
    judge: Inner = field(default_factory=Inner)


def test_inherit_starts_judge_from_final_policy_then_applies_judge_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("policy:\n  model: p\n  temperature: 0.5\njudge:\n  model: j\n")
    cfg = load_config(WithJudge, f, ["policy.temperature=0.1", "judge.temperature=0.9"], flags={"out": "D"},
                      inherit={"judge": "policy"})
    assert cfg.judge == Inner(model="j", temperature=0.9) and cfg.policy == Inner(model="p", temperature=0.1)
    assert cfg.out == "D"
    cfg = load_config(WithJudge, f, ["policy.temperature=0.1"], inherit={"judge": "policy"})
    assert cfg.judge == Inner(model="j", temperature=0.1)  # a key not given for the judge is the policy's
    assert load_config(WithJudge, f, ["policy.temperature=0.1"]).judge == Inner(model="j", temperature=0.8)
    with pytest.raises(UserError, match=r"command line: option 'judge.temperature': expected float"):
        load_config(WithJudge, None, ["judge.temperature=hot"], inherit={"judge": "policy"})
    with pytest.raises(UserError, match=r"command line: option 'judge': expected a mapping"):
        load_config(WithJudge, None, ["judge=3"], inherit={"judge": "policy"})


def test_flatten_dict_dots_nested_keys_and_drops_or_keeps_empty_dicts():
    nested = {"a": {"b": 1, "c": {"d": [2]}, "empty": {}}, "e": None}
    assert flatten_dict(nested) == {"a.b": 1, "a.c.d": [2], "e": None}
    assert flatten_dict(nested, keep_empty=True) == {"a.b": 1, "a.c.d": [2], "a.empty": {}, "e": None}
    assert flatten_dict({"x": 1}, "top.") == {"top.x": 1}
