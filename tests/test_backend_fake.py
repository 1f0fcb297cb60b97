"""The fake engine's token ids and log-probs: deterministic, one per word, only on request."""

from __future__ import annotations

from rlaif.backends.base import SamplingParams
from rlaif.backends.fake import FAKE_VOCAB, FakeBackend

CONV = [{"role": "user", "content": "Hello there"}]


def test_fake_token_ids_and_logprobs_are_deterministic() -> None:
    params = SamplingParams(n=3, max_tokens=5, seed=2, logprobs=True)
    a = FakeBackend().chat([CONV], params, progress=False)[0].completions
    b = FakeBackend().chat([CONV], params, progress=False)[0].completions
    assert [(c.token_ids, c.logprobs) for c in a] == [(c.token_ids, c.logprobs) for c in b]
    for c in a:
        assert len(c.token_ids) == len(c.logprobs) == c.num_tokens == len(c.text.split()) <= 5
        assert all(0 <= t < FAKE_VOCAB for t in c.token_ids) and all(lp < 0 for lp in c.logprobs)
        words = c.text.split()  # the same word is the same id
        assert len({(w, t) for w, t in zip(words, c.token_ids)}) == len(set(words))
    plain = FakeBackend().chat([CONV], SamplingParams(n=3, max_tokens=5, seed=2), progress=False)[0].completions
    assert [c.text for c in plain] == [c.text for c in a] and all(c.logprobs is None for c in plain)


def test_fake_response_logprobs_one_per_word_plus_end_of_turn() -> None:
    eng = FakeBackend()
    got = eng.response_logprobs([CONV, CONV], ["one two three", ""], progress=False)
    assert [len(g) for g in got] == [4, 1] and all(lp < 0 for g in got for lp in g)
    assert got == FakeBackend().response_logprobs([CONV, CONV], ["one two three", ""], progress=False)
    assert got[0] != eng.response_logprobs([[{"role": "user", "content": "Other"}]], ["one two three"])[0]
