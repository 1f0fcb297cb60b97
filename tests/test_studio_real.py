"""The rubric studio judging with the embedded model (vLLM on CPU): the engine loads once, in a
request's worker thread, and stays warm; verdicts match `judge_items` and `calibrate` run on the
same engine directly; unchanged judge inputs come from the cache."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rlaif.backends.base import BackendConfig
from rlaif.io.records import as_messages
from rlaif.judging.calibrate import calibrate
from rlaif.judging.judge import JudgeItem, judge_items
from rlaif.judging.rubrics import rubric_from_file
from rlaif.studio.app import Studio, build_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_studio_judges_with_the_embedded_model(embedded_model_dir: str, tmp_path: Path) -> None:
    folder = tmp_path / "rubrics"
    folder.mkdir()
    for name in ("answer_likelihood.yaml", "honesty.yaml"):
        shutil.copy(ROOT / "rubrics" / name, folder / name)
    cfg = BackendConfig(engine="vllm", model=embedded_model_dir, gpu_memory_utilization=0.1, max_model_len=2048)
    studio = Studio(folder, cfg)
    with TestClient(build_app(studio, "127.0.0.1", 8765), base_url="http://127.0.0.1:8765",
                    headers={"X-Studio-Token": studio.token}) as client:
        text = (folder / "answer_likelihood.yaml").read_text()
        r = client.post("/api/preview", json={"name": "answer_likelihood.yaml", "text": text, "example": 0})
        assert r.status_code == 200, r.text
        got = r.json()
        backend = studio.judge.backend
        assert "<|im_start|>assistant" in got["inputs"][0]["text"]  # the real chat template, scored tokens marked
        assert ">>>" in got["inputs"][0]["text"] and got["judged"] == got["requests"] == 4
        rubric = rubric_from_file(folder / "answer_likelihood.yaml")
        ex = rubric.examples[0]
        direct = judge_items(backend, rubric, [JudgeItem(ex.id, as_messages(ex.prompt), [ex.response_a, ex.response_b])],
                             progress=False)[0]
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got["row"]["scores"], direct["scores"]))

        again = client.post("/api/preview", json={"name": "answer_likelihood.yaml", "text": text, "example": 0}).json()
        assert again["judged"] == 0 and again["row"]["scores"] == got["row"]["scores"]

        honesty = client.post("/api/preview", json={"name": "honesty.yaml", "text": (folder / "honesty.yaml").read_text(),
                                                     "prompt": "What is 2 + 2?", "response": "4."}).json()
        dist = honesty["row"]["details"][0]["distribution"]
        assert set(dist) == {"1", "2", "3", "4", "5"} and 0.99 < sum(dist.values()) < 1.01

        job = client.post("/api/calibrate", json={"name": "answer_likelihood.yaml", "text": text}).json()
        end = time.monotonic() + 300
        while (state := client.get(f"/api/jobs/{job['id']}").json())["status"] == "running":
            assert time.monotonic() < end
            time.sleep(0.2)
        assert state["status"] == "done", state
        assert state["cached"] == 4  # example 0's four prefills came from the preview
        report = calibrate(backend, rubric, rubric.examples, progress=False)
        assert math.isclose(state["result"]["agreement"], report.agreement)
        assert studio.judge.backend is backend  # loaded once, kept warm
    assert not studio.judge.loaded  # closed on shutdown
