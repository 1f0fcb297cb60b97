"""PPO value model on tiny random Llamas (no embedded model): initialisation from the RM or the
policy, per-token values, padding, save/load round trip, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train.modeling import reward_scores, score_head
from rlaif.train.online.value import HEAD_FILE, ValueModel, build_value_model, save_value_model


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> str:
    """An `rlaif train rm`-shaped folder: a random LlamaForSequenceClassification (num_labels=1,
    seeded apart from the policy) with the policy's tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-rm")
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_model_dir, num_labels=1))
    with torch.no_grad():
        score_head(rm).weight.normal_(0, 1.0)                # a head that gives clearly non-zero scores
    rm.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def _reload(path: Path) -> ValueModel:
    """A value model rebuilt from what `save_value_model` wrote: the backbone's files and the head."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(path), dtype="auto")
    head = load_file(str(path / HEAD_FILE))
    linear = torch.nn.Linear(backbone.config.hidden_size, 1)
    with torch.no_grad():
        linear.weight.copy_(head["weight"])
        linear.bias.copy_(head["bias"])
    return ValueModel(backbone, linear)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B=2, T=5): row 0 has 5 real tokens, row 1 has 3 then 2 pads."""
    ids = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 3, 3]])
    return ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _rm_per_position(rm_dir: str, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The RM's score head output at every position (B, T), and its usual read-out (B,)."""
    from rlaif.train.modeling import load_reward_model

    rm = load_reward_model(rm_dir, pad_token_id=3)
    captured: list[torch.Tensor] = []
    handle = score_head(rm).register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        scores = reward_scores(rm, ids, mask)
    handle.remove()
    return captured[-1][..., 0], scores


def test_from_reward_model_starts_at_the_rm_scores(tiny_model_dir: str, tiny_rm_dir: str) -> None:
    ids, mask = _batch()
    model = build_value_model(tiny_model_dir, tiny_rm_dir, torch.float32)
    with torch.no_grad():
        values = model(ids, mask)
    assert values.shape == (2, 5) and values.dtype == torch.float32
    per_position, scores = _rm_per_position(tiny_rm_dir, ids, mask)
    torch.testing.assert_close(values * mask, per_position * mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(values[[0, 1], [4, 2]], scores, atol=1e-5, rtol=0)   # V(last token) = r
    assert scores.abs().min() > 1e-3                         # the comparison is not 0 == 0


def test_from_policy_has_the_policy_backbone_and_a_zero_head(tiny_model_dir: str) -> None:
    from transformers import AutoModelForCausalLM

    ids, mask = _batch()
    model = build_value_model(tiny_model_dir, None, torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(model.backbone.embed_tokens.weight, policy.model.embed_tokens.weight)
    assert torch.equal(model.backbone.layers[1].mlp.up_proj.weight, policy.model.layers[1].mlp.up_proj.weight)
    values = model(ids, mask)
    assert torch.equal(values, torch.zeros(2, 5))
    (values * mask).sum().backward()                         # the zero head still learns
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_values_ignore_padding(tiny_model_dir: str, tiny_rm_dir: str) -> None:
    ids, mask = _batch()
    model = build_value_model(tiny_model_dir, tiny_rm_dir, torch.float32)
    with torch.no_grad():
        padded = model(ids, mask)[1, :3]
        alone = model(ids[1:, :3], mask[1:, :3])[0]
        left = model(torch.tensor([[3, 3, 20, 21, 22]]), torch.tensor([[0, 0, 1, 1, 1]]))[0, 2:]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


def test_save_and_load_give_identical_values(tiny_model_dir: str, tiny_rm_dir: str, tmp_path: Path) -> None:
    ids, mask = _batch()
    model = build_value_model(tiny_model_dir, tiny_rm_dir, torch.float32)
    with torch.no_grad():                                    # a trained-looking head and backbone
        model.head.bias.fill_(0.25)
        model.backbone.norm.weight.mul_(1.5)
    save_value_model(model, tmp_path / "value")
    assert (tmp_path / "value" / HEAD_FILE).is_file() and (tmp_path / "value" / "config.json").is_file()
    loaded = _reload(tmp_path / "value")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))
    fresh = build_value_model(tiny_model_dir, tiny_rm_dir, torch.float32)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids, mask), loaded(ids, mask))   # the edits were saved


