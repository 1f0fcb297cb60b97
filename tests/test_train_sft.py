"""`rlaif train sft` on a tiny random model: packed rows give the losses of padded rows, only the
assistant's tokens are learnt, every input format reads the same, bad input is one line + exit 2,
training lowers the loss, and a resumed run ends bit-identical to an uninterrupted one."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlaif.cli import main
from rlaif.errors import UserError
from rlaif.train.config import LoraOptions, SFTConfig
from rlaif.train.data import IGNORE_INDEX
from rlaif.train.packing import PackedRow, budget_batches, pack
from rlaif.train.sft import assistant_mask, read_conversations, row_nll, sft_source, tokenize_conversations

WORDS = "the capital of France is Paris spider has eight legs water boils at one hundred degrees".split()


def chats(n: int, seed: int = 0) -> list[list[dict]]:
    """n short conversations; every answer starts with 'ANSWER:' (some with a system turn or two turns)."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        row = [{"role": "user", "content": f"Question {i}: {q}?"}, {"role": "assistant", "content": f"ANSWER: {a}"}]
        if i % 3 == 0:
            row = [{"role": "system", "content": "Be brief."}] + row
        if i % 4 == 0:
            row += [{"role": "user", "content": "And?"}, {"role": "assistant", "content": f"ANSWER: {q}"}]
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


# ----------------------------------------------------------------------------- masks and packing

