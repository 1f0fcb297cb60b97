"""OpenAI-compatible chat completions over httpx: ``vllm serve``, hosted APIs, proxies.

One request per conversation (``n`` samples each), ``max_concurrency`` in flight from a thread
pool. Transient failures (429, 5xx, timeouts, connection errors) are retried with tenacity,
waiting ``http_retry_backoff_s * 2**k`` seconds (at most 30; a 429's ``Retry-After`` is honoured), up
to ``http_retries`` retries; then a one-line UserError names the URL and the last status. Other
4xx answers (bad model name, bad request) fail at once with the server's message.

Untrusted servers: ``timeout_s`` bounds each whole answer (every read, and the body in total), so a
server that drips a byte a second times out like a silent one; a body over ``max_response_mb``
fails at once (one line). A reply of the wrong JSON shape (no ``choices``, a ``message`` that is not
an object, log-probs of the wrong type, ...) is not an error of the run: chat returns empty
completions with ``finish_reason`` "error" (a verdict judge records the failure), choice log-probs
are all ``-inf`` and response log-probs NaN (the judging methods record a failure).

Several servers (``base_url`` a list, or comma-separated: a fleet of ``vllm serve`` of the same
model) share the requests: each attempt goes to the server with the fewest requests in flight
(ties in turn), and a server that failed to answer (connection error, timeout, 5xx) is avoided for
``DOWN_S`` seconds, so a dead server's requests are retried on another at once, without backoff
while another server is up. Per-request seeds make a sample the same whichever server draws it
(servers of the same model and hardware).

``config.model`` is sent as-is: it must be the *served* model name (``vllm serve ...
--served-model-name NAME``; without that flag vLLM serves the model under its path). The API key
is read from the environment variable named by ``api_key_env`` and sent only as the
``Authorization`` header: it never appears in ``model_id``, logs or error messages.

``choice_logprobs`` asks for one token with ``top_logprobs=20`` and matches each returned token
string against the choices after stripping whitespace (``"1"`` and ``" 1"`` both count for
choice ``"1"``; their probabilities add). With a non-empty ``assistant_prefix`` the prefix is
sent as a final assistant message with vLLM's ``add_generation_prompt: false,
continue_final_message: true``; hosted APIs that do not support continuing an assistant message
may ignore or reject these fields. Per-sample token counts come from ``usage`` when ``n == 1``
and from the returned per-token log-probs when ``n > 1``.

Token ids and log-probs of the samples (`Completion.token_ids` / ``logprobs``): with
``SamplingParams.logprobs`` the request asks for ``logprobs: true`` and each completion carries
the server's per-token ``logprob`` values. They are whatever the server computes: vLLM's server
reports the raw model log-probs (temperature 1, no top-p) unless it was started with
``--logprobs-mode processed_logprobs``, which matches the other engines. Token ids come only
from servers that return them: with ``return_token_ids`` the request sets vLLM's
``return_token_ids: true`` extension (vLLM >= 0.10; checked on 0.32) and each choice's
``token_ids`` are used; hosted APIs reject that field, and without it ``token_ids`` is None
(never re-derived by tokenizing the text).

``response_logprobs`` (likelihood judging) needs vLLM's server extensions; hosted APIs cannot
score given text, and the first refusal is a one-line UserError. Per pair: ``POST /tokenize``
(at the server root, beside ``/v1``) of the conversation with the generation prompt, and of the
conversation plus the reply as an assistant message (``return_token_strs``); the reply ids are
the second list past the first, with trailing whitespace-only tokens dropped: the split of
`rlaif.backends.turns` done by the server's own tokenizer and template (a template that does not
render the reply as a continuation of the prompt is an error here). Then one
``POST /v1/completions`` with the token-id prompt, ``max_tokens: 1, prompt_logprobs: 0``, and
the reply positions of ``choices[0].prompt_logprobs`` are read. Conversations shared by several
replies are tokenized once.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tqdm.auto import tqdm

from rlaif.backends.base import BackendConfig, Completion, Conversation, Generation, SamplingParams
from rlaif.backends.choices import logsumexp
from rlaif.errors import UserError
from rlaif.io.redact import redact, redact_url
from rlaif.io.seeds import mix_seed

TOP_LOGPROBS = 20  # the most OpenAI's API allows
SHAPE_ERRORS = (AttributeError, IndexError, KeyError, TypeError, ValueError)  # a reply of the wrong shape


class TransientHTTPError(Exception):
    """A 429 or 5xx answer: worth retrying."""

    def __init__(self, status: int, body: str, retry_after: float | None) -> None:
        super().__init__(f"status {status}: {body}")
        self.status, self.body, self.retry_after = status, body, retry_after


def _is_transient(e: BaseException) -> bool:
    return isinstance(e, (TransientHTTPError, httpx.TimeoutException, httpx.TransportError))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


DOWN_S = 10.0  # seconds a server that failed to answer gets no new request while another is up


def base_urls(value: str | list[str]) -> list[str]:
    """The server URLs of option ``base_url`` (a list, or comma-separated), each checked."""
    urls = [u.strip().rstrip("/") for u in (value if isinstance(value, list) else str(value).split(","))]
    urls = [u for u in urls if u]
    if not urls:
        raise UserError("option 'base_url': no server URL given")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"option 'base_url': expected http(s)://host[:port]/v1, got {redact_url(url)!r}")
    return urls


class Servers:
    """Picks the server for each attempt: fewest requests in flight among those not marked down
    (all of them when every one is), ties in turn."""

    def __init__(self, n: int) -> None:
        self.inflight = [0] * n
        self.down_until = [0.0] * n
        self.turn = 0
        self.lock = threading.Lock()

    def acquire(self) -> int:
        with self.lock:
            now = time.monotonic()
            n = len(self.inflight)
            up = [i for i in range(n) if self.down_until[i] <= now] or list(range(n))
            order = sorted(up, key=lambda i: (self.inflight[i], (i - self.turn) % n))
            pick = order[0]
            self.turn = (pick + 1) % n
            self.inflight[pick] += 1
            return pick

    def release(self, index: int, failed: bool) -> None:
        with self.lock:
            self.inflight[index] -= 1
            if failed:
                self.down_until[index] = time.monotonic() + DOWN_S

    def any_up(self) -> bool:
        now = time.monotonic()
        return any(t <= now for t in self.down_until)


class OpenAIBackend:
    """``Backend`` over one or several OpenAI-compatible ``/chat/completions`` endpoints."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.bases = base_urls(config.base_url)
        self.servers = Servers(len(self.bases))
        self.url = self.bases[0] + "/chat/completions"
        hosts = []
        for base in self.bases:
            parts = urlsplit(base)
            hosts.append((parts.hostname or "") + (f":{parts.port}" if parts.port else ""))  # no user:password@
        self.model_id = f"openai:{config.model}@{'+'.join(hosts)}"
        self._key = os.environ.get(config.api_key_env) or None
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self.client = httpx.Client(headers=headers, timeout=config.timeout_s,
                                   limits=httpx.Limits(max_connections=config.max_concurrency))

    # -- HTTP --------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        """``text`` without the API key or credentials in a URL (it is printed)."""
        return redact(text.replace(self._key, "***") if self._key else text)

    def _url(self, index: int, path: str) -> str:
        """``path`` under server ``index``: relative to ``/v1`` ("/chat/completions"), or to the
        server root when it starts with "//" ("//tokenize")."""
        base = self.bases[index]
        return base.removesuffix("/v1") + path[1:] if path.startswith("//") else base + path

    def _post_once(self, body: dict[str, Any], path: str, tried: list[str]) -> dict[str, Any]:
        index = self.servers.acquire()
        url = self._url(index, path)
        tried.append(url)
        failed = True
        try:
            with self.client.stream("POST", url, json=body) as response:
                content = self._read_limited(response, url, time.monotonic() + self.config.timeout_s)
            failed = response.status_code >= 500
        finally:
            self.servers.release(index, failed)
        text = content.decode("utf-8", errors="replace")
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = response.headers.get("retry-after")
            try:
                wait = float(retry_after) if retry_after is not None else None
            except ValueError:
                wait = None
            raise TransientHTTPError(response.status_code, _short(text), wait)
        if response.status_code >= 400:
            raise UserError(self._scrub(f"openai engine: {url} answered {response.status_code}: {_short(text)}"))
        try:
            return json.loads(content)
        except ValueError:
            raise UserError(self._scrub(f"openai engine: {url} answered {response.status_code} with a "
                                        f"body that is not JSON: {_short(text, 120)}")) from None

    def _read_limited(self, response: httpx.Response, url: str, deadline: float) -> bytes:
        """The body, read until ``deadline`` (then httpx.ReadTimeout: retried like any timeout) and up to
        ``max_response_mb`` (then a UserError)."""
        limit = int(self.config.max_response_mb * 2**20)
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise UserError(self._scrub(f"openai engine: {url} answered more than "
                                            f"{self.config.max_response_mb:g} MB (max_response_mb)"))
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(f"answer not complete after {self.config.timeout_s:g} s")
        return b"".join(chunks)

    def _wait(self, state: RetryCallState) -> float:
        e = state.outcome.exception() if state.outcome else None
        throttled = isinstance(e, TransientHTTPError) and e.status == 429
        if len(self.bases) > 1 and self.servers.any_up() and not throttled:
            return 0.0  # another server is up: try it now
        backoff = min(30.0, self.config.http_retry_backoff_s * 2 ** (state.attempt_number - 1))
        e = state.outcome.exception() if state.outcome else None
        if isinstance(e, TransientHTTPError) and e.retry_after is not None:
            return max(backoff, min(e.retry_after, 60.0))
        return backoff

    def _post(self, body: dict[str, Any], path: str = "/chat/completions") -> dict[str, Any]:
        attempts = self.config.http_retries + 1
        retrying = Retrying(stop=stop_after_attempt(attempts), wait=self._wait,
                            retry=retry_if_exception(_is_transient), reraise=True)
        tried: list[str] = []
        try:
            return retrying(self._post_once, body, path, tried)
        except (TransientHTTPError, httpx.TimeoutException, httpx.TransportError) as e:
            error: BaseException = e
        url = tried[-1] if tried else self._url(0, path)
        if len(set(tried)) > 1:
            url = f"{url} (and {len(set(tried)) - 1} other servers)"
        if isinstance(error, TransientHTTPError):
            msg = f"openai engine: {url} failed after {attempts} attempts; last status {error.status}: {error.body}"
        elif isinstance(error, httpx.TimeoutException):
            msg = (f"openai engine: {url} timed out after {attempts} attempts "
                   f"(timeout_s={self.config.timeout_s}; {type(error).__name__})")
        else:
            msg = (f"openai engine: cannot reach {url} after {attempts} attempts "
                   f"({type(error).__name__}: {_short(str(error), 120)}); is the server running?")
        raise UserError(self._scrub(msg)) from None

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str, progress: bool) -> list[Any]:
        """``fn`` over ``items`` with ``max_concurrency`` threads; results in order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.config.max_concurrency)) as pool, \
                tqdm(total=len(items), desc=desc, unit="request", disable=not progress) as bar:
            futures = [pool.submit(fn, x) for x in items]
            for f in futures:
                f.add_done_callback(lambda _: bar.update(1))
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # -- Backend -----------------------------------------------------------------------------
    def _chat_body(self, conversation: Conversation, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model, "messages": list(conversation), "n": params.n,
            "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
        }
        if seed is not None:
            body["seed"] = mix_seed(seed) & 0x7FFFFFFF  # 31 bits: accepted everywhere
        if params.stop:
            body["stop"] = list(params.stop)
        if params.n > 1 or params.logprobs:
            body["logprobs"] = True  # per-sample token counts (usage only has the total)
        if self.config.return_token_ids:
            body["return_token_ids"] = True  # vLLM server extension
        if params.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "reply", "schema": params.json_schema, "strict": True}}
        return body

    @staticmethod
    def _generation(reply: Any, n: int, want_logprobs: bool = False) -> Generation:
        """The reply's ``n`` completions; ``n`` empty ones with ``finish_reason`` "error" when the reply
        has the wrong shape (a judge records that as a failure)."""
        try:
            generation = OpenAIBackend._parse_generation(reply, n, want_logprobs)
            if len(generation.completions) == n:
                return generation
        except SHAPE_ERRORS:
            pass
        return Generation(completions=[Completion(text="", num_tokens=0, finish_reason="error") for _ in range(n)],
                          prompt_tokens=0)

    @staticmethod
    def _parse_generation(reply: dict[str, Any], n: int, want_logprobs: bool) -> Generation:
        usage = reply.get("usage") or {}
        comps = []
        for choice in sorted(reply.get("choices", []), key=lambda c: c.get("index", 0)):
            text = (choice.get("message") or {}).get("content") or ""
            if not isinstance(text, str):
                raise TypeError("message content is not text")
            tokens = ((choice.get("logprobs") or {}).get("content")) or None
            ids = choice.get("token_ids")
            ids = [int(t) for t in ids] if isinstance(ids, list) else None
            if ids is not None:
                num = len(ids)
            elif tokens is not None:
                num = len(tokens)
            elif n == 1 and "completion_tokens" in usage:
                num = int(usage["completion_tokens"])
            else:  # no per-sample count from this server: split the total by text length
                num = -1
            lps = [float(t["logprob"]) for t in tokens] if want_logprobs and tokens is not None else None
            comps.append(Completion(text=text, num_tokens=num, finish_reason=choice.get("finish_reason") or "length",
                                    token_ids=ids, logprobs=lps))
        unknown = [c for c in comps if c.num_tokens < 0]
        if unknown:
            total = int(usage.get("completion_tokens", 0))
            chars = sum(len(c.text) for c in comps) or 1
            for c in unknown:
                c.num_tokens = round(total * len(c.text) / chars)
        return Generation(completions=comps, prompt_tokens=int(usage.get("prompt_tokens", 0)))

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams,
             seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        if seeds is not None and len(seeds) != len(conversations):
            raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
        bodies = [self._chat_body(c, params, seeds[i] if seeds is not None else params.seed)
                  for i, c in enumerate(conversations)]
        return self._map(lambda b: self._generation(self._post(b), params.n, params.logprobs), bodies,
                         "openai chat", progress)

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        if any(not c.strip() for c in choices) or not choices:
            raise UserError("choice_logprobs: choices must be non-empty strings")

        def body(conversation: Conversation) -> dict[str, Any]:
            b: dict[str, Any] = {"model": self.config.model, "messages": list(conversation), "max_tokens": 1,
                                 "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
            if assistant_prefix:
                b["messages"] = list(conversation) + [{"role": "assistant", "content": assistant_prefix}]
                b["add_generation_prompt"] = False
                b["continue_final_message"] = True
            return b

        def score(conversation: Conversation) -> dict[str, float]:
            reply = self._post(body(conversation))
            try:
                return read(reply)
            except SHAPE_ERRORS:  # the wrong shape: no choice has mass, the method records a failure
                return {c: -math.inf for c in choices}

        def read(reply: Any) -> dict[str, float]:
            content = ((reply.get("choices") or [{}])[0].get("logprobs") or {}).get("content") or []
            top = content[0].get("top_logprobs", []) if content else []
            found: dict[str, list[float]] = {c: [] for c in choices}
            seen: set[str] = set()
            for entry in top:
                token = entry.get("token", "")
                if token in seen:
                    continue
                seen.add(token)
                for c in choices:
                    if token.strip() and token.strip() == c.strip():
                        found[c].append(float(entry["logprob"]))
            return {c: logsumexp(v) if v else -math.inf for c, v in found.items()}

        return self._map(score, list(conversations), "openai choice logprobs", progress)

    def _vllm_only(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except UserError as e:
            raise UserError(self._scrub(f"openai engine: response_logprobs (likelihood judging) needs a vLLM server "
                                        f"({what}); {str(e).removeprefix('openai engine: ')}")) from None

    def _tokenize_chat(self, messages: Conversation, generation_prompt: bool) -> tuple[list[int], list[str]]:
        body = {"model": self.config.model, "messages": list(messages), "add_generation_prompt": generation_prompt,
                "return_token_strs": True}
        reply = self._vllm_only("its /tokenize endpoint", lambda: self._post(body, "//tokenize"))
        try:
            return [int(t) for t in reply["tokens"]], [str(t) for t in reply.get("token_strs") or []]
        except SHAPE_ERRORS:
            raise UserError(self._scrub(f"openai engine: {self._url(0, '//tokenize')} answered without a list of "
                                        f"'tokens'")) from None

    def response_logprobs(self, conversations: Sequence[Conversation], responses: Sequence[str],
                          progress: bool = True) -> list[list[float]]:
        if len(responses) != len(conversations):
            raise ValueError(f"{len(responses)} responses for {len(conversations)} conversations")
        unique = {repr(c): c for c in conversations}  # an item's candidates share the judge's prompt
        tokenized = self._map(lambda c: self._tokenize_chat(c, True)[0], list(unique.values()), "openai tokenize",
                              False)
        prompts = dict(zip(unique, tokenized))

        def split(conversation: Conversation, response: str) -> tuple[list[int], list[int]]:
            prompt = prompts[repr(conversation)]
            full, strs = self._tokenize_chat(list(conversation) + [{"role": "assistant", "content": response}], False)
            if full[:len(prompt)] != prompt:
                raise UserError(f"openai engine: response_logprobs: the server's chat template does not render "
                                f"the reply as a continuation of the generation prompt ({self.config.model})")
            end = len(full)
            while end > len(prompt) + 1 and strs and not _visible(strs[end - 1]):
                end -= 1  # the template's newline after the end-of-turn marker
            return prompt, full[len(prompt):end]

        def score(pair: tuple[Conversation, str]) -> list[float]:
            prompt, reply = split(*pair)
            body = {"model": self.config.model, "prompt": prompt + reply, "max_tokens": 1, "temperature": 0.0,
                    "prompt_logprobs": 0}
            out = self._vllm_only("prompt_logprobs", lambda: self._post(body, "/completions"))
            steps = ((out.get("choices") or [{}])[0]).get("prompt_logprobs")
            if not isinstance(steps, list) or len(steps) != len(prompt) + len(reply):
                raise UserError(f"openai engine: response_logprobs (likelihood judging) needs a vLLM server: "
                                f"{redact_url(self.bases[0])}/completions "
                                f"returned no prompt_logprobs")
            try:
                return [float(steps[len(prompt) + k][str(t)]["logprob"]) for k, t in enumerate(reply)]
            except SHAPE_ERRORS:  # the wrong shape: a non-finite score, recorded as a failure
                return [math.nan]

        return self._map(score, list(zip(conversations, responses)), "openai response logprobs", progress)

    def close(self) -> None:
        self.client.close()


def _visible(token: str) -> bool:
    """False for a token string that is only whitespace (byte-level BPE writes space/newline/tab
    as Ġ/Ċ/ĉ, SentencePiece a space as ▁)."""
    return bool(token.translate(_WHITESPACE_MARKS).strip())


_WHITESPACE_MARKS = str.maketrans({"Ġ": " ", "Ċ": "\n", "ĉ": "\t", "č": "\r", "▁": " "})