def test_bfloat16_backbone_keeps_an_fp32_head(tiny_model_dir: str, tmp_path: Path) -> None:
    model = build_value_model(tiny_model_dir, None, torch.bfloat16)
    assert model.backbone.embed_tokens.weight.dtype == torch.bfloat16
    assert model.head.weight.dtype == torch.float32
    assert model(*_batch()).dtype == torch.float32
    save_value_model(model, tmp_path / "v")
    assert _reload(tmp_path / "v").backbone.embed_tokens.weight.dtype == torch.bfloat16


def test_refuses_an_rm_with_another_tokenizer(tiny_model_dir: str, tiny_rm_dir: str, tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "rm-other-tok"
    shutil.copytree(tiny_rm_dir, other)
    tok = AutoTokenizer.from_pretrained(tiny_rm_dir)
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(other)
    with pytest.raises(UserError, match="another tokenizer"):
        build_value_model(tiny_model_dir, str(other), torch.float32)


def test_one_line_errors(tiny_model_dir: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot load reward model") as err:
        build_value_model(tiny_model_dir, str(tmp_path / "missing"), torch.float32)
    assert "\n" not in str(err.value)


def test_start_at_mean_score_sets_every_value_to_the_mean(tiny_model_dir: str) -> None:
    """Zero head + bias = mean of the valid scores: V is that mean at every token (N+ details'
    RM-initialised critic starts at the reward's level; without an RM this is the constant guess)."""
    from rlaif.train.online.value import start_at_mean_score

    model = build_value_model(tiny_model_dir, None)
    ids, mask = _batch()
    scores, valid = torch.tensor([-1.0, -2.0, 100.0]), torch.tensor([1.0, 1.0, 0.0])  # the masked 100 is left out
    assert start_at_mean_score(model, scores, valid) == pytest.approx(-1.5)
    with torch.no_grad():
        values = model(ids, mask)
    torch.testing.assert_close(values[mask > 0], torch.full((int(mask.sum()),), -1.5))
    assert start_at_mean_score(model, scores, torch.zeros(3)) == 0.0  # nothing valid: back to 0


@pytest.mark.parametrize("value_lr, expected", [(None, 1e-2), (5e-3, 5e-3)])
def test_value_model_trains_at_its_own_learning_rate(tiny_model_dir: str, value_lr: float | None,
                                                     expected: float) -> None:
    """PPO's optimizer: the policy at ``lr``, the value model at ``value_lr`` (null: 10 x lr). Adam's
    first step moves every parameter with a clear gradient by its group's lr, so the value head's
    bias moves by value_lr and the policy's weights by lr."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.online.config import PPOConfig
    from rlaif.train.online.setup import make_optimizer

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    value = build_value_model(tiny_model_dir, None)
    cfg = PPOConfig(lr=1e-3, value_lr=value_lr)
    params, optimizer = make_optimizer(cfg, policy, value)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, expected]
    assert len(params) == len(list(policy.parameters())) + len(list(value.parameters()))
    ids, mask = _batch()
    bias, head_before = value.head.bias.detach().clone(), policy.lm_head.weight.detach().clone()
    loss = value(ids, mask).sum() + policy(input_ids=ids, attention_mask=mask).logits.float().mean()
    loss.backward()
    optimizer.step()
    assert float((value.head.bias.detach() - bias).abs()) == pytest.approx(expected, rel=1e-3)
    policy_step = (policy.lm_head.weight.detach() - head_before).abs().max()
    assert float(policy_step) == pytest.approx(1e-3, rel=1e-2)
