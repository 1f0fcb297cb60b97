"""Credentials in a ``base_url`` never reach a file rlaif writes or a line it prints (issue 20, item 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.backends.base import BackendConfig
from rlaif.cli import main
from rlaif.config import to_dict
from rlaif.errors import UserError

SECRET_URL = "http://alice:hunter2@127.0.0.1:9/v1?api_key=sk-zz9&x=1"
SECRETS = ("hunter2", "sk-zz9")


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


def test_redact_url_drops_userinfo_and_key_like_query_values():
    from rlaif.io.redact import redact, redact_url

    assert redact_url(SECRET_URL) == "http://***@127.0.0.1:9/v1?api_key=***&x=1"
    assert redact_url("https://host/v1") == "https://host/v1"
    text = redact(f"cannot reach {SECRET_URL}/chat/completions; also https://bob:pw@h/v1?token=t0k")
    _clean(text)
    assert "pw@" not in text and "t0k" not in text and "127.0.0.1:9/v1" in text


def test_configs_written_to_summaries_and_checkpoints_are_redacted(tmp_path):
    from rlaif.train.online.config import GRPOConfig
    from rlaif.train.online.state import run_settings

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    cfg = GRPOConfig(prompts=str(prompts), model="m", out=str(tmp_path / "o"), judge=BackendConfig(base_url=SECRET_URL))
    _clean(json.dumps(to_dict(cfg)))
    _clean(json.dumps(run_settings(cfg)))
    assert cfg.judge.base_url == SECRET_URL  # the live config still reaches the server


def test_openai_error_line_names_the_server_without_its_password():
    from rlaif.backends.openai import OpenAIBackend

    backend = OpenAIBackend(BackendConfig(engine="openai", base_url=SECRET_URL, http_retries=0, timeout_s=2))
    with pytest.raises(UserError) as e:
        backend._post({"model": "m"})
    _clean(str(e.value))
    assert "127.0.0.1:9" in str(e.value)


def test_a_bad_base_url_error_is_redacted():
    from rlaif.backends.openai import base_urls

    with pytest.raises(UserError) as e:
        base_urls("ftp://alice:hunter2@host/v1")
    _clean(str(e.value))


def test_run_manifest_and_report_carry_no_credentials(tmp_path, capsys):
    from test_pipeline import FAKE, small_prompts

    out = tmp_path / "out"
    rc = main(["run", "--prompts", str(small_prompts(tmp_path, 4)), "--rubric", "helpfulness", "--out", str(out),
               *FAKE, f"judge.base_url={SECRET_URL}", f"policy.base_url={SECRET_URL}", "n=2"])
    assert rc == 0
    assert "127.0.0.1:9" in (out / "manifest.json").read_text()
    for p in out.rglob("*"):
        if p.is_file():
            _clean(p.read_text(errors="replace"))
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
