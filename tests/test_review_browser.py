"""`rlaif review` in a real browser: headless Chromium (Debian's chromium + chromedriver, `make
browser`) against a real uvicorn server over a fake-engine run folder.

Three items are labelled with the KEYBOARD only (b, n + a note, a, t; Enter for the next item); the
judge's view appears only after each answer; labels.jsonl holds the three answers in the shown
order; reopening the page continues with the fourth item (then x, s, a end the sample); the report
names them. ``REVIEW_SCREENSHOT=docs/review.png`` keeps the picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from rlaif.io.review_files import read_labels
from rlaif.review.app import Review, build_app
from rlaif.review.items import load_or_sample
from tests.review_runs import make_run
from tests.test_studio_browser import CHROMIUM, DRIVER, browser, serve_in_thread, text_of, wait_for  # noqa: F401

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                                reason="needs Debian's chromium and chromedriver: `make browser`")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Review]]:
    """A review of a fresh fake run on a free port; yields (URL with token, the review)."""
    run = make_run(tmp_path)
    items, _ = load_or_sample(run, size=6, strategy=None, seed=None)
    review = Review(run, items, "tester")
    with serve_in_thread(lambda port: build_app(review, "127.0.0.1", port)) as port:
        yield f"http://127.0.0.1:{port}/?token={review.token}", review


def press(driver: Any, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def test_label_three_items_with_the_keyboard(server: tuple[str, Review], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, review = server
    labels = review.run / "review" / "labels.jsonl"
    browser.get(url)
    wait_for(browser, lambda d: "item 1 of 6" in text_of(d, "#item-id"), "the first item")
    assert not browser.find_element(By.ID, "judge").is_displayed()  # no judge before the answer
    item = review.items[0]
    first = dict(zip(item["candidates"], item["responses"]))[item["show"][0]]
    assert text_of(browser, "#response-a") == first.strip()

    # item 1: B, item 2: a note then A, item 3: tie
    press(browser, "b")
    wait_for(browser, lambda d: d.find_element(By.ID, "judge").is_displayed(), "the judge's view")
    assert "The judge" in text_of(browser, "#verdict") and "answer_checks" in text_of(browser, "#scores")
    assert "1 of 6 answered" in text_of(browser, "#progress")
    press(browser, Keys.ENTER)
    wait_for(browser, lambda d: "item 2 of 6" in text_of(d, "#item-id"), "the second item")
    assert not browser.find_element(By.ID, "judge").is_displayed()
    press(browser, "n")
    press(browser, "both too short")
    press(browser, Keys.ESCAPE)
    press(browser, "a")
    wait_for(browser, lambda d: "2 of 6 answered" in text_of(d, "#progress"), "the second answer")
    press(browser, Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: "item 3 of 6" in text_of(d, "#item-id"), "the third item")
    press(browser, "t")
    wait_for(browser, lambda d: "3 of 6 answered" in text_of(d, "#progress"), "the third answer")
    assert "agreement with the judge" in text_of(browser, "#summary")

    rows = read_labels(labels)
    assert [(r["item"], r["answer"], r["note"]) for r in rows] == [
        (review.items[0]["item"], "B", ""), (review.items[1]["item"], "A", "both too short"),
        (review.items[2]["item"], "tie", "")]
    assert [r["shown"] for r in rows] == [i["show"] for i in review.items[:3]]
    assert rows[0]["preferred"] == review.items[0]["show"][1] and rows[2]["preferred"] is None

    shot = tmp_path / "review.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("REVIEW_SCREENSHOT"):  # the docs' picture: 64 colours keep it small
        from PIL import Image

        Image.open(shot).convert("RGB").quantize(64).save(os.environ["REVIEW_SCREENSHOT"], optimize=True)

    browser.get(url)  # reopening continues where it stopped
    wait_for(browser, lambda d: "item 4 of 6" in text_of(d, "#item-id"), "the fourth item on reopening")
    for k, key in enumerate("xsa", start=4):  # both bad, skip, A: then every item is answered
        press(browser, key)
        wait_for(browser, lambda d: f"{k} of 6 answered" in text_of(d, "#progress"), f"answer {k}")
        press(browser, Keys.ENTER)
        if k < 6:
            wait_for(browser, lambda d: f"item {k + 1} of 6" in text_of(d, "#item-id"), f"item {k + 1}")
    wait_for(browser, lambda d: "All 6 items answered" in text_of(d, "#status"), "the end of the sample")
    assert [r["answer"] for r in read_labels(labels)] == ["B", "A", "tie", "both_bad", "skip", "A"]
    from rlaif.review.report import format_report

    report = format_report(review.run)
    assert "6 answers on 6 items" in report and "judge agrees" in report and "tie 1, both bad 1, skip 1" in report
