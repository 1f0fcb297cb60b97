"""Issue 20 item 9: a judge endpoint that drips, floods or answers the wrong JSON shape.

A real local HTTP server (threads) answers each request by a mode: drip (headers, then one byte of
body every 0.1 s), flood (an endless body), or a fixed JSON body of the wrong shape. The backend
must fail a dripping request at ``timeout_s`` in total, refuse a body over ``max_response_mb``, and
turn a wrong shape into a recorded judge failure for the item (never a traceback). Each call runs
in a thread with a join timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from rlaif.backends.base import BackendConfig, SamplingParams
from rlaif.backends.openai import OpenAIBackend
from rlaif.errors import UserError
from rlaif.judging.judge import JudgeItem, judge_items
from rlaif.judging.rubrics import load_rubric

GUARD_S = 20.0  # a call that has not returned by then fails the test
CONV = [{"role": "user", "content": "Hello"}]


class Endpoint:
    """A local OpenAI-compatible server whose answer is set by ``reply`` (path, body) -> mode:
    "drip", "flood" or a JSON value to send as is."""

    def __init__(self) -> None:
        self.reply: Callable[[str, dict[str, Any]], Any] = lambda path, body: "drip"
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                mode = outer.reply(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if mode in ("drip", "flood"):
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                    try:
                        self._stream(mode)
                    except OSError:  # the client gave up: what the test wants
                        pass
                    return
                data = json.dumps(mode).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, mode: str) -> None:
                end = time.monotonic() + 2 * GUARD_S
                self.wfile.write(b'{"choices": [')
                while time.monotonic() < end and not outer.stop.is_set():
                    if mode == "drip":
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.1)
                    else:
                        self.wfile.write(b" " * 65536)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.stop.set()
    e.httpd.shutdown()
    e.httpd.server_close()


def engine(url: str, **kw: Any) -> OpenAIBackend:
    cfg = dict(engine="openai", model="judge", base_url=url, http_retries=0, timeout_s=1.0, max_concurrency=2,
               api_key_env="RLAIF_TEST_KEY")
    return OpenAIBackend(BackendConfig(**{**cfg, **kw}))


def guarded(call: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """(result, exception, seconds) of ``call`` run in a thread; fails the test after GUARD_S."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            out["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    assert not thread.is_alive(), f"the request did not end within {GUARD_S} s"
    return out.get("result"), out.get("error"), time.monotonic() - start


def test_a_dripping_server_fails_at_the_total_deadline(endpoint: Endpoint) -> None:
    backend = engine(endpoint.url, timeout_s=1.0)  # each byte comes well within 1 s: only a total deadline ends it
    _, error, seconds = guarded(lambda: backend.chat([CONV], SamplingParams(), progress=False))
    assert isinstance(error, UserError) and "timed out" in str(error) and "timeout_s=1" in str(error), error
    assert seconds < 4


def test_a_flooding_server_is_refused_at_the_size_cap(endpoint: Endpoint) -> None:
    endpoint.reply = lambda path, body: "flood"
    backend = engine(endpoint.url, timeout_s=10.0, max_response_mb=1)
    _, error, seconds = guarded(lambda: backend.chat([CONV], SamplingParams(), progress=False))
    assert isinstance(error, UserError), error
    assert str(error) == f"openai engine: {endpoint.url}/chat/completions answered more than 1 MB (max_response_mb)"


WRONG_SHAPES = [
    None, [1, 2], {}, {"choices": "none"}, {"choices": []}, {"choices": [None]}, {"choices": [{"message": "hi"}]},
    {"choices": [{"message": {"content": {"score": 5}}}]}, {"choices": [{"message": {"content": "x"}, "index": "a"}]},
    {"choices": [{"logprobs": "x"}]}, {"choices": [{"logprobs": {"content": [{"top_logprobs": "zz"}]}}]},
    {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": 5, "logprob": "high"}]}]}}]},
    {"choices": [{"message": {"content": "{}"}}], "usage": {"completion_tokens": "many"}},
]


@pytest.mark.parametrize("rubric", ["truthfulness", "honesty", "overall_preference"])
def test_a_reply_of_the_wrong_shape_is_a_recorded_judge_failure(endpoint: Endpoint, rubric: str) -> None:
    judge = load_rubric(rubric)
    assert judge.method == {"truthfulness": "verdict", "honesty": "logprob", "overall_preference": "pairwise"}[rubric]
    backend = engine(endpoint.url)
    for shape in WRONG_SHAPES:
        endpoint.reply = lambda path, body: shape
        rows, error, _ = guarded(lambda: judge_items(backend, judge, [JudgeItem("q", CONV, ["a", "b"])],
                                                     verdict_retries=0, progress=False))
        assert error is None, f"{shape!r}: {type(error).__name__}: {error}"
        failures = 1 if judge.method == "pairwise" else 2  # pairwise: one pair, judged in both orders
        assert rows[0]["scores"] == [None, None] and rows[0]["failures"] == failures, (shape, rows[0])


def test_likelihood_prompt_logprobs_of_the_wrong_shape_are_a_recorded_failure(endpoint: Endpoint) -> None:
    judge = load_rubric("answer_likelihood")
    assert judge.method == "likelihood"

    def reply(path: str, body: dict[str, Any]) -> Any:
        if path == "/tokenize":
            tokens = [1, 2] if body["add_generation_prompt"] else [1, 2, 3, 4]
            return {"tokens": tokens, "token_strs": [str(t) for t in tokens]}
        return {"choices": [{"prompt_logprobs": [None, "x", 5, {"3": "high"}]}]}

    endpoint.reply = reply
    rows, error, _ = guarded(lambda: judge_items(engine(endpoint.url), judge, [JudgeItem("q", CONV, ["a", "b"])],
                                                 progress=False))
    assert error is None, f"{type(error).__name__}: {error}"
    assert rows[0]["scores"] == [None, None] and rows[0]["failures"] == 2
