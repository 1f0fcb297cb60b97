"""Prompt-file reading: formats, ids, metadata, and one-line errors naming file, line and field."""

import json
from pathlib import Path

import pytest

from rlaif.errors import UserError
from rlaif.io.records import (CANDIDATE_SCHEMA, PAIR_SCHEMA, content_id, read_candidates, read_prompts, validate)

ASSETS = Path(__file__).parent / "assets"


def test_jsonl_prompt_messages_metadata_and_ids():
    prompts = read_prompts(ASSETS / "prompts_mixed.jsonl")
    assert [p.id for p in prompts][0] == "p1" and prompts[2].id == "7"  # integer id -> string
    assert prompts[0].messages == [{"role": "user", "content": "What is 2 + 2?"}]
    assert prompts[0].metadata == {"category": "maths"}
    assert prompts[1].messages[0] == {"role": "system", "content": "Be brief."}
    assert prompts[1].metadata == {"source": "test"}
    # no id: a stable hash of the content (same on every read, differs with content)
    assert prompts[1].id == content_id(prompts[1].messages) == read_prompts(ASSETS / "prompts_mixed.jsonl")[1].id
    assert len(prompts[1].id) == 16 and content_id([{"role": "user", "content": "x"}]) != prompts[1].id


def test_txt_one_prompt_a_line_skips_blank_lines():
    prompts = read_prompts(ASSETS / "prompts.txt")
    assert [p.messages[0]["content"] for p in prompts] == ["What is the capital of France?", "Write a haiku about tests."]
    assert prompts[1].source.endswith("prompts.txt:3")


def test_parquet_and_json_with_prompt_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["a?", "b?"], "level": [1, 2]}), tmp_path / "d.parquet")
    prompts = read_prompts(tmp_path / "d.parquet", prompt_column="question")
    assert [p.messages[0]["content"] for p in prompts] == ["a?", "b?"]
    assert prompts[1].metadata == {"level": 2}
    (tmp_path / "d.json").write_text(json.dumps({"train": [{"conv": [{"role": "user", "content": "hi"}]}]}))
    prompts = read_prompts(tmp_path / "d.json", prompt_column="conv")
    assert prompts[0].messages == [{"role": "user", "content": "hi"}]
    with pytest.raises(UserError, match=r"d.parquet:1: .*'prompt'"):
        read_prompts(tmp_path / "d.parquet")  # wrong column: names row 1


@pytest.mark.parametrize("name, pattern", [
    ("bad_malformed.jsonl", r"bad_malformed.jsonl:2: malformed JSON"),
    ("bad_missing_field.jsonl", r"bad_missing_field.jsonl:2: missing 'prompt'"),
    ("bad_duplicate_id.jsonl", r"bad_duplicate_id.jsonl:2: field 'id': duplicate id 'a' \(first at .*:1\)"),
    ("empty.jsonl", r"empty.jsonl: no prompts"),
])
def test_bad_files_name_file_line_and_field(name, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        read_prompts(ASSETS / name)
    assert "\n" not in str(e.value)


def test_field_level_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(UserError, match=r"p.jsonl:1: field 'messages.0.role'"):
        read_prompts(f)
    f.write_text('{"prompt": "a", "messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(UserError, match="found both"):
        read_prompts(f)
    f.write_text('{"prompt": 3}\n')
    with pytest.raises(UserError, match=r"p.jsonl:1: field 'prompt'"):
        read_prompts(f)
    f.write_text('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
    with pytest.raises(UserError, match="last message is the assistant's"):
        read_prompts(f)
    with pytest.raises(UserError, match="file not found"):
        read_prompts(tmp_path / "nope.jsonl")


def test_user_candidates_are_normalised():
    rows = read_candidates(ASSETS / "candidates_user.jsonl")
    assert rows[0]["id"] == "u1" and rows[0]["responses"] == ["7", "It is 8.", "Seven."]
    assert rows[1]["metadata"] == {"note": "kept"} and rows[1]["policy"] == "user"
    for row in rows:
        validate(row, CANDIDATE_SCHEMA)


def test_candidates_need_responses(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"prompt": "x", "responses": []}\n')
    with pytest.raises(UserError, match=r"c.jsonl:1: field 'responses'"):
        read_candidates(f)


def test_pair_schema_rejects_wrong_roles():
    pair = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}], "id": "x", "score_chosen": 1.0,
            "score_rejected": 0.0, "margin": 1.0, "rubric": "r", "judge": "j", "policy": "p"}
    validate(pair, PAIR_SCHEMA)
    pair["chosen"] = [{"role": "user", "content": "a"}]
    with pytest.raises(UserError, match="chosen.0.role"):
        validate(pair, PAIR_SCHEMA)


