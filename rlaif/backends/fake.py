"""A deterministic, model-free engine for fast unit tests of pipeline logic.

Never the only test of a feature: every real engine is tested with a real model too.
Replies and choice log-probs are pure functions of (conversation, sample index, seed), so a run
is reproducible. A reply's "tokens" are its words: ``token_ids`` are a hash of each word (below
``FAKE_VOCAB``) and ``logprobs`` (on request) are made-up negative numbers, both deterministic.
``response_logprobs`` gives one made-up log-prob per word of the reply plus one for the end of
the turn, a pure function of (conversation, reply).
Tests may pass ``reply_fn`` / ``logprob_fn`` / ``response_fn`` to script the engine's answers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, Sequence

from rlaif.backends.base import BackendConfig, Completion, Conversation, Generation, SamplingParams
from rlaif.io.seeds import digest_int

FAKE_VOCAB = 50_000
ReplyFn = Callable[[Conversation, int, SamplingParams], str]
LogprobFn = Callable[[Conversation, Sequence[str], str], dict[str, float]]
ResponseFn = Callable[[Conversation, str], list[float]]


def _digest(*parts: object) -> int:
    return digest_int(repr(parts), 8)


def _default_reply(conversation: Conversation, index: int, params: SamplingParams) -> str:
    h = _digest(conversation, index, params.seed, params.temperature)
    if params.json_schema is not None:
        return json.dumps({"rationale": "fake", "score": 1 + h % 5})
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    length = 3 + h % 12
    return " ".join(words[(h >> (3 * k)) % len(words)] for k in range(length))


def _default_logprobs(conversation: Conversation, choices: Sequence[str], prefix: str) -> dict[str, float]:
    logits = [(_digest(conversation, prefix, c) % 1000) / 250.0 for c in choices]
    z = math.log(sum(math.exp(x) for x in logits) + 1.0)  # +1: mass on tokens outside the choices
    return {c: x - z for c, x in zip(choices, logits)}


def _default_response_logprobs(conversation: Conversation, reply: str) -> list[float]:
    words = reply.split() + ["<end>"]
    return [-((_digest(conversation, w, k) % 400) + 1) / 100.0 for k, w in enumerate(words)]


def _completion(text: str, finish: str, want_logprobs: bool) -> Completion:
    words = text.split()
    ids = [_digest(w) % FAKE_VOCAB for w in words]
    lps = [-((_digest(w, k) % 400) + 1) / 100.0 for k, w in enumerate(words)] if want_logprobs else None
    return Completion(text=text, num_tokens=len(words), finish_reason=finish, token_ids=ids, logprobs=lps)


class FakeBackend:
    def __init__(self, config: BackendConfig | None = None, reply_fn: ReplyFn | None = None,
                 logprob_fn: LogprobFn | None = None, response_fn: ResponseFn | None = None) -> None:
        self.model_id = f"fake:{(config or BackendConfig()).model}"
        self.reply_fn = reply_fn or _default_reply
        self.logprob_fn = logprob_fn or _default_logprobs
        self.response_fn = response_fn or _default_response_logprobs
        self.calls = 0

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams,
             seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        self.calls += 1
        out = []
        for i, conv in enumerate(conversations):
            if seeds is not None:
                params = dataclasses.replace(params, seed=seeds[i])
            prompt_tokens = sum(len(m["content"].split()) for m in conv)
            comps = []
            for k in range(params.n):
                text = self.reply_fn(conv, k, params)
                ntok = len(text.split())
                finish = "stop"
                if ntok > params.max_tokens:
                    text, ntok, finish = " ".join(text.split()[: params.max_tokens]), params.max_tokens, "length"
                comps.append(_completion(text, finish, params.logprobs))
            out.append(Generation(completions=comps, prompt_tokens=prompt_tokens))
        return out

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        self.calls += 1
        return [self.logprob_fn(conv, choices, assistant_prefix) for conv in conversations]

    def response_logprobs(self, conversations: Sequence[Conversation], responses: Sequence[str],
                          progress: bool = True) -> list[list[float]]:
        if len(responses) != len(conversations):
            raise ValueError(f"{len(responses)} responses for {len(conversations)} conversations")
        self.calls += 1
        return [self.response_fn(c, r) for c, r in zip(conversations, responses)]

    def close(self) -> None:
        pass
