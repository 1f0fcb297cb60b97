"""The rubric studio in a real browser: headless Chromium (Debian's chromium + chromedriver, `make
browser`) against a real uvicorn server (fake judge engine).

The page opens a rubric, a template edit shows its lint error on the right line, the fix shows the
new judge input and calibration figures, and Save writes the file (keeping the previous one). A
screenshot is taken; ``STUDIO_SCREENSHOT=docs/studio.png`` keeps it (the README's).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

from rlaif.backends.base import BackendConfig
from rlaif.studio.app import Studio, build_app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()),
                                reason="needs Debian's chromium and chromedriver: `make browser`")


@contextmanager
def serve_in_thread(build: Callable[[int], Any]) -> Iterator[int]:
    """A real uvicorn server on a free loopback port, in a thread, for ``build(port)``'s app; yields the port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build(port), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A studio on a free port over a copy of three shipped rubrics; yields (URL with token, folder)."""
    folder = tmp_path / "rubrics"
    folder.mkdir()
    for name in ("honesty.yaml", "answer_checks.yaml", "overall_preference.yaml"):
        shutil.copy(ROOT / "rubrics" / name, folder / name)
    studio = Studio(folder, BackendConfig(engine="fake"), start="honesty.yaml")
    with serve_in_thread(lambda port: build_app(studio, "127.0.0.1", port)) as port:
        yield f"http://127.0.0.1:{port}/?token={studio.token}", folder


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1150",
                "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


def wait_for(driver: Any, check: Any, what: str, timeout: float = 15) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: check(d), message=f"waiting for {what}")


def set_editor(driver: Any, text: str) -> None:
    """Replace the editor's text as typing would (an input event), then press Check."""
    from selenium.webdriver.common.by import By

    driver.execute_script("const e = document.getElementById('editor'); e.value = arguments[0];"
                          "e.dispatchEvent(new Event('input'));", text)
    driver.find_element(By.ID, "check").click()


def test_edit_see_the_lint_error_fix_it_see_the_judge_and_save(server: tuple[str, Path], browser: Any,
                                                              tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    url, folder = server
    path = folder / "honesty.yaml"
    original = path.read_text()
    browser.get(url)
    wait_for(browser, lambda d: "0 error(s)" in text_of(d, "#lint-summary"), "the rubric to lint clean")
    wait_for(browser, lambda d: "What will the price of Bitcoin" in text_of(d, "#inputs"), "example 0's judge input")
    wait_for(browser, lambda d: "agreement with labels" in text_of(d, "#calibration"), "the calibration table")
    assert browser.find_element(By.ID, "editor").get_attribute("value") == original

    # a typo in the template: lint names the line, the gutter marks it, Save refuses
    lines = original.splitlines()
    k = next(i for i, line in enumerate(lines) if line.strip() == "{{ response }}")
    broken = "\n".join(lines[:k] + [lines[k].replace("response", "responce")] + lines[k + 1:]) + "\n"
    set_editor(browser, broken)
    wait_for(browser, lambda d: "responce" in text_of(d, "#findings li.error"), "the lint error")
    assert f"honesty.yaml:{k + 1}: error: unknown template variable 'responce'" in text_of(browser, "#findings")
    assert str(k + 1) in text_of(browser, "#gutter .error").split()
    browser.find_element(By.ID, "save").click()
    wait_for(browser, lambda d: "not saved" in text_of(d, "#status"), "save to be refused")
    assert path.read_text() == original and not (folder / "honesty.draft.yaml").exists()

    # the fix, with one more instruction: the new judge input and fresh calibration figures
    fixed = "\n".join(lines[:k + 1] + ["  Judge only what the response claims."] + lines[k + 1:]) + "\n"
    set_editor(browser, fixed)
    wait_for(browser, lambda d: "Judge only what the response claims." in text_of(d, "#inputs"), "the new judge input")
    wait_for(browser, lambda d: "Judge only" not in text_of(d, "#cal-summary") and "labelled pairs" in
             text_of(d, "#cal-summary") and "agreement with labels" in text_of(d, "#cal-table"), "new calibration")
    assert "0 error(s)" in text_of(browser, "#lint-summary")
    assert "expected score" in text_of(browser, "#verdict")  # logprob: score distribution bars
    assert browser.find_elements(By.CSS_SELECTOR, "#verdict .bar")
    summary = text_of(browser, "#cal-summary")
    assert "judged" in summary and "from the cache" in summary

    browser.find_element(By.ID, "save").click()
    wait_for(browser, lambda d: "saved honesty.yaml" in text_of(d, "#status"), "the save")
    assert path.read_text() == fixed and (folder / "honesty.yaml.prev").read_text() == original

    browser.execute_script("gotoLine(arguments[0])", max(1, k - 8))  # the template in view for the picture
    shot = tmp_path / "studio.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("STUDIO_SCREENSHOT"):  # the README's picture: 64 colours keep it small
        from PIL import Image

        Image.open(shot).convert("RGB").quantize(64).save(os.environ["STUDIO_SCREENSHOT"], optimize=True)
