"""`rlaif run/generate/judge/build` end to end on the fake engine: layout, schemas, resume after
SIGKILL (byte-identical to an uninterrupted run), overwrite, and bad input through the CLI."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from processes import run_and_signal

from rlaif.backends.fake import FakeBackend
from rlaif.cli import main
from rlaif.dataset.options import RunConfig
from rlaif.dataset.pipeline import Engines, run_all
from rlaif.errors import UserError
from rlaif.io.records import CANDIDATE_SCHEMA, JUDGEMENT_SCHEMA, PAIR_SCHEMA, read_jsonl
from rlaif.backends.base import BackendConfig

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
DEMO = ROOT / "prompts" / "demo.jsonl"
RUBRICS = ["--rubric", "helpfulness", "--rubric", "overall_preference", "--rubric", "truthfulness"]
FAKE = ["policy.engine=fake", "progress=false", "chunk_size=4", "judge_chunk_size=3"]


def small_prompts(tmp_path: Path, n: int = 12) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:n]))
    return f


def snapshot(out: Path) -> dict[str, bytes]:
    """Every output file's bytes (manifest without its timings); the .rlaif/ work folder left out."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not rel.startswith(".rlaif/"):
            data = p.read_bytes()
            if rel == "manifest.json":
                m = json.loads(data)
                m.pop("timings")
                data = json.dumps(m, sort_keys=True).encode()
            files[rel] = data
    return files


def check_layout(out: Path) -> None:
    for name in ["candidates.jsonl", "judgements.jsonl", "preferences/train.jsonl", "preferences/test.jsonl",
                 "manifest.json", "README.md", "report.html"]:
        assert (out / name).is_file(), name
    read_jsonl(out / "candidates.jsonl", CANDIDATE_SCHEMA)
    read_jsonl(out / "judgements.jsonl", JUDGEMENT_SCHEMA)
    read_jsonl(out / "preferences" / "train.jsonl", PAIR_SCHEMA)
    read_jsonl(out / "preferences" / "test.jsonl", PAIR_SCHEMA)


def test_run_writes_contract_layout_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    out = tmp_path / "out"
    rc = main(["run", "--prompts", str(small_prompts(tmp_path)), *RUBRICS, "--out", str(out), *FAKE,
               "require_position_consistent=false", "pairwise_min_confidence=0.5", "n=3"])
    assert rc == 0
    check_layout(out)
    cands = read_jsonl(out / "candidates.jsonl")
    assert [c["id"] for c in cands][:2] == ["code-fib", "code-race"] and all(len(c["responses"]) == 3 for c in cands)
    judgements = read_jsonl(out / "judgements.jsonl")
    assert {(j["rubric"], j["method"]) for j in judgements} == {
        ("helpfulness", "logprob"), ("overall_preference", "pairwise"), ("truthfulness", "verdict")}
    train = read_jsonl(out / "preferences" / "train.jsonl")
    test = read_jsonl(out / "preferences" / "test.jsonl")
    assert train and test and {p["id"] for p in train}.isdisjoint({p["id"] for p in test})
    assert all(p["rubric"] == "helpfulness+overall_preference+truthfulness" for p in train)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"] == {"policy": "fake:smollm2-135m", "judge": "fake:smollm2-135m"}
    assert manifest["stages"]["build"]["counts"]["train_pairs"] == len(train)
    assert manifest["stages"]["generate"]["config"]["n"] == 3
    assert "seconds" in manifest["timings"]["generate"]
    for p in out.rglob("*"):
        if p.is_file():
            assert b"sk-test-secret-value" not in p.read_bytes(), p
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "Position consistency" in html