def test_assistant_mask_of_a_two_turn_chat_covers_each_reply_and_its_end_token(tok):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye"}]
    ids, learn = assistant_mask(tok, chat)
    assert tok.decode(ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                               "<|im_start|>assistant\nHello there<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                               "<|im_start|>assistant\nGoodbye<|im_end|>\n")
    spans, start = [], None  # the learnt token runs, by hand: each reply + <|im_end|> + the newline after it
    for i, flag in enumerate(learn + [False]):
        if flag and start is None:
            start = i
        if not flag and start is not None:
            spans.append(tok.decode(ids[start:i]))
            start = None
    assert spans == ["Hello there<|im_end|>\n", "Goodbye<|im_end|>\n"]
    # the assistant header and every system / user token are prompt
    header = tok.encode("<|im_start|>assistant\n")
    first = learn.index(True)
    assert ids[first - len(header):first] == header and not any(learn[:first])


def test_targets_are_shifted_within_each_row(tok):
    rows, _ = tokenize_conversations(tok, chats(3), 1024)
    for row in rows:
        for t, target in enumerate(row.targets):
            assert target == IGNORE_INDEX or target == row.input_ids[t + 1]
        assert row.targets[-1] == IGNORE_INDEX, "a row's last token never predicts the next row's first"


def _padded_nll(model, rows: list[PackedRow], pad: int) -> torch.Tensor:
    """Per-row mean NLL with the rows right-padded in one batch and an attention mask (the reference)."""
    width = max(r.max_len for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX)
    for i, r in enumerate(rows):
        ids[i, :r.max_len], mask[i, :r.max_len], targets[i, :r.max_len] = (
            torch.tensor(r.input_ids), 1, torch.tensor(r.targets))
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return nll.sum(-1) / (targets != IGNORE_INDEX).sum(-1)


def test_packed_rows_give_the_per_row_losses_of_padded_rows(tok, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows, _ = tokenize_conversations(tok, chats(7), 1024)
    assert len({r.max_len for r in rows}) > 3, "rows of different lengths"
    batch = pack(rows)
    with torch.no_grad():
        sums, counts = row_nll(model, batch)
        want = _padded_nll(model, rows, tok.pad_token_id)
        # the same rows with positions running on across rows (no restart): attention crosses rows
        leaky = pack(rows)
        leaky.position_ids = torch.arange(leaky.input_ids.shape[1]).unsqueeze(0)
        leaky_sums, _ = row_nll(model, leaky)
    assert batch.input_ids.shape[0] == 1 and batch.padded_tokens == 0
    assert torch.allclose(sums / counts, want, atol=1e-5), (sums / counts - want).abs().max()
    assert (leaky_sums / counts - want).abs().max() > 1e-3, "the test can tell rows that see each other"


def test_budget_batches_fill_the_budget_and_use_every_row_once():
    lengths = [5, 9, 3, 12, 7, 7, 1, 20, 4, 30]
    batches = budget_batches(lengths, 32, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 32 for b in batches)
    assert len(batches) == 4 == -(-sum(lengths) // 32), "first fit packs 98 tokens into the fewest batches"
    assert budget_batches(lengths, 32, seed=3) == batches and budget_batches(lengths, 32, seed=4) != batches


# ----------------------------------------------------------------------------- inputs

def test_every_input_format_reads_the_same_conversations(tmp_path, tok):
    rows = [c for c in chats(6) if len(c) == 2]  # single-turn: expressible as prompt/completion
    want = [tokenize_conversations(tok, rows, 1024)[0][i].input_ids for i in range(len(rows))]
    messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": r} for r in rows])
    strings = write_jsonl(tmp_path / "s.jsonl", [{"prompt": r[0]["content"], "completion": r[1]["content"]}
                                                 for r in rows])
    lists = write_jsonl(tmp_path / "l.jsonl", [{"prompt": r[:1], "completion": r[1:]} for r in rows])
    run = tmp_path / "run"
    write_jsonl(run / "sft" / "train.jsonl", [{"messages": r, "id": str(i)} for i, r in enumerate(rows[:4])])
    write_jsonl(run / "sft" / "test.jsonl", [{"messages": r} for r in rows[4:]])
    for path in (messages, strings, lists):
        got = tokenize_conversations(tok, read_conversations(path), 1024)[0]
        assert [r.input_ids for r in got] == want, path.name
    files, tokenize = sft_source(SFTConfig(data=str(run)))
    assert files == {"train": run / "sft" / "train.jsonl", "test": run / "sft" / "test.jsonl"}
    train, _, test, _ = tokenize(tok)
    assert [r.input_ids for r in train + test] == want


@pytest.mark.parametrize("row, field", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "field 'messages': no assistant turn"),
    ({"messages": []}, "field 'messages': expected a non-empty list"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "field 'messages[0]'"),
    ({"prompt": "hi", "completion": [{"role": "user", "content": "x"}]}, "field 'completion': no assistant turn"),
    ({"prompt": 1, "completion": "x"}, "field 'prompt'"),
    ({"text": "hi"}, "expected 'messages', or 'prompt' and 'completion'"),
])
def test_bad_rows_are_one_line_naming_file_and_line(tmp_path, capsys, row, field):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": chats(1)[0]}, row])
    code = main(["train", "sft", "--data", str(data), "--model", "unused", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"d.jsonl:2: {field}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists(), "nothing is written before the input is known good"


def test_missing_data_and_small_token_budget(tmp_path):
    from rlaif.train.sft import train_sft

    with pytest.raises(UserError, match="no such file or folder"):
        train_sft(SFTConfig(data=str(tmp_path / "nope"), out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="max_tokens_per_batch"):
        train_sft(SFTConfig(data="x", out=str(tmp_path / "o"), max_length=512, max_tokens_per_batch=256))


# ----------------------------------------------------------------------------- training

def _cfg(data: Path, model: str, out: Path, **kw) -> SFTConfig:
    base = dict(data=str(data), model=model, out=str(out), lr=3e-3, max_steps=12, max_tokens_per_batch=256,
                max_length=256, warmup_ratio=0.0, logging_steps=1, save_steps=0, progress=False)
    return SFTConfig(**{**base, **kw})


@pytest.fixture
def sft_data(tmp_path) -> Path:
    rows = chats(40)
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"messages": r} for r in rows[:32]])
    write_jsonl(tmp_path / "data" / "test.jsonl", [{"messages": r} for r in rows[32:]])
    return tmp_path / "data"


def test_sft_lowers_train_and_held_out_loss_and_moves_the_weights(tmp_path, sft_data, tiny_model_dir):
    from safetensors.torch import load_file

    from rlaif.train.sft import train_sft

    out = tmp_path / "out"
    summary = train_sft(_cfg(sft_data, tiny_model_dir, out))
    assert summary["steps"] == 12 and summary["data"]["train"]["rows"] == 32
    assert summary["train_loss_last_steps"] < summary["train_loss_first_steps"] - 0.5
    assert summary["test"]["loss"] < summary["test_before"]["loss"] - 0.5
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "train/loss" in x] == list(range(1, 13))
    assert all(x["train/padding_fraction"] == 0 for x in lines if "train/loss" in x), "packed: no padding"
    a, b = load_file(out / "model.safetensors"), load_file(Path(tiny_model_dir) / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a.keys() & b.keys()) > 1e-3


