"""`rlaif review`: the sampler (reproducible, strata and weights), the server through Starlette's
TestClient (every answer, every bad request writing nothing, a torn labels file, reopening), and the
CLI's refusals."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rlaif.cli import main
from rlaif.io.review_files import append_label, read_items, read_labels
from rlaif.review.app import Review, build_app
from rlaif.review.items import allocate, load_or_sample, population, sample, strata
from tests.review_runs import make_run

PORT = 8766
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("review"))


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def client_for(run: Path, reviewer: str = "ann", **kwargs: object) -> tuple[Review, TestClient]:
    items, _ = load_or_sample(run, size=kwargs.get("size"), strategy=None, seed=None)  # type: ignore[arg-type]
    review = Review(run, items, reviewer)
    return review, TestClient(build_app(review, "127.0.0.1", PORT), base_url=BASE,
                              headers={"X-Review-Token": review.token})


# ---------------------------------------------------------------------------------------------
# the sample

def test_population_is_every_scored_distinct_pair_with_the_judges_view(run: Path) -> None:
    pop, noise = population(run)
    cands = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    distinct = sum(len({c["responses"][i], c["responses"][j]}) == 2
                   for c in cands for i in range(3) for j in range(i + 1, 3))
    assert len(pop) == distinct and noise == 0.05
    kept = sum(len((run / "preferences" / f"{name}.jsonl").read_text().splitlines()) for name in ("train", "test"))
    assert sum(item["in_dataset"] for item in pop) == kept
    for item in pop:
        j, (s_i, s_j) = item["judge"], item["judge"]["scores"]
        assert j["margin"] == pytest.approx(abs(s_i - s_j))
        assert j["preferred"] == item["candidates"][0 if s_i > s_j else 1]
        assert ("near_noise" in j["flags"]) == (j["margin"] <= 0.05)
        assert set(j["reasons"]) == {"answer_likelihood", "answer_checks"}
        assert "checks" in j["reasons"]["answer_checks"][0]
    assert any("truncated" in item["judge"]["flags"] for item in pop)


def test_the_sample_is_seeded_and_reproducible(run: Path) -> None:
    pop, noise = population(run)
    for strategy in ("margin", "random", "flagged"):
        one, two = sample(pop, noise, strategy, 8, 3), sample(pop, noise, strategy, 8, 3)
        assert one == two
        other = sample(pop, noise, strategy, 8, 4)
        assert [i["item"] for i in other] != [i["item"] for i in one] or [i["show"] for i in other] != [
            i["show"] for i in one]
    shows = Counter(tuple(i["show"]) == tuple(i["candidates"]) for i in sample(pop, noise, "random", 100, 0))
    assert shows[True] and shows[False]  # the shown order is randomised per item
    assert all(i["judge"]["flags"] for i in sample(pop, noise, "flagged", 100, 0))
    assert {i["weight"] for i in sample(pop, noise, "random", 5, 0)} == {1.0}


def test_margin_strata_over_sample_near_and_weights_restore_population_shares(run: Path) -> None:
    pop, noise = population(run)
    groups = strata(pop, noise)
    assert {i["item"] for g in groups.values() for i in g} == {i["item"] for i in pop}
    assert max(i["judge"]["margin"] for i in groups["near"]) <= 0.05 < min(i["judge"]["margin"] for i in groups["mid"])
    assert max(i["judge"]["margin"] for i in groups["mid"]) < min(i["judge"]["margin"] for i in groups["far"])
    n = 8
    picked = sample(pop, noise, "margin", n, 0)
    count = Counter(i["stratum"] for i in picked)
    assert len(picked) == n and count["near"] == min(len(groups["near"]), n // 2)
    for item in picked:
        h = item["stratum"]
        assert item["weight"] == pytest.approx((len(groups[h]) / len(pop)) / (count[h] / n))
    # weighted shares of the sample equal the population's
    for h, group in groups.items():
        assert sum(i["weight"] for i in picked if i["stratum"] == h) / n == pytest.approx(len(group) / len(pop))
    assert allocate({"near": 1, "mid": 10, "far": 10}, 10) == {"near": 1, "mid": 4, "far": 5}
    assert allocate({"near": 30, "mid": 2, "far": 0}, 10) == {"near": 8, "mid": 2, "far": 0}
    # the run's noise margin unknown: the lowest third of margins is near
    thirds = strata(pop, None)
    assert len(thirds["near"]) == len(pop) // 3


def test_items_written_once_reused_and_another_sample_refused_unless_resample(run: Path) -> None:
    items, new = load_or_sample(run, size=6, strategy="margin", seed=1)
    path = run / "review" / "items.jsonl"
    first = path.read_bytes()
    assert new and read_items(path) == items and len(items) == 6
    assert load_or_sample(run, size=None, strategy=None, seed=None) == (items, False)
    with pytest.raises(Exception, match="--sample 7 \\(recorded 6\\).*--resample"):
        load_or_sample(run, size=7, strategy=None, seed=None)
    assert path.read_bytes() == first
    again, new = load_or_sample(run, size=7, strategy="random", seed=1, resample=True)
    assert new and len(again) == 7 and (run / "review" / "items.prev.jsonl").read_bytes() == first


# ---------------------------------------------------------------------------------------------
# the server

@pytest.mark.parametrize("answer, side", [("A", 0), ("B", 1), ("tie", None), ("both_bad", None), ("skip", None)])
def test_every_answer_is_appended_and_reveals_the_judge(run: Path, answer: str, side: int | None) -> None:
    review, client = client_for(run)
    before = files(run)
    view = client.get("/api/item?next").json()
    assert view["index"] == 0 and view["label"] is None and "judge" not in view  # the judge only after answering
    assert "judge" not in json.dumps(view["item"])
    item = review.items[0]
    first, second = item["show"]
    text = dict(zip(item["candidates"], item["responses"]))
    assert view["item"]["responses"] == [text[first], text[second]]
    r = client.post("/api/label", json={"item": item["item"], "answer": answer, "note": " why ", "shown": item["show"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["judge"] == item["judge"] and out["label"]["answer"] == answer and out["next"] == 1
    rows = read_labels(run / "review" / "labels.jsonl")
    assert len(rows) == 1 and rows[0]["reviewer"] == "ann" and rows[0]["note"] == "why"
    assert rows[0]["preferred"] == (None if side is None else item["show"][side])
    preferred = item["judge"]["preferred"]
    assert out["agrees"] == (None if side is None else item["show"][side] == preferred)
    assert out["summary"]["answered"] == 1
    after = files(run)
    assert {k: v for k, v in after.items() if not k.startswith("review/")} == {
        k: v for k, v in before.items() if not k.startswith("review/")}  # nothing written outside review/


def test_bad_requests_answer_one_line_and_write_nothing(run: Path) -> None:
    review, client = client_for(run)
    item = review.items[0]
    ok = {"item": item["item"], "answer": "A", "note": "", "shown": item["show"]}
    before = files(run)
    cases = [
        ({**ok, "item": "nope:0:1"}, 404), ({**ok, "shown": item["show"][::-1]}, 409),
        ({**ok, "answer": "C"}, 400), ({**ok, "shown": "0,1"}, 400), ({**ok, "note": 3}, 400),
        ({k: v for k, v in ok.items() if k != "item"}, 400), ([ok], 400), ("A", 400),
    ]
    for body, status in cases:
        r = client.post("/api/label", json=body)
        assert r.status_code == status, (body, r.text)
        assert list(r.json()) == ["error"] and "\n" not in r.json()["error"]
    r = client.post("/api/label", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert client.get("/api/item?index=999").status_code == 404
    assert client.get("/api/item?index=x").status_code == 400
    wrong = TestClient(build_app(review, "127.0.0.1", PORT), base_url=BASE, headers={"X-Review-Token": "wrong"})
    assert wrong.post("/api/label", json=ok).status_code == 403
    assert wrong.get("/api/state").status_code == 403 and wrong.get("/").status_code == 403
    bare = TestClient(build_app(review, "127.0.0.1", PORT), base_url=BASE)
    bare.cookies.set("rlaif_review_token", review.token)
    assert bare.post("/api/label", content=json.dumps(ok), headers={"Content-Type": "text/plain"}).status_code == 403
    assert files(run) == before and not (run / "review" / "labels.jsonl").exists()


def test_the_page_and_its_files_open_with_the_token_in_the_url(run: Path) -> None:
    review, _ = client_for(run)
    client = TestClient(build_app(review, "127.0.0.1", PORT), base_url=BASE)
    page = client.get(f"/?token={review.token}")
    assert page.status_code == 200 and "review.js" in page.text
    assert client.get("/static/review.js").status_code == 200 and client.get("/api/state").status_code == 200


def answer_all(client: TestClient, review: Review, count: int) -> None:
    for _ in range(count):
        view = client.get("/api/item?next").json()
        r = client.post("/api/label", json={"item": view["item"]["item"], "answer": "A", "shown": view["item"]["show"]})
        assert r.status_code == 200


def test_reopening_continues_with_the_first_unanswered_item(run: Path) -> None:
    review, client = client_for(run)
    answer_all(client, review, 3)
    review2, client2 = client_for(run)  # a new server over the same folder
    state = client2.get("/api/state").json()
    assert state["next"] == 3 and state["summary"]["answered"] == 3
    assert client2.get("/api/item?next").json()["index"] == 3
    _, other = client_for(run, reviewer="bob")  # another reviewer starts at the beginning
    assert other.get("/api/item?next").json()["index"] == 0
    # re-answering an item supersedes, it does not count twice
    item = review.items[0]
    client2.post("/api/label", json={"item": item["item"], "answer": "tie", "shown": item["show"]})
    assert client2.get("/api/state").json()["summary"]["answered"] == 3
    answer_all(client2, review2, len(review2.items) - 3)
    assert client2.get("/api/item?next").json()["done"] is True


def test_a_torn_last_line_is_dropped_and_labelling_goes_on(run: Path) -> None:
    review, client = client_for(run)
    answer_all(client, review, 2)
    path = run / "review" / "labels.jsonl"
    good = path.read_bytes()
    torn = b'{"item": "' + review.items[2]["item"].encode() + b'", "reviewer": "ann", "ti'  # killed mid-write
    path.write_bytes(good + torn)
    _, client2 = client_for(run)
    state = client2.get("/api/state").json()
    assert state["summary"]["answered"] == 2 and state["next"] == 2  # nothing finished lost
    answer_all(client2, review, 1)
    rows = read_labels(path)
    assert len(rows) == 3 and path.read_bytes().startswith(good) and path.read_bytes().endswith(b"\n")


# ---------------------------------------------------------------------------------------------
# CLI

def test_cli_refuses_a_remote_host_without_allow_remote(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["review", str(run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote" in err and err.count("\n") == 1 and not (run / "review").exists()


def test_cli_bad_inputs_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["review", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["review", str(run), "--sample", "0"]) == 2
    assert "--sample 0" in capsys.readouterr().err
    load_or_sample(run, size=5, strategy=None, seed=None)
    assert main(["review", str(run), "--seed", "9", "--port", "0"]) == 2
    assert "--seed 9 (recorded 0)" in capsys.readouterr().err


def test_review_report_prints_the_figures_as_text_and_json(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = load_or_sample(run, size=4, strategy="random", seed=0)[0]
    for item in items[:3]:
        first, second = item["show"]
        append_label(run / "review" / "labels.jsonl", {
            "item": item["item"], "reviewer": "ann", "time": "2026-12-06T00:00:00Z", "shown": [first, second],
            "answer": "A", "preferred": first, "note": ""})
    assert main(["review", "report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "3 answers on 4 items" in out and "1.00 [0.44, 1.00]  (3 of 3)" in out  # all A: position bias 1
    assert main(["review", "report", str(run), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["labels"] == 3 and figures["answers"]["A"] == 3


def test_cli_serves_the_tokenised_url_and_warns_on_a_remote_host(run: Path) -> None:
    import os
    import subprocess

    import httpx

    from tests.processes import get_when_up

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "review", str(run), "--port", "0", "--host", "0.0.0.0",
                             "--allow-remote", "--reviewer", "cli", "--sample", "4"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("rlaif review: http://0.0.0.0:") and "/?token=" in line, line
        url = line.split(": ", 1)[1].strip().replace("0.0.0.0", "127.0.0.1")
        r = get_when_up(url)
        assert r.status_code == 200 and "rlaif review" in r.text
        base = url.split("/?")[0]
        assert httpx.get(base + "/api/state").status_code == 403
        assert httpx.get(base + "/api/state", cookies=r.cookies).json()["items"] == 4
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "warning: listening on 0.0.0.0" in err


def test_a_reviewed_run_folder_still_builds_and_overwrite_keeps_the_labels(run: Path) -> None:
    """review/ is listed in the run's marker: a later build accepts it, and `--overwrite` (which
    removes only the stages' outputs) never deletes people's labels."""
    items = load_or_sample(run, size=3, strategy="random", seed=0)[0]
    labels = run / "review" / "labels.jsonl"
    first, second = items[0]["show"]
    append_label(labels, {"item": items[0]["item"], "reviewer": "ann", "time": "2026-12-06T00:00:00Z",
                          "shown": [first, second], "answer": "A", "preferred": first, "note": ""})
    before = labels.read_bytes()
    build = ["build", "--judgements", str(run / "judgements.jsonl"), "--out", str(run), "progress=false"]
    assert main(build) == 0
    assert main(build + ["--overwrite"]) == 0
    assert labels.read_bytes() == before and (run / "review" / "items.jsonl").is_file()