# The fake engine, in a subprocess, hangs on its second call of ``HANG_ON`` (chat: generation;
# choice_logprobs: logprob judging) so the test can kill it mid-stage whatever the machine's load.
HANGING_FAKE = (
    "import os, sys, time\n"
    "from rlaif.backends.fake import FakeBackend\n"
    "hang_on, calls = os.environ.get('HANG_ON'), {}\n"
    "def slow(name):\n"
    "    real = getattr(FakeBackend, name)\n"
    "    def call(self, *a, **k):\n"
    "        calls[name] = calls.get(name, 0) + 1\n"
    "        if name == hang_on and calls[name] == 2:\n"
    "            time.sleep(120)\n"
    "        return real(self, *a, **k)\n"
    "    setattr(FakeBackend, name, call)\n"
    "slow('chat'); slow('choice_logprobs')\n"
    "from rlaif.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _run_cli(args: list[str], cwd: Path, kill_when: Path | None = None, hang_on: str = "") -> int:
    """Run `rlaif` (fake engine) in a subprocess; SIGKILL it once ``kill_when`` has a row (the engine
    hangs on its second ``hang_on`` call, so the kill always lands mid-stage)."""
    ended = run_and_signal([sys.executable, "-c", HANGING_FAKE, *args], kill_when, sig=signal.SIGKILL, timeout=120,
                           env={**os.environ, "HANG_ON": hang_on}, cwd=cwd)
    expected = 0 if kill_when is None else -signal.SIGKILL
    assert ended.returncode == expected, ended.stderr[-3000:]
    return ended.returncode


def test_kill_9_mid_stage_then_resume_equals_uninterrupted_run(tmp_path):
    prompts = small_prompts(tmp_path, 16)
    args = ["run", "--prompts", str(prompts), *RUBRICS, "--out", "out", *FAKE, "n=3", "strategy=all-pairs",
            "require_position_consistent=false", "pairwise_min_confidence=0.5"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _run_cli(args, tmp_path / "a")
    reference = snapshot(tmp_path / "a" / "out")

    work = tmp_path / "b" / "out" / ".rlaif"
    _run_cli(args, tmp_path / "b", kill_when=work / "candidates.jsonl", hang_on="chat")  # killed generating
    assert not (tmp_path / "b" / "out" / "candidates.jsonl").exists()
    _run_cli(args, tmp_path / "b", kill_when=work / "judgements.jsonl", hang_on="choice_logprobs")  # then judging
    assert (tmp_path / "b" / "out" / "candidates.jsonl").exists()
    assert not (tmp_path / "b" / "out" / "judgements.jsonl").exists()
    _run_cli(args, tmp_path / "b")  # resumed to the end
    resumed = snapshot(tmp_path / "b" / "out")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert resumed[name] == reference[name], name
    manifest = json.loads((tmp_path / "b" / "out" / "manifest.json").read_text())
    assert manifest["timings"]["judge"]["helpfulness"]["rows_resumed"] >= 1  # the 3rd run resumed judging


def test_rerun_with_other_settings_refused_and_overwrite_starts_over(tmp_path, capsys):
    prompts = str(small_prompts(tmp_path, 6))
    out = tmp_path / "out"
    base = ["run", "--prompts", prompts, "--rubric", "helpfulness", "--out", str(out), *FAKE]
    assert main(base) == 0
    before = snapshot(out)
    assert main(base) == 0  # same settings: every stage skipped, same files
    assert snapshot(out) == before
    # `build --overwrite` in the same folder redoes only the build: earlier stages stay resumable
    assert main(["build", "--judgements", str(out / "judgements.jsonl"), "--out", str(out), "--overwrite",
                 "strategy=all-pairs", "progress=false"]) == 0
    assert snapshot(out)["preferences/train.jsonl"] != before["preferences/train.jsonl"]
    capsys.readouterr()
    assert main(base) == 0
    assert "generate: already done" in capsys.readouterr().err
    assert snapshot(out) == before
    assert main([*base, "n=2"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "overwrite=true" in err and err.count("\n") == 1
    assert snapshot(out) == before
    assert main([*base, "n=2", "--overwrite"]) == 0
    assert all(len(c["responses"]) == 2 for c in read_jsonl(out / "candidates.jsonl"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("done")
    out = tmp / "out"
    assert main(["run", "--prompts", str(small_prompts(tmp, 6)), "--rubric", "helpfulness", "--out", str(out),
                 *FAKE]) == 0
    return out


@pytest.mark.parametrize("args, message", [
    (["--prompts", str(ASSETS / "bad_malformed.jsonl")], "bad_malformed.jsonl:2: malformed JSON"),
    (["--prompts", str(ASSETS / "bad_missing_field.jsonl")], "bad_missing_field.jsonl:2: missing 'prompt'"),
    (["--prompts", str(ASSETS / "empty.jsonl")], "empty.jsonl: no prompts"),
    (["--prompts", str(ASSETS / "bad_duplicate_id.jsonl")], "duplicate id 'a'"),
    (["--prompts", str(ASSETS / "nope.jsonl")], "nope.jsonl: file not found"),
    (["--prompts", str(DEMO), "--rubric", "no_such_rubric"], "unknown rubric 'no_such_rubric'"),
    (["--prompts", str(DEMO), "policy.engine=hf", "policy.model=/no/such/model"], "model '/no/such/model'"),
    (["--prompts", str(DEMO), "n=0"], "option 'n': must be >= 1"),
    (["--prompts", str(DEMO), "n=many"], "option 'n': expected int"),
    (["--prompts", str(DEMO), "no_such_option=1"], "unknown option 'no_such_option'"),
    (["--prompts", str(DEMO), "rubric_weights.honesty=2"], "'honesty' is not one of the rubrics"),
    (["--prompts", str(DEMO), "truncated=sometimes"], "option 'truncated': expected one of"),
    (["--prompts", str(DEMO), "min_margin=1.5"], "option 'min_margin': must be in [0, 1]"),
    (["--prompts", str(DEMO), "noise_margin=-0.1"], "option 'noise_margin': must be in [0, 1]"),
])
def test_bad_input_one_line_exit_2_outputs_intact(finished_run, capsys, args, message):
    before = snapshot(finished_run)
    argv = ["run", "--rubric", "helpfulness", "--out", str(finished_run), *FAKE, *args, "--overwrite"]
    if "--rubric" in args:
        argv.remove("helpfulness"), argv.remove("--rubric")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("rlaif: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(finished_run) == before  # even with --overwrite, bad input deletes nothing


def test_prompt_longer_than_context_caught_before_generation(finished_run, tiny_model_dir, capsys):
    before = snapshot(finished_run)
    rc = main(["run", "--prompts", str(DEMO), "--rubric", "helpfulness", "--out", str(finished_run),
               "policy.engine=hf", f"policy.model={tiny_model_dir}", "policy.max_model_len=40", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "demo.jsonl:" in err and "longer than the model's context (40 tokens" in err
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("rubric", ["helpfulness", "overall_preference", "truthfulness"])
def test_judge_prompt_longer_than_judge_context_caught_before_the_judge_loads(tmp_path, tiny_model_dir, capsys,
                                                                               rubric):
    from transformers import AutoTokenizer

    from rlaif.dataset.judge_context import judge_prompt_tokens
    from rlaif.judging.rubrics import load_rubric

    items = [{"id": "short", "prompt": "Hi?", "responses": ["Hello.", "Hey.", "Hi."]},
             {"id": "long", "prompt": "Tell me.", "responses": ["ok", " ".join(["word"] * 300), "fine", "sure"]}]
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps(items[0]) + "\n\n" + json.dumps(items[1]) + "\n")  # the long item is on line 3
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    short, long = (judge_prompt_tokens(tok, load_rubric(rubric), {**it, "messages": [{"role": "user",
                   "content": it["prompt"]}]}, 0) for it in items)
    assert long > short + 250  # the longest candidate is the one counted
    limit = short + 20
    out = tmp_path / "out"
    rc = main(["judge", "--candidates", str(cands), "--rubric", rubric, "--out", str(out), "judge.engine=hf",
               f"judge.model={tiny_model_dir}", f"judge.max_model_len={limit}", "progress=false"])
    err = capsys.readouterr().err.strip()
    which = "two longest candidates" if rubric == "overall_preference" else "longest candidate"
    assert rc == 2 and err.count("\n") == 0, err
    assert (f"{cands}:3: item 'long': the judge prompt of rubric '{rubric}' with its {which} is {long} tokens, "
            f"longer than the judge's context ({limit} tokens") in err
    assert not (out / "judgements.jsonl").exists() and not (out / ".rlaif" / "judgements.jsonl").exists()


def test_run_checks_judge_prompts_after_generation_naming_the_prompt_line(tmp_path, tiny_model_dir, capsys):
    prompts = small_prompts(tmp_path, 3)
    out = tmp_path / "out"
    rc = main(["run", "--prompts", str(prompts), "--rubric", "helpfulness", "--out", str(out), "policy.engine=fake",
               "judge.engine=hf", f"judge.model={tiny_model_dir}", "judge.max_model_len=64", "progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{prompts}:1: item 'code-fib': the judge prompt of rubric 'helpfulness'" in err, err
    assert (out / "candidates.jsonl").is_file() and not (out / "judgements.jsonl").exists()
    loads = []
    cfg = RunConfig(prompts=str(prompts), out=str(tmp_path / "out2"), rubrics=["helpfulness"], progress=False,
                    policy=BackendConfig(engine="fake"), judge=BackendConfig("hf", tiny_model_dir, max_model_len=64))
    with pytest.raises(UserError, match="judge prompt of rubric 'helpfulness'"):
        run_all(cfg, factory=lambda c: loads.append(c.engine) or FakeBackend(c))
    assert loads == ["fake"]  # the judge engine was never loaded


def test_cli_missing_required_files(tmp_path, capsys):
    assert main(["judge", "--rubric", "helpfulness", "--out", str(tmp_path / "j"), "judge.engine=fake"]) == 2
    assert "option 'candidates'" in capsys.readouterr().err
    assert main(["build", "--judgements", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "b")]) == 2
    assert "none.jsonl: file not found" in capsys.readouterr().err


def test_separate_verbs_equal_run(tmp_path):
    prompts = str(small_prompts(tmp_path, 8))
    common = ["progress=false", "strategy=all-pairs"]
    assert main(["run", "--prompts", prompts, "--rubric", "helpfulness", "--out", str(tmp_path / "run"),
                 "policy.engine=fake", *common]) == 0
    assert main(["generate", "--prompts", prompts, "--out", str(tmp_path / "g"), "policy.engine=fake",
                 "progress=false"]) == 0
    assert main(["judge", "--candidates", str(tmp_path / "g" / "candidates.jsonl"), "--rubric", "helpfulness",
                 "--out", str(tmp_path / "g"), "judge.engine=fake", "progress=false"]) == 0
    assert main(["build", "--judgements", str(tmp_path / "g" / "judgements.jsonl"), "--out", str(tmp_path / "b"),
                 *common]) == 0
    for name in ["candidates.jsonl", "judgements.jsonl"]:
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "g" / name).read_bytes()
    for split in ["train", "test"]:
        assert (tmp_path / "run" / "preferences" / f"{split}.jsonl").read_bytes() == \
            (tmp_path / "b" / "preferences" / f"{split}.jsonl").read_bytes()


def test_judge_a_user_candidates_file_then_build(tmp_path):
    out = tmp_path / "j"
    assert main(["judge", "--candidates", str(ASSETS / "candidates_user.jsonl"), "--rubric", "helpfulness",
                 "--out", str(out), "judge.engine=fake", "progress=false"]) == 0
    assert [j["id"] for j in read_jsonl(out / "judgements.jsonl")][0] == "u1"
    assert main(["build", "--judgements", str(out / "judgements.jsonl"), "--out", str(out), "test_fraction=0"]) == 0
    train = read_jsonl(out / "preferences" / "train.jsonl", PAIR_SCHEMA)
    assert {p["id"] for p in train} <= {"u1", read_jsonl(out / "candidates.jsonl")[1]["id"]} and train


def test_judge_failures_never_stop_the_run(tmp_path):
    """A judge whose verdicts are never valid: the run finishes and counts every failure."""
    def garbage(conv, k, params):
        return "I refuse to answer in JSON." if params.json_schema is not None else f"reply {k} {len(conv)}"

    cfg = RunConfig(prompts=str(small_prompts(tmp_path, 5)), out=str(tmp_path / "out"),
                    rubrics=["helpfulness", "truthfulness"], progress=False,
                    policy=BackendConfig(engine="fake"), judge=BackendConfig(engine="fake"))
    counts = run_all(cfg, factory=lambda c: FakeBackend(c, reply_fn=garbage))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    judged = manifest["stages"]["judge"]["counts"]["truthfulness"]
    assert judged["failed_scores"] == 5 * 4 and judged["failures"] >= 5
    assert counts["pairs"] == 0 and counts["responses_failed"] == 20
    assert "truthfulness: failed scores" in (tmp_path / "out" / "report.html").read_text()


def test_engines_load_once_when_judge_is_the_policy():
    loads = []

    def factory(c):
        loads.append(c.model)
        return FakeBackend(c)

    same = Engines(BackendConfig(engine="fake"), BackendConfig(engine="fake", batch_size=3), factory)
    assert same.get("policy") is same.get("judge") and loads == ["smollm2-135m"]
    other = Engines(BackendConfig(engine="fake"), BackendConfig(engine="fake", model="judge-m"), factory)
    other.get("policy"), other.get("judge")
    assert loads[1:] == ["smollm2-135m", "judge-m"] and "policy" not in other.loaded  # policy freed first


def test_judge_options_inherit_from_policy(tmp_path):
    from rlaif.cli import build_parser
    from rlaif.commands.pipeline import load_verb_config

    (tmp_path / "c.yaml").write_text("policy:\n  engine: fake\n  max_model_len: 512\njudge:\n  model: big\n")
    args = build_parser().parse_args(["run", "--config", str(tmp_path / "c.yaml"), "judge.dtype=float32"])
    cfg = load_verb_config(RunConfig, args, inherit_judge=True)
    assert cfg.judge.engine == "fake" and cfg.judge.max_model_len == 512  # from the policy
    assert cfg.judge.model == "big" and cfg.judge.dtype == "float32" and cfg.policy.model == "smollm2-135m"


@pytest.mark.parametrize("setting", ["judge.batch_size=3", "judge.dtype=float32", "judge.max_model_len=64"])
def test_judge_setting_ignored_by_a_shared_engine_is_refused(tmp_path, capsys, setting):
    out = tmp_path / "out"
    args = ["run", "--prompts", str(small_prompts(tmp_path, 3)), "--rubric", "helpfulness", "--out", str(out),
            "policy.engine=fake", "progress=false"]
    assert main([*args, setting]) == 2
    err = capsys.readouterr().err.strip()
    key = setting.split("=")[0]
    assert err.count("\n") == 0 and f"option '{key}'" in err and "shares the policy's engine" in err, err
    assert not out.exists()  # refused before anything is written
    assert main([*args, setting, "judge.model=other-judge"]) == 0  # a judge of its own takes its own settings
    assert main([*args, setting.replace("judge.", "policy."), "--overwrite"]) == 0  # the judge inherits it


def test_weak_judge_note_names_the_runs_judge():
    from rlaif.dataset.report import weak_judge_note

    note = weak_judge_note({"models": {"judge": "vllm:smollm2-135m"}})
    assert note and note.startswith("The judge of this run, vllm:smollm2-135m, is rlaif's small embedded")
    assert "policy+fake:smollm2-135m" in weak_judge_note({"models": {"judge": "policy+fake:smollm2-135m"}})
    for judge in ("vllm:/models/Qwen2.5-7B-Instruct", "openai:gpt-4o@api.example.com", None):
        assert weak_judge_note({"models": {"judge": judge}}) is None


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for key in ["n=4", "temperature=0.8", "max_tokens=256", "seed=0", "prompt_column=", "overwrite=False",
                "test_fraction=", "strategy=", "rubric_weights=", "policy.model=", "judge.engine=",
                "pairwise_min_confidence=", "require_position_consistent="]:
        assert key in text, key


def test_txt_prompts_through_generate(tmp_path):
    out = tmp_path / "g"
    assert main(["generate", "--prompts", str(ASSETS / "prompts.txt"), "--out", str(out), "policy.engine=fake",
                 "n=2", "max_tokens=5", "progress=false"]) == 0
    rows = read_jsonl(out / "candidates.jsonl", CANDIDATE_SCHEMA)
    assert len(rows) == 2 and all(n <= 5 for r in rows for n in r["num_tokens"])
    assert rows[0]["seed"] != rows[1]["seed"]  # per-prompt seeds


def test_token_chunks_keep_prefill_within_budget():
    from rlaif.backends.chunking import token_chunks

    # n=2, budget 100: 10+20 -> 60 tokens; adding 30 (x2) would exceed it
    assert token_chunks([10, 20, 30, 40, 5], 2, 64, 100) == [range(0, 2), range(2, 3), range(3, 5)]
    assert token_chunks([10, 20, 30, 40, 5], 1, 2, 1000) == [range(0, 2), range(2, 4), range(4, 5)]
    assert token_chunks([500], 4, 64, 100) == [range(0, 1)]  # a long prompt still goes, alone


def _cut_texts(out: Path) -> set[tuple[str, str]]:
    """(prompt id, text) of every candidate cut off at max_tokens whose text no complete candidate shares."""
    cut = set()
    for c in read_jsonl(out / "candidates.jsonl"):
        complete = {t for t, f in zip(c["responses"], c["finish_reasons"]) if f != "length"}
        cut |= {(c["id"], t) for t, f in zip(c["responses"], c["finish_reasons"])
                if f == "length" and t not in complete}
    return cut


def _pairs(out: Path) -> list[dict]:
    return [*read_jsonl(out / "preferences" / "train.jsonl"), *read_jsonl(out / "preferences" / "test.jsonl")]


def test_truncated_candidates_counted_and_handled_in_run_and_build(tmp_path, capsys):
    """Fake replies are 3-14 words; max_tokens=8 cuts some. reject_only (default) never chooses a cut-off
    answer; drop never pairs one; a changed option changes the build fingerprint and rebuilds."""
    out = tmp_path / "out"
    base = ["run", "--prompts", str(small_prompts(tmp_path, 12)), "--rubric", "helpfulness", "--out", str(out), *FAKE,
            "max_tokens=8", "strategy=all-pairs"]
    assert main(base) == 0
    err = capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    n_cut = manifest["stages"]["generate"]["counts"]["finished_by_length"]
    build = manifest["stages"]["build"]
    assert 0 < n_cut < 48 and build["counts"]["responses_truncated"] == n_cut
    assert f"{n_cut} of 48 candidates" in err and "max_tokens=8" in err
    cut = _cut_texts(out)
    pairs = _pairs(out)
    assert pairs and not any((p["id"], p["chosen"][0]["content"]) in cut for p in pairs)
    rejected_cut = sum((p["id"], p["rejected"][0]["content"]) in cut for p in pairs)
    assert rejected_cut == build["counts"]["kept_rejected_truncated"]
    assert build["counts"]["kept_rejected_truncated"] > 0 and build["counts"]["pairs_chosen_truncated"] > 0
    report, card = (out / "report.html").read_text(), (out / "README.md").read_text()
    assert f"{n_cut} of 48 candidates" in report and "truncated=reject_only" in card

    fp = json.loads((out / ".rlaif" / "state.json").read_text())["build"]["fingerprint"]
    before = snapshot(out)
    assert main(base) == 0  # same settings: the build is skipped, same bytes
    assert "build: already done" in capsys.readouterr().err and snapshot(out) == before
    assert main([*base, "truncated=drop"]) == 0
    state = json.loads((out / ".rlaif" / "state.json").read_text())
    assert state["build"]["fingerprint"] != fp
    assert not any((p["id"], t["content"]) in cut for p in _pairs(out) for t in p["chosen"] + p["rejected"])
    counts = json.loads((out / "manifest.json").read_text())["stages"]["build"]["counts"]
    assert counts["responses_truncated_dropped"] == n_cut and "truncated=drop" in (out / "README.md").read_text()
    assert main([*base, "truncated=keep"]) == 0
    counts = json.loads((out / "manifest.json").read_text())["stages"]["build"]["counts"]
    assert counts["kept_chosen_truncated"] > 0 and len(_pairs(out)) > len(pairs)


def test_build_fingerprint_follows_every_build_option(finished_run):
    from rlaif.dataset.options import BuildConfig, BuildOptions
    from rlaif.dataset.pipeline import build_fingerprint
    from rlaif.io.store import RunState

    cands, judgements = read_jsonl(finished_run / "candidates.jsonl"), read_jsonl(finished_run / "judgements.jsonl")
    state = RunState(finished_run)
    base = build_fingerprint(BuildConfig(), cands, judgements, state, ["helpfulness"])
    assert build_fingerprint(BuildConfig(progress=False), cands, judgements, state, ["helpfulness"]) == base
    changed = {"rubric_weights": {"helpfulness": 2.0}, "strategy": "all-pairs", "min_margin": 0.5,
               "truncated": "drop", "noise_margin": 0.1, "pairwise_min_confidence": 0.9,
               "require_position_consistent": False, "test_fraction": 0.5, "best_min_score": 0.9}
    assert set(changed) == set(BuildOptions.__dataclass_fields__)  # a new option must be listed here
    for key, value in changed.items():
        assert build_fingerprint(BuildConfig(**{key: value}), cands, judgements, state, ["helpfulness"]) != base, key
    assert build_fingerprint(BuildConfig(seed=1), cands, judgements, state, ["helpfulness"]) != base
    assert build_fingerprint(BuildConfig(), cands[:-1], judgements, state, ["helpfulness"]) != base


def test_user_candidates_without_finish_reasons_build_and_are_counted(tmp_path):
    out = tmp_path / "j"
    assert main(["judge", "--candidates", str(ASSETS / "candidates_user.jsonl"), "--rubric", "helpfulness",
                 "--out", str(out), "judge.engine=fake", "progress=false"]) == 0
    assert main(["build", "--judgements", str(out / "judgements.jsonl"), "--out", str(out), "truncated=drop",
                 "progress=false"]) == 0
    counts = json.loads((out / "manifest.json").read_text())["stages"]["build"]["counts"]
    n = sum(len(c["responses"]) for c in read_jsonl(out / "candidates.jsonl"))
    assert counts["responses_finish_unknown"] == n and counts["responses_truncated"] == 0 and counts["pairs"] > 0
    assert "no known finish reason" in (out / "report.html").read_text()


def _judged(judge: str, margins: list[float]) -> tuple[list[dict], list[dict]]:
    """Candidates and judgements of the default rubric pair (answer_likelihood, likelihood, and
    answer_checks, rules; both [0, 1]): prompt k's two responses score ``margins[k]`` apart on both."""
    cands, judged = [], []
    for k, m in enumerate(margins):
        cands.append({"id": f"p{k}", "messages": [{"role": "user", "content": f"q{k}"}],
                      "responses": [f"a{k}", f"b{k}"], "num_tokens": [1, 1], "finish_reasons": ["stop", "stop"],
                      "policy": "vllm:smollm2-135m", "seed": k, "metadata": {}})
        for rubric, method in (("answer_likelihood", "likelihood"), ("answer_checks", "rules")):
            judged.append({"id": f"p{k}", "rubric": rubric, "method": method, "scale": [0, 1],
                           "judge": judge if method != "rules" else "rules",  # as judge.py writes them
                           "scores": [0.2 + m, 0.2], "details": [{}, {}], "comparisons": [], "failures": 0})
    return cands, judged


def test_min_margin_defaults_to_the_judges_measured_noise(tmp_path):
    from rlaif.dataset.options import BuildConfig
    from rlaif.dataset.noise import EMBEDDED_JUDGE_NOISE_MARGINS
    from rlaif.dataset.pipeline import run_build
    from rlaif.io.store import RunState

    noise = EMBEDDED_JUDGE_NOISE_MARGINS["answer_checks:rules+answer_likelihood:likelihood"]
    margins = [noise / 4, noise / 2, 2 * noise, 0.5]  # two inside the noise, two outside

    def build(out: str, judge: str = "vllm:smollm2-135m", **opts) -> dict:
        (tmp_path / out).mkdir()
        cands, judged = _judged(judge, margins)
        cfg = BuildConfig(out=str(tmp_path / out), progress=False, test_fraction=0, **opts)
        state = RunState(tmp_path / out)
        run_build(cfg, cands, judged, state, ["answer_likelihood", "answer_checks"])
        return state.stage("build")

    auto = build("auto")  # embedded judge, min_margin null: the noise margin
    assert auto["min_margin"] == noise and auto["counts"]["pairs"] == 2 and auto["counts"]["kept_inside_noise"] == 0
    assert auto["counts"]["pairs_below_margin"] == 2
    explicit = build("zero", min_margin=0.0)  # kept, and reported as inside the noise
    assert explicit["counts"]["pairs"] == 4 and explicit["counts"]["kept_inside_noise"] == 2
    report = (tmp_path / "zero" / "report.html").read_text()
    assert f"2 of 4 kept pairs (50%) have a margin below {noise:g}" in report
    own = build("own", noise_margin=0.4)  # the user's own measurement
    assert own["min_margin"] == 0.4 and own["counts"]["pairs"] == 1
    weighted = build("weighted", rubric_weights={"answer_checks": 3.0})  # measured at 1:1 only
    assert weighted["min_margin"] == 0.0 and weighted["counts"]["pairs"] == 4
    other = build("other", judge="openai:big-judge")  # a judge with no measured noise: 0
    assert other["min_margin"] == 0.0 and other["counts"]["pairs"] == 4 and "kept_inside_noise" not in other["counts"]
    assert "Judge noise: unknown" in (tmp_path / "other" / "report.html").read_text()
