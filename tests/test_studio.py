"""`rlaif rubric studio`: every endpoint through Starlette's TestClient (fake engine), the bad inputs
(token, paths, YAML, sandbox) writing nothing, the judge cache and calibration jobs, and the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from rlaif.backends.base import BackendConfig
from rlaif.backends.fake import FakeBackend
from rlaif.judging.calibrate import calibrate
from rlaif.judging.rubrics import rubric_from_file
from rlaif.studio.app import COOKIE, Studio, build_app
from rlaif.studio.engine import CachedJudge
from tests.processes import get_when_up

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["helpfulness.yaml", "helpfulness.jinja", "answer_checks.yaml", "overall_preference.yaml",
           "truthfulness.yaml", "answer_likelihood.yaml"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (and its parent's files) with its bytes: to assert nothing was written."""
    return {str(p): p.read_bytes() for p in sorted(folder.parent.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "rubrics"
    d.mkdir()
    for name in SHIPPED:
        shutil.copy(ROOT / "rubrics" / name, d / name)
    (tmp_path / "secret.txt").write_text("not for the studio\n")
    return d


class Loader:
    """Counts engine loads; the engine is the fake one (optionally slowed down)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.loads, self.delay = 0, delay

    def __call__(self, cfg: BackendConfig) -> FakeBackend:
        self.loads += 1
        backend = FakeBackend(cfg)
        if self.delay:
            inner = backend.choice_logprobs

            def slow(*args: Any, **kwargs: Any) -> Any:
                time.sleep(self.delay)
                return inner(*args, **kwargs)

            backend.choice_logprobs = slow  # type: ignore[method-assign]
        return backend


def make(folder: Path, loader: Loader | None = None, chunk: int | None = None) -> tuple[Studio, TestClient, Loader]:
    loader = loader or Loader()
    cfg = BackendConfig(engine="fake")
    studio = Studio(folder, cfg, judge_impl=CachedJudge(cfg, loader=loader, chunk=chunk))
    client = TestClient(build_app(studio, "127.0.0.1", 8765), base_url="http://127.0.0.1:8765",
                        headers={"X-Studio-Token": studio.token})
    return studio, client, loader


def body(folder: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "text": (folder / name).read_text(), **extra}


# ---------------------------------------------------------------------------------------------
# token

def near_miss(token: str) -> str:
    """The token with its last character changed (always different, whatever that character is)."""
    return token[:-1] + ("y" if token.endswith("x") else "x")


def test_every_request_without_the_token_is_refused(folder: Path) -> None:
    studio, _, loader = make(folder)
    before = snapshot(folder)
    bare = TestClient(build_app(studio, "127.0.0.1", 8765), base_url="http://127.0.0.1:8765")
    for method, url, js in [("GET", "/", None), ("GET", "/api/state", None), ("GET", "/static/studio.js", None),
                            ("GET", "/api/file?name=helpfulness.yaml", None),
                            ("POST", "/api/save", body(folder, "answer_checks.yaml")),
                            ("POST", "/api/preview", body(folder, "helpfulness.yaml", example=0))]:
        r = bare.request(method, url, json=js)
        assert r.status_code == 403, url
        assert "token" in r.text and "Traceback" not in r.text
        r = bare.request(method, url, json=js, headers={"X-Studio-Token": near_miss(studio.token)})
        assert r.status_code == 403, url
        r = bare.request(method, url + ("&" if "?" in url else "?") + "token=wrong", json=js)
        assert r.status_code == 403, url
    assert snapshot(folder) == before and loader.loads == 0


def test_the_token_in_the_url_sets_a_cookie_that_opens_the_api(folder: Path) -> None:
    studio, _, _ = make(folder)
    client = TestClient(build_app(studio, "127.0.0.1", 8765), base_url="http://127.0.0.1:8765")
    page = client.get(f"/?token={studio.token}")
    assert page.status_code == 200 and "studio.js" in page.text
    assert client.cookies.get(COOKIE) == studio.token  # set from the page; the JS and CSS load with it
    assert client.get("/static/studio.js").status_code == 200
    assert client.get("/api/state").json()["files"][0] == "answer_checks.yaml"


# ---------------------------------------------------------------------------------------------
# paths

@pytest.mark.parametrize("name, status", [("../secret.txt", 403), ("../rubrics2/x.yaml", 403), ("/etc/passwd", 403),
                                          ("helpfulness.jinja", 400), ("", 400), ("sub/../../x.yaml", 403)])
def test_paths_outside_the_folder_or_not_rubrics_are_refused(folder: Path, name: str, status: int) -> None:
    _, client, _ = make(folder)
    before = snapshot(folder)
    r = client.get("/api/file", params={"name": name})
    assert r.status_code == status and r.json()["error"]
    r = client.post("/api/save", json={"name": name, "text": (folder / "answer_checks.yaml").read_text()})
    assert r.status_code == status and r.json()["error"]
    r = client.post("/api/save", json={"name": name, "text": "x: 1", "draft": True})
    assert r.status_code == status
    assert snapshot(folder) == before


def test_a_symlink_out_of_the_folder_is_neither_read_nor_written(folder: Path) -> None:
    outside = folder.parent / "outside.yaml"
    outside.write_text("name: outside\n")
    (folder / "link.yaml").symlink_to(outside)
    _, client, _ = make(folder)
    assert "link.yaml" not in client.get("/api/state").json()["files"]
    assert client.get("/api/file", params={"name": "link.yaml"}).status_code == 403
    r = client.post("/api/save", json={"name": "link.yaml", "text": (folder / "answer_checks.yaml").read_text()})
    assert r.status_code == 403 and "outside" in r.json()["error"]
    assert outside.read_text() == "name: outside\n"


def test_a_template_file_outside_the_folder_is_refused(folder: Path) -> None:
    (folder.parent / "evil.jinja").write_text("{{ response }} {{ prompt }}")
    text = (folder / "helpfulness.yaml").read_text().replace("template_file: helpfulness.jinja",
                                                               "template_file: ../evil.jinja")
    assert "../evil.jinja" in text
    _, client, _ = make(folder)
    before = snapshot(folder)
    for url in ("/api/lint", "/api/preview", "/api/save"):
        r = client.post(url, json={"name": "helpfulness.yaml", "text": text, "example": 0})
        assert r.status_code == 403 and "template_file" in r.json()["error"], url
    assert snapshot(folder) == before


# ---------------------------------------------------------------------------------------------
# lint and bad rubric text

def test_lint_reports_unsaved_text_with_lines_in_the_real_file(folder: Path) -> None:
    _, client, _ = make(folder)
    r = client.post("/api/lint", json=body(folder, "overall_preference.yaml")).json()
    assert r["errors"] == 0 and r["method"] == "pairwise" and len(r["examples"]) >= 8
    text = (folder / "overall_preference.yaml").read_text()
    lines = text.splitlines()
    k = next(i for i, line in enumerate(lines) if "{{ response_b }}" in line)
    lines[k] = lines[k].replace("{{ response_b }}", "{{ response_c }}")
    r = client.post("/api/lint", json={"name": "overall_preference.yaml", "text": "\n".join(lines)}).json()
    unknown = [f for f in r["findings"] if "response_c" in f["message"]]
    assert unknown and unknown[0]["line"] == k + 1 and unknown[0]["file"] == "overall_preference.yaml"
    assert r["errors"] >= 2 and r["examples"] == []  # response_b is also never used now


def test_malformed_yaml_is_a_message_and_writes_nothing(folder: Path) -> None:
    _, client, loader = make(folder)
    before = snapshot(folder)
    text = "name: answer_checks\nmethod: rules\nchecks: [\n  - kind: regex\n"
    r = client.post("/api/lint", json={"name": "answer_checks.yaml", "text": text}).json()
    assert r["errors"] == 1 and "invalid YAML" in r["findings"][0]["message"] and r["findings"][0]["line"]
    for url in ("/api/preview", "/api/calibrate"):
        r = client.post(url, json={"name": "answer_checks.yaml", "text": text, "example": 0})
        assert r.status_code == 422 and "invalid YAML" in r.json()["error"], url
    r = client.post("/api/save", json={"name": "answer_checks.yaml", "text": text})
    assert r.status_code == 422 and "not saved" in r.json()["error"]
    assert snapshot(folder) == before and loader.loads == 0


def test_a_template_reaching_for_python_internals_is_refused(folder: Path) -> None:
    _, client, loader = make(folder)
    before = snapshot(folder)
    lines = (folder / "overall_preference.yaml").read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if "{{ response_a }}" in line)
    lines[k] = lines[k].replace("{{ response_a }}", "{{ response_a }} {{ ''.__class__ }}")
    text = "\n".join(lines)
    r = client.post("/api/lint", json={"name": "overall_preference.yaml", "text": text}).json()
    refused = [f for f in r["findings"] if "SecurityError" in f["message"] and "unsafe" in f["message"]]
    assert r["errors"] == 1 and refused and refused[0]["line"] == k + 1
    r = client.post("/api/preview", json={"name": "overall_preference.yaml", "text": text, "example": 0})
    assert r.status_code == 422 and "Traceback" not in r.text
    assert r.json()["error"].startswith(f"{folder.resolve() / 'overall_preference.yaml'}:{k + 1}: template refused")
    assert client.post("/api/save", json={"name": "overall_preference.yaml", "text": text}).status_code == 422
    assert snapshot(folder) == before and loader.loads == 0  # refused before any judge loaded


@pytest.mark.parametrize("payload", ["not json", "[1, 2]", '{"name": 3, "text": "x"}', '{"name": "a.yaml"}'])
def test_malformed_requests_are_400(folder: Path, payload: str) -> None:
    _, client, _ = make(folder)
    before = snapshot(folder)
    for url in ("/api/lint", "/api/preview", "/api/calibrate", "/api/save"):
        r = client.post(url, content=payload, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"], url
    assert snapshot(folder) == before


# ---------------------------------------------------------------------------------------------
# preview and the judge cache

def test_preview_shows_judge_input_and_verdict_and_caches_unchanged_inputs(folder: Path) -> None:
    studio, client, loader = make(folder)
    first = client.post("/api/preview", json=body(folder, "helpfulness.yaml", example=0)).json()
    example = rubric_from_file(folder / "helpfulness.yaml").examples[0]
    assert [x["title"] for x in first["inputs"]] == ["response 0", "response 1"]
    assert example.prompt in first["inputs"][0]["text"] and example.response_a in first["inputs"][0]["text"]
    assert first["judged"] == first["requests"] == 2
    dist = first["row"]["details"][0]["distribution"]
    assert set(dist) == {"1", "2", "3", "4", "5"} and abs(sum(dist.values()) - 1) < 1e-6
    assert "expected score" in first["text"]
    again = client.post("/api/preview", json=body(folder, "helpfulness.yaml", example=0)).json()
    assert again["judged"] == 0 and again["row"]["scores"] == first["row"]["scores"]
    # an edit elsewhere in the file (another example's note) leaves this judge input alone
    text = (folder / "helpfulness.yaml").read_text().replace("note: off-topic", "note: wanders off", 1)
    assert client.post("/api/preview", json={"name": "helpfulness.yaml", "text": text, "example": 0}).json()["judged"] == 0
    # an edit of the template changes both inputs: both are judged again
    (folder / "helpfulness.jinja").write_text((folder / "helpfulness.jinja").read_text() + "\nBe strict.")
    changed = client.post("/api/preview", json=body(folder, "helpfulness.yaml", example=0)).json()
    assert changed["judged"] == 2 and "Be strict." in changed["inputs"][0]["text"]
    assert loader.loads == 1 and studio.state()["judge"]["loaded"]


def test_preview_of_typed_text_and_of_each_method(folder: Path) -> None:
    _, client, loader = make(folder)
    r = client.post("/api/preview", json=body(folder, "overall_preference.yaml", prompt="Capital of Peru?",
                                              response="Lima.", response_b="Quito."))
    row = r.json()["row"]
    c = row["comparisons"][0]
    assert len(r.json()["inputs"]) == 2 and "Lima." in r.json()["inputs"][0]["text"]
    assert abs(c["p"] - (c["p_i_first"] + c["p_i_second"]) / 2) < 1e-9  # both orders, averaged
    r = client.post("/api/preview", json=body(folder, "overall_preference.yaml", prompt="Capital of Peru?",
                                              response="Lima."))
    assert r.status_code == 400 and "pairwise" in r.json()["error"]
    r = client.post("/api/preview", json=body(folder, "truthfulness.yaml", example=1)).json()
    assert all(isinstance(d["verdict"], dict) for d in r["row"]["details"])
    r = client.post("/api/preview", json=body(folder, "answer_likelihood.yaml", example=0)).json()
    assert len(r["inputs"]) == 4 and "neutral" in r["inputs"][1]["title"]  # contrast: 2 inputs per response
    assert r["judged"] == r["requests"] == 4
    assert all("pmi" in d for d in r["row"]["details"])
    r = client.post("/api/preview", json=body(folder, "helpfulness.yaml", example=99))
    assert r.status_code == 400 and "examples" in r.json()["error"]
    assert loader.loads == 1


def test_a_rules_rubric_never_loads_the_judge(folder: Path) -> None:
    _, client, loader = make(folder)
    r = client.post("/api/preview", json=body(folder, "answer_checks.yaml", prompt="Hi?", response="Hello there.")).json()
    assert r["inputs"] == [] and r["row"]["details"][0]["checks"]
    job = client.post("/api/calibrate", json=body(folder, "answer_checks.yaml")).json()
    assert wait(client, job["id"])["status"] == "done"
    assert loader.loads == 0


# ---------------------------------------------------------------------------------------------
# calibration jobs

def wait(client: TestClient, job: str, timeout: float = 20) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = client.get(f"/api/jobs/{job}").json()
        if state["status"] != "running":
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job} still running")


def test_calibration_matches_rubric_calibrate_and_reuses_the_cache(folder: Path) -> None:
    _, client, _ = make(folder)
    started = client.post("/api/calibrate", json=body(folder, "overall_preference.yaml"))
    assert started.status_code == 202
    done = wait(client, started.json()["id"])
    rubric = rubric_from_file(folder / "overall_preference.yaml")
    direct = calibrate(FakeBackend(BackendConfig(engine="fake")), rubric, rubric.examples, progress=False)
    res = done["result"]
    assert done["status"] == "done" and done["total"] == done["done"] == 2 * len(rubric.examples)
    assert res["agreement"] == direct.agreement and res["position_consistency"] == direct.position_consistency
    assert res["length_pearson"] == direct.length_pearson and res["n"] == len(rubric.examples)
    assert "agreement with labels" in res["text"] and "position consistency" in res["text"]
    again = wait(client, client.post("/api/calibrate", json=body(folder, "overall_preference.yaml")).json()["id"])
    assert again["total"] == 0 and again["cached"] == 2 * len(rubric.examples)
    assert again["result"]["agreement"] == res["agreement"]
    assert client.get("/api/jobs/nope").status_code == 404


def test_a_calibration_can_be_cancelled(folder: Path) -> None:
    _, client, _ = make(folder, Loader(delay=0.2), chunk=1)
    job = client.post("/api/calibrate", json=body(folder, "helpfulness.yaml")).json()
    time.sleep(0.3)
    assert client.post(f"/api/jobs/{job['id']}/cancel", json={}).status_code == 200
    state = wait(client, job["id"])
    assert state["status"] == "cancelled" and 0 < state["done"] < 18 and state["result"] is None


def test_a_newer_calibration_replaces_the_running_one(folder: Path) -> None:
    _, client, _ = make(folder, Loader(delay=0.1), chunk=1)
    old = client.post("/api/calibrate", json=body(folder, "helpfulness.yaml")).json()
    new = client.post("/api/calibrate", json=body(folder, "overall_preference.yaml")).json()
    assert wait(client, old["id"])["status"] == "cancelled"
    assert wait(client, new["id"])["status"] == "done"


# ---------------------------------------------------------------------------------------------
# saving

def test_save_is_atomic_and_keeps_the_previous_version(folder: Path) -> None:
    _, client, _ = make(folder)
    path = folder / "answer_checks.yaml"
    old = path.read_text()
    new = old.replace("description:", "# edited in the studio\ndescription:", 1)
    r = client.post("/api/save", json={"name": "answer_checks.yaml", "text": new})
    assert r.status_code == 200 and r.json() | {"saved": "answer_checks.yaml", "draft": False} == r.json()
    assert path.read_text() == new and (folder / "answer_checks.yaml.prev").read_text() == old
    assert not list(folder.glob(".*.tmp")) and not (folder / "answer_checks.draft.yaml").exists()
    assert "answer_checks.yaml.prev" not in client.get("/api/state").json()["files"]


def test_a_rubric_failing_lint_is_saved_only_as_a_draft(folder: Path) -> None:
    _, client, _ = make(folder)
    path = folder / "answer_checks.yaml"
    old = path.read_text()
    broken = old.replace("method: rules", "method: rulez")
    r = client.post("/api/save", json={"name": "answer_checks.yaml", "text": broken})
    assert r.status_code == 422 and r.json()["errors"] and not (folder / "answer_checks.draft.yaml").exists()
    r = client.post("/api/save", json={"name": "answer_checks.yaml", "text": broken, "draft": True}).json()
    assert r["draft"] and r["saved"] == "answer_checks.draft.yaml"
    assert (folder / "answer_checks.draft.yaml").read_text() == broken and path.read_text() == old
    got = client.get("/api/file", params={"name": "answer_checks.yaml"}).json()
    assert got["text"] == old and got["draft"] == broken
    assert "answer_checks.draft.yaml" not in client.get("/api/state").json()["files"]


def test_save_can_create_a_new_rubric_in_the_folder(folder: Path) -> None:
    _, client, _ = make(folder)
    text = (folder / "answer_checks.yaml").read_text().replace("name: answer_checks", "name: mine")
    assert client.get("/api/file", params={"name": "mine.yaml"}).json()["text"] == ""
    r = client.post("/api/save", json={"name": "mine.yaml", "text": text}).json()
    assert r["saved"] == "mine.yaml" and r["previous"] is None and (folder / "mine.yaml").read_text() == text


# ---------------------------------------------------------------------------------------------
# CLI: the printed start-up line and a real uvicorn server

def test_cli_prints_a_tokenised_url_and_serves_it(folder: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "rubric", "studio", str(folder / "helpfulness.yaml"),
                             "--port", "0", "judge.engine=fake"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=folder.parent, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("rubric studio: http://127.0.0.1:") and "/?token=" in line, line
        url = line.split(": ", 1)[1].strip()
        base = url.split("/?")[0]
        r = get_when_up(url)
        assert r.status_code == 200 and "rubric studio" in r.text
        assert httpx.get(base + "/api/state").status_code == 403
        state = httpx.get(base + "/api/state", cookies=r.cookies).json()
        assert state["start"] == "helpfulness.yaml" and state["folder"] == str(folder.resolve())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_refuses_a_busy_port(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from rlaif.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["rubric", "studio", str(folder / "helpfulness.yaml"), "--port", str(port),
                     "judge.engine=fake"]) == 2
    assert f"--port {port}" in capsys.readouterr().err


def test_loading_the_judge_once_under_concurrent_previews(folder: Path) -> None:
    _, client, loader = make(folder)
    results: list[int] = []

    def go(k: int) -> None:
        results.append(client.post("/api/preview", json=body(folder, "helpfulness.yaml", example=k)).status_code)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4 and loader.loads == 1


def test_rubric_lint_of_a_folder_skips_the_studios_drafts(folder: Path) -> None:
    from rlaif.cli import main

    _, client, _ = make(folder)
    broken = (folder / "answer_checks.yaml").read_text().replace("method: rules", "method: rulez")
    assert client.post("/api/save", json={"name": "answer_checks.yaml", "text": broken, "draft": True}).status_code == 200
    assert main(["rubric", "lint", str(folder)]) == 0
    assert main(["rubric", "lint", str(folder / "answer_checks.draft.yaml")]) == 1  # named explicitly: linted