BINARY_LINE = b'{"prompt": "caf\xe9 \xff\xfe"}\n'  # Latin-1 bytes: not UTF-8


@pytest.mark.parametrize("verb, flag, name", [
    ("run", "--prompts", "p.jsonl"), ("generate", "--prompts", "p.txt"), ("generate", "--prompts", "p.json"),
    ("judge", "--candidates", "c.jsonl"), ("build", "--judgements", "j.jsonl"), ("run", "--config", "c.yaml")])
def test_file_that_is_not_utf8_is_one_line_error_through_cli(tmp_path, capsys, verb, flag, name):
    from rlaif.cli import main

    bad = tmp_path / name
    good = b'{"prompt": "fine"}\n' if name != "c.yaml" else b"seed: 1\n"
    bad.write_bytes(good + BINARY_LINE)
    engine = {"judge": "judge.engine=fake", "build": "seed=0"}.get(verb, "policy.engine=fake")
    args = [verb, flag, str(bad), "--out", str(tmp_path / "out"), engine, "progress=false"]
    if verb == "run" and flag == "--config":
        args += ["--prompts", str(ASSETS / "prompts.txt")]
    if verb in ("run", "judge"):
        args += ["--rubric", "helpfulness"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"{bad}:2: not UTF-8 text (byte 0xe9 at column 16)" in err
    assert not (tmp_path / "out" / "candidates.jsonl").exists()


def test_a_shipped_prompt_set_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    """`--prompts demo` reads the shipped prompts/demo.jsonl; a local file of that name wins; an unknown
    name says which sets are shipped."""
    from rlaif.io.records import read_prompts
    from rlaif.shipped import shipped_dir

    monkeypatch.chdir(tmp_path)
    shipped = read_prompts("demo")
    assert len(shipped) == sum(1 for line in (shipped_dir("prompts") / "demo.jsonl").open() if line.strip())
    (tmp_path / "demo").write_text('{"prompt": "local"}\n')
    assert [p.messages[-1]["content"] for p in read_prompts("demo")] == ["local"]
    with pytest.raises(UserError, match=r"nosuch: file not found .*shipped prompt set: demo"):
        read_prompts("nosuch")


def test_candidate_row_reads_responses_in_each_shape(tmp_path):
    from rlaif.io.candidate_rows import candidate_row

    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "c1", "prompt": "hi", "responses": ["a", "b"], "finish_reasons": ["stop", "length"], '
                    '"num_tokens": [1, 2]}\n{"prompt": "hi", "response_a": "a", "response_b": "b"}\n'
                    '{"messages": [{"role": "user", "content": "yo"}], "response": "c"}\n{"prompt": "hi"}\n'
                    '{"prompt": "hi", "responses": [1]}\n{"responses": ["a"]}\n')
    first = candidate_row(path, 1)
    assert (first.id, first.messages, first.responses) == ("c1", [{"role": "user", "content": "hi"}], ["a", "b"])
    assert (first.finish_reasons, first.num_tokens) == (["stop", "length"], [1, 2])
    second = candidate_row(path, 2)
    assert (second.id, second.responses, second.finish_reasons) == ("rows.jsonl:2", ["a", "b"], None)
    assert candidate_row(path, 3).responses == ["c"] and candidate_row(path, 3).messages[0]["content"] == "yo"
    for row, needle in [(4, ":4: field 'responses': expected 'responses'"), (5, ":5: field 'responses': expected strings"),
                        (6, ":6: field 'prompt': expected 'prompt'"), (0, "--row 0: lines are numbered from 1")]:
        with pytest.raises(UserError, match=needle):
            candidate_row(path, row)