def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path, sft_data, tiny_model_dir):
    from safetensors.torch import load_file

    from rlaif.train.sft import train_sft

    straight = train_sft(_cfg(sft_data, tiny_model_dir, tmp_path / "straight", max_steps=6, grad_accum=2))
    out = tmp_path / "killed"
    train_sft(_cfg(sft_data, tiny_model_dir, out, max_steps=6, grad_accum=2, save_steps=3))
    # what a kill after step 4 leaves: the step-3 checkpoint and the log lines so far, no final model
    for name in ("summary.json", "config.json", "model.safetensors"):
        (out / name).unlink()
    resumed = train_sft(_cfg(sft_data, tiny_model_dir, out, max_steps=6, grad_accum=2, save_steps=3))
    assert resumed["resumed_from"] == 3
    assert resumed["test"]["loss"] == straight["test"]["loss"]
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert steps == list(range(1, 7))


def test_lora_sft_saves_the_adapter_and_a_merged_model(tmp_path, sft_data, tiny_model_dir):
    from rlaif.train.sft import train_sft

    out = tmp_path / "out"
    summary = train_sft(_cfg(sft_data, tiny_model_dir, out, max_steps=3, lora=LoraOptions(enabled=True, r=4)))
    assert summary["steps"] == 3 and (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "model.safetensors").is_file()


def test_other_settings_are_refused_and_the_cli_runs(tmp_path, sft_data, tiny_model_dir, capsys):
    out = tmp_path / "out"
    argv = ["train", "sft", "--data", str(sft_data), "--model", tiny_model_dir, "--out", str(out), "max_steps=2",
            "max_tokens_per_batch=256", "max_length=256", "progress=false", "save_steps=0"]
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["trainer"] == "sft"
    assert main(argv[:-1] + ["lr=0.1"]) == 2
    assert "lr" in capsys.readouterr().err
    # bad data with --overwrite: refused before anything in --out is deleted
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no reply"}]}])
    assert main(["train", "sft", "--data", str(bad), "--model", tiny_model_dir, "--out", str(out), "--overwrite"]) == 2
    assert "bad.jsonl:1: field 'messages': no assistant turn" in capsys.readouterr().err
    assert (out / "summary.json").is_file() and (out / "model.safetensors").is_file()


def test_the_packed_batches_of_each_step_do_not_depend_on_the_process_count(tok):
    from rlaif.train.sft import PackedMicroBatches
    from tests.test_train_distributed import FakeAccelerator

    rows, _ = tokenize_conversations(tok, chats(40), 256)

    def steps(world: int, accum: int, n: int) -> list[list[tuple[int, ...]]]:
        cfg = SFTConfig(max_tokens_per_batch=200, max_length=200, grad_accum=accum, seed=5)
        ranks = [PackedMicroBatches(cfg, rows, 0, FakeAccelerator(world, r)) for r in range(world)]
        assert len({b.per_epoch for b in ranks}) == 1 and ranks[0].per_epoch % accum == 0
        return [sorted(tuple(b(s * accum + k).indices) for b in ranks for k in range(accum)) for s in range(n)]

    one = steps(1, 4, 6)
    assert steps(2, 2, 6) == one and steps(4, 1, 6) == one
    assert one[0] != one[len(one) // 2], "each epoch has its own order"
