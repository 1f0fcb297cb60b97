"""Reward model: score at the last real token, training on a separable set, reload, scoring API."""

import json
from pathlib import Path

import pytest
import torch

from rlaif.train.config import RMConfig
from rlaif.train.data import load_splits, tokenize_rows

ASSETS = Path(__file__).parent / "assets" / "prefs"


def _rm(tiny_model_dir):
    from transformers import AutoTokenizer

    from rlaif.train.modeling import load_reward_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    return tok, load_reward_model(tiny_model_dir, tok.pad_token_id).eval()


def test_score_is_read_at_last_real_token_whatever_the_padding(tiny_model_dir):
    from rlaif.train.modeling import reward_scores

    tok, model = _rm(tiny_model_dir)
    seqs = [[5, 17, 300, 41], [9, 8, 7, 6, 5, 4, 3], [tok.pad_token_id, 12, tok.pad_token_id]]  # pad id inside a real row

    def scores(side: str, extra: int) -> torch.Tensor:
        width = max(map(len, seqs)) + extra
        ids = torch.full((len(seqs), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[i, sl], mask[i, sl] = torch.tensor(s), 1
        with torch.no_grad():
            return reward_scores(model, ids, mask)

    alone = torch.stack([scores("right", 0)[i] for i in range(3)])
    for side in ("right", "left"):
        for extra in (0, 5):
            assert torch.allclose(scores(side, extra), alone, atol=1e-5), (side, extra)
    # the last real token matters: dropping it changes the score
    with torch.no_grad():
        ids = torch.tensor([seqs[0][:-1]])
        assert not torch.allclose(reward_scores(model, ids, torch.ones_like(ids)), alone[0])


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model_dir):
    from rlaif.train.rm import train_rm

    out = tmp_path_factory.mktemp("rm")
    summary = train_rm(RMConfig(data=str(ASSETS), model=tiny_model_dir, out=str(out), lr=3e-3, epochs=5,
                                batch_size=8, warmup_ratio=0.0, save_steps=0, logging_steps=5, progress=False))
    return out, summary


def test_rm_learns_a_separable_set(trained_rm):
    out, summary = trained_rm
    assert summary["train"]["accuracy"] >= 0.9
    assert summary["test"]["pairs"] == 12
    assert 0 <= summary["padding_fraction"] < 0.5
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy" in x for x in lines) and any("train/loss" in x for x in lines)
    assert list((out / "runs").iterdir()), "TensorBoard event files expected"


def test_trained_rm_reloads_with_plain_transformers(trained_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlaif.train.modeling import reward_scores

    out, _ = trained_rm
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    rows = load_splits(ASSETS)["train"][:4]
    pairs, _ = tokenize_rows(tok, rows, 1024, 512)
    ids = torch.tensor([pairs[0].prompt_ids + pairs[0].chosen_ids])
    with torch.no_grad():
        hf = model(input_ids=ids).logits[0, 0]  # HF's own pooling, no padding
        ours = reward_scores(model, ids, torch.ones_like(ids))[0]
    assert torch.allclose(hf, ours, atol=1e-5)


def test_score_function_and_cli(trained_rm, tmp_path, capsys):
    from rlaif.train.score import score

    out, _ = trained_rm
    rows = load_splits(ASSETS)["train"]
    prompts = [r.prompt for r in rows]
    chosen = score(prompts, [r.chosen[0]["content"] for r in rows], model=str(out), device="cpu")
    rejected = score(prompts, [r.rejected[0]["content"] for r in rows], model=str(out), device="cpu")
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(rows) >= 0.9
    # batch composition does not change a score
    single = score(prompts[:1], [rows[0].chosen[0]["content"]], model=str(out), device="cpu", batch_size=1)
    assert single[0] == pytest.approx(chosen[0], abs=1e-4)

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
        {"prompt": rows[0].prompt, "chosen": rows[0].chosen, "rejected": rows[0].rejected},
    ]) + "\n")
    from rlaif.cli import main

    assert main(["rm", "score", "--model", str(out), "--data", str(data), "device=cpu"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert isinstance(lines[0]["score"], float)
    assert lines[1]["reward_chosen"] == pytest.approx(chosen[0], abs=1e-4)
    assert "pairwise accuracy" in captured.err


@pytest.mark.slow
def test_rm_with_lora_saves_a_merged_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from rlaif.train.config import LoraOptions
    from rlaif.train.rm import train_rm

    s = train_rm(RMConfig(data=str(ASSETS), model=tiny_model_dir, out=str(tmp_path), lr=1e-2, max_steps=2,
                          batch_size=8, save_steps=0, progress=False, lora=LoraOptions(enabled=True, r=4, alpha=8)))
    assert s["steps"] == 2 and (tmp_path / "adapter" / "adapter_config.json").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert not any("lora" in k or "modules_to_save" in k for k in model.state_dict())
