"""Shared data path: templating once (no double BOS/EOS), prompt masking, truncation, batching, bad input."""

import json
import shutil
from pathlib import Path

import pytest

from rlaif.errors import UserError
from rlaif.train.data import (IGNORE_INDEX, PreferenceRow, collate, length_grouped_batches, load_splits,
                              tokenize_pair, tokenize_rows)

ASSETS = Path(__file__).parent / "assets" / "prefs"

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    " + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module", params=["chatml", "llama3-style"])
def any_tokenizer(request, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    if request.param == "llama3-style":
        tok.chat_template = LLAMA3_TEMPLATE
    return tok


def _ids(x):
    return list(x["input_ids"] if hasattr(x, "keys") else x)


def test_prompt_plus_response_is_the_templated_conversation(any_tokenizer):
    tok = any_tokenizer
    rows = load_splits(ASSETS)["train"][:6]
    for row in rows:
        pair = tokenize_pair(tok, row, max_length=4096, max_prompt_length=2048)
        for response, ids in ((row.chosen, pair.chosen_ids), (row.rejected, pair.rejected_ids)):
            full = _ids(tok.apply_chat_template(row.prompt + response, tokenize=True))
            assert pair.prompt_ids + ids == full
            # BOS/EOS exactly as often as the rendered template writes them: nothing added or doubled
            text = tok.apply_chat_template(row.prompt + response, tokenize=False)
            ours = pair.prompt_ids + ids
            assert ours.count(tok.bos_token_id) == text.count(tok.bos_token)
            assert ours.count(tok.eos_token_id) == text.count(tok.eos_token)
            assert ours[:2] != [tok.bos_token_id] * 2 and ours[-2:] != [tok.eos_token_id] * 2
        assert ids, "response must not be empty"


def test_llama3_style_has_a_single_bos(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = LLAMA3_TEMPLATE
    row = load_splits(ASSETS)["train"][0]
    pair = tokenize_pair(tok, row, 4096, 2048)
    assert (pair.prompt_ids + pair.chosen_ids).count(tok.bos_token_id) == 1
    assert pair.prompt_ids[0] == tok.bos_token_id


def test_labels_mask_the_prompt_and_padding(tokenizer):
    rows = load_splits(ASSETS)["train"][:3]
    pairs, _ = tokenize_rows(tokenizer, rows, 4096, 2048)
    batch = collate(pairs, tokenizer.pad_token_id)
    n = len(pairs)
    for i, p in enumerate(pairs):
        for row_i, response in ((i, p.chosen_ids), (i + n, p.rejected_ids)):
            labels = batch.labels[row_i]
            assert (labels[:len(p.prompt_ids)] == IGNORE_INDEX).all()
            kept = labels[labels != IGNORE_INDEX].tolist()
            assert kept == response
            assert batch.attention_mask[row_i].sum() == len(p.prompt_ids) + len(response)
    text = tokenizer.decode(pairs[0].chosen_ids)
    assert text.startswith(rows[0].chosen[0]["content"])


def test_truncation_is_counted_and_keeps_every_pair(tokenizer):
    long_prompt = [{"role": "user", "content": "word " * 400 + "What is 2+2?"}]
    long_answer = [{"role": "assistant", "content": "four " * 300}]
    short = [{"role": "assistant", "content": "4"}]
    rows = [PreferenceRow(long_prompt, short, long_answer), PreferenceRow(long_prompt[:0] + [
        {"role": "user", "content": "hi"}], short, short)]
    pairs, stats = tokenize_rows(tokenizer, rows, max_length=128, max_prompt_length=64)
    assert len(pairs) == 2 and stats.pairs == 2
    assert stats.prompt_truncated == 1 and stats.response_truncated == 1
    p = pairs[0]
    assert len(p.prompt_ids) == 64 and p.max_len <= 128
    # the prompt keeps its end: the question and the assistant header
    assert tokenizer.decode(p.prompt_ids).rstrip().endswith("assistant")
    assert "What is 2+2?" in tokenizer.decode(p.prompt_ids)
    assert "truncated in 1" in stats.summary() and "none dropped" in stats.summary()
    with pytest.raises(UserError):
        tokenize_rows(tokenizer, rows, max_length=64, max_prompt_length=64)


def test_length_grouping_cuts_padding_and_covers_every_pair(tokenizer):
    rows = load_splits(ASSETS)["train"]
    pairs, _ = tokenize_rows(tokenizer, rows, 4096, 2048)
    lengths = [p.max_len for p in pairs]

    def padding(group: bool) -> float:
        batches = length_grouped_batches(lengths, 4, seed=1, group_by_length=group)
        assert sorted(i for b in batches for i in b) == list(range(len(pairs)))
        real = pad = 0
        for b in batches:
            batch = collate([pairs[i] for i in b], tokenizer.pad_token_id)
            real, pad = real + batch.real_tokens, pad + batch.padded_tokens
        return pad / (real + pad)

    assert padding(True) < padding(False)
    assert length_grouped_batches(lengths, 4, 3) == length_grouped_batches(lengths, 4, 3)
    assert length_grouped_batches(lengths, 4, 3) != length_grouped_batches(lengths, 4, 4)


def _copy_assets(tmp_path: Path) -> Path:
    d = tmp_path / "data" / "preferences"
    shutil.copytree(ASSETS, d)
    return tmp_path / "data"


def test_finds_preferences_subfolder_or_flat(tmp_path):
    data = _copy_assets(tmp_path)
    assert len(load_splits(data)["train"]) == 44
    assert len(load_splits(data / "preferences")["test"]) == 12


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "x", "chosen": "a"\n', "train.jsonl:2: malformed JSON"),
    ('{"prompt": "hi", "chosen": "a"}\n', "train.jsonl:1: field 'rejected': missing"),
    ('{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}\n', "train.jsonl:1: field 'prompt[0]'"),
    ('{"prompt": "hi", "chosen": "a", "rejected": "b", "margin": "big"}\n', "train.jsonl:1: field 'margin'"),
    ('\n', "empty train split"),
])
def test_bad_input_is_one_line_error(tmp_path, content, message):
    (tmp_path / "train.jsonl").write_text(content)
    with pytest.raises(UserError) as e:
        load_splits(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_folder_or_files(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_splits(tmp_path / "nope")
    with pytest.raises(UserError, match="preferences/train.jsonl"):
        load_splits(tmp_path)


def test_string_prompts_are_accepted(tmp_path, tokenizer):
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go away"}) + "\n")
    row = load_splits(tmp_path)["train"][0]
    assert row.prompt == [{"role": "user", "content": "hi"}]
    assert row.chosen == [{"role": "assistant", "content": "hello"}]
