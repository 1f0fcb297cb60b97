"""Pair building: weighted normalised scores, None and ties, pairwise filters, split by prompt."""

import pytest

from rlaif.dataset.options import BuildOptions
from rlaif.dataset.noise import judge_noise, rubric_key
from rlaif.dataset.pairs import build_pairs, combined_scores, split_by_prompt, truncation_flags
from rlaif.rewards.base import normalise
from rlaif.io.records import PAIR_SCHEMA, validate


def cand(pid, responses):
    return {"id": pid, "messages": [{"role": "user", "content": f"q {pid}"}], "responses": responses,
            "num_tokens": [1] * len(responses), "finish_reasons": ["stop"] * len(responses), "policy": "pol",
            "seed": 1, "metadata": {}}


def judg(pid, rubric, scores, scale=(1, 5), method="logprob", comparisons=()):
    return {"id": pid, "rubric": rubric, "method": method, "judge": "jm", "scale": list(scale), "scores": scores,
            "details": [{} for _ in scores], "comparisons": list(comparisons), "failures": 0}


def test_normalise_and_weighted_mean():
    assert normalise(3, [1, 5]) == 0.5 and normalise(None, [1, 5]) is None and normalise(0.25, [0, 1]) == 0.25
    rows = {"a": judg("x", "a", [5, 1, 3]), "b": judg("x", "b", [0.0, 1.0, None], scale=(0, 1))}
    s = combined_scores(rows, {"a": 3.0, "b": 1.0})
    assert s[0] == pytest.approx((3 * 1.0 + 1 * 0.0) / 4)
    assert s[1] == pytest.approx((3 * 0.0 + 1 * 1.0) / 4)
    assert s[2] is None  # a failed score on any rubric: no combined score


def test_best_vs_worst_picks_extremes_and_validates():
    pairs, stats = build_pairs([cand("x", ["r0", "r1", "r2", "r3"])], [judg("x", "h", [2, 5, 1, 3])], ["h"],
                               BuildOptions())
    assert len(pairs) == 1
    p = pairs[0]
    assert p["chosen"][0]["content"] == "r1" and p["rejected"][0]["content"] == "r2"
    assert p["score_chosen"] == 1.0 and p["score_rejected"] == 0.0 and p["margin"] == 1.0
    assert p["rubric"] == "h" and p["judge"] == "jm" and p["policy"] == "pol"
    validate(p, PAIR_SCHEMA)
    assert stats["pairs"] == 1 and stats["prompts_with_pairs"] == 1


def test_none_scores_never_ranked_and_ties_dropped():
    """distilabel's trap: max/min over [None, 3, None, 3] would pair equal (or None) responses."""
    cands = [cand("tie", ["a", "b", "c", "d"]), cand("none", ["a", "b"]), cand("ok", ["a", "b", "c"])]
    judgements = [judg("tie", "h", [None, 3, None, 3]), judg("none", "h", [None, 4]),
                  judg("ok", "h", [None, 2, 4])]
    pairs, stats = build_pairs(cands, judgements, ["h"], BuildOptions())
    assert [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("ok", "c", "b")]
    assert stats["prompts_all_tied"] == 1 and stats["prompts_too_few_scored"] == 1
    assert stats["responses_failed"] == 4


def test_best_vs_worst_with_tied_best_is_still_a_pair():
    pairs, _ = build_pairs([cand("x", ["a", "b", "c"])], [judg("x", "h", [5, 5, 1])], ["h"], BuildOptions())
    assert pairs[0]["chosen"][0]["content"] == "a" and pairs[0]["rejected"][0]["content"] == "c"


def test_all_pairs_margin_and_ties():
    pairs, stats = build_pairs([cand("x", ["a", "b", "c", "d"])], [judg("x", "h", [1, 2, 2, 5])], ["h"],
                               BuildOptions(strategy="all-pairs", min_margin=0.3))
    got = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    # normalised scores 0, .25, .25, 1: margins .25 (a-b, a-c) are below .3, b-c is a tie
    assert got == {("d", "a"), ("d", "b"), ("d", "c")}
    assert stats["pairs_tied"] == 1 and stats["pairs_below_margin"] == 2


def test_identical_texts_are_not_a_pair():
    pairs, stats = build_pairs([cand("x", ["same", "same"])], [judg("x", "h", [1, 5])], ["h"], BuildOptions())
    assert pairs == [] and stats["pairs_identical_text"] == 1


def _pairwise(pid, scores, comps):
    return judg(pid, "pw", scores, scale=(0, 1), method="pairwise", comparisons=comps)


def test_pairwise_filters_consistency_and_confidence():
    cands = [cand("c", ["a", "b"]), cand("i", ["a", "b"]), cand("l", ["a", "b"]), cand("r", ["a", "b"])]
    judgements = [
        _pairwise("c", [0.8, 0.2], [{"i": 0, "j": 1, "p": 0.8, "consistent": True}]),
        _pairwise("i", [0.8, 0.2], [{"i": 0, "j": 1, "p": 0.8, "consistent": False}]),
        _pairwise("l", [0.55, 0.45], [{"i": 0, "j": 1, "p": 0.55, "consistent": True}]),
        # stored as (1, 0): P(b better) = 0.1, so P(a better) = 0.9
        _pairwise("r", [0.9, 0.1], [{"i": 1, "j": 0, "p": 0.1, "consistent": True}]),
    ]
    pairs, stats = build_pairs(cands, judgements, ["pw"], BuildOptions())
    assert [p["id"] for p in pairs] == ["c", "r"]
    assert stats["pairs_position_inconsistent"] == 1 and stats["pairs_low_confidence"] == 1
    loose, _ = build_pairs(cands, judgements, ["pw"],
                           BuildOptions(require_position_consistent=False, pairwise_min_confidence=0.5))
    assert [p["id"] for p in loose] == ["c", "i", "l", "r"]


def test_pairwise_combined_with_pointwise_rubric():
    """Combined scores pick the pair; the pairwise comparison of that pair must agree."""
    cands = [cand("x", ["a", "b"])]
    judgements = [judg("x", "h", [5, 1]), _pairwise("x", [0.3, 0.7], [{"i": 0, "j": 1, "p": 0.3, "consistent": True}])]
    pairs, stats = build_pairs(cands, judgements, ["h", "pw"], BuildOptions(rubric_weights={"h": 3}))
    assert pairs == [] and stats["pairs_low_confidence"] == 1  # h prefers a, the judge's comparison prefers b


def test_missing_judgement_is_counted():
    pairs, stats = build_pairs([cand("x", ["a", "b"])], [judg("x", "h", [1, 5])], ["h", "other"], BuildOptions())
    assert pairs == [] and stats["prompts_missing_judgement"] == 1


def test_split_by_prompt_is_seeded_and_disjoint():
    pairs = [{"id": f"p{i}", "k": k} for i in range(20) for k in range(3)]
    train, test = split_by_prompt(pairs, 0.25, seed=1)
    assert {p["id"] for p in train}.isdisjoint({p["id"] for p in test})
    assert len({p["id"] for p in test}) == 5 and len(train) + len(test) == 60
    assert split_by_prompt(pairs, 0.25, seed=1) == (train, test)
    assert {p["id"] for p in split_by_prompt(pairs, 0.25, seed=2)[1]} != {p["id"] for p in test}
    small_train, small_test = split_by_prompt(pairs[:6], 0.1, seed=0)  # 2 prompts: still one in test
    assert len({p["id"] for p in small_test}) == 1 and len({p["id"] for p in small_train}) == 1
    assert split_by_prompt(pairs, 0.0, seed=0) == (pairs, [])


# ----------------------------------------------------------------------------- truncated candidates
def cut(pid, responses, finish):
    """Candidates with given finish reasons ("L": cut off at max_tokens, "S": stopped, "?": unknown)."""
    c = cand(pid, responses)
    c["finish_reasons"] = [{"L": "length", "S": "stop", "?": "unknown"}[f] for f in finish]
    return c


def texts(pairs):
    return [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]


def test_reject_only_never_chooses_a_cut_off_answer_but_rejects_one():
    cands = [cut("top_cut", ["a", "b", "c"], "LSS"), cut("worst_cut", ["a", "b"], "SL"),
             cut("only_cut_wins", ["a", "b"], "LS")]
    judgements = [judg("top_cut", "h", [5, 3, 1]), judg("worst_cut", "h", [5, 1]), judg("only_cut_wins", "h", [5, 1])]
    pairs, stats = build_pairs(cands, judgements, ["h"], BuildOptions(truncated="reject_only"))
    # top_cut: the best complete answer (b) is chosen over the worst (c); worst_cut: complete a over cut-off b
    assert texts(pairs) == [("b", "c"), ("a", "b")]
    assert pairs[0]["margin"] == 0.5  # the margin is the pair's own, not the cut-off top's
    assert stats["prompts_best_truncated"] == 2 and stats["prompts_no_complete_chosen"] == 1
    assert stats["responses_truncated"] == 3 and stats["kept_rejected_truncated"] == 1
    assert stats["kept_chosen_truncated"] == 0 and stats["responses"] == 7
    tied, stats = build_pairs([cut("tie", ["a", "b", "c"], "LSS")], [judg("tie", "h", [5, 5, 1])], ["h"],
                              BuildOptions())
    assert texts(tied) == [("b", "c")] and "prompts_best_truncated" not in stats  # b is as good as the cut-off a


def test_keep_ranks_cut_off_answers_like_any_other():
    cands = [cut("x", ["a", "b", "c"], "LSS")]
    pairs, stats = build_pairs(cands, [judg("x", "h", [5, 3, 1])], ["h"], BuildOptions(truncated="keep"))
    assert texts(pairs) == [("a", "c")] and stats["kept_chosen_truncated"] == 1
    assert "prompts_best_truncated" not in stats


def test_drop_never_pairs_a_cut_off_answer():
    cands = [cut("x", ["a", "b", "c", "d"], "LSLS"), cut("y", ["a", "b", "c"], "LSL")]
    judgements = [judg("x", "h", [5, 3, 1, 2]), judg("y", "h", [5, 3, 1])]
    pairs, stats = build_pairs(cands, judgements, ["h"], BuildOptions(truncated="drop"))
    assert texts(pairs) == [("b", "d")]
    assert stats["responses_truncated_dropped"] == 4 and stats["prompts_too_few_scored"] == 1
    assert stats["kept_chosen_truncated"] == 0 and stats["kept_rejected_truncated"] == 0


def test_all_pairs_reject_only_drops_pairs_with_a_cut_off_chosen():
    cands = [cut("x", ["a", "b", "c"], "LSS")]
    judgements = [judg("x", "h", [3, 5, 1])]
    pairs, stats = build_pairs(cands, judgements, ["h"], BuildOptions(strategy="all-pairs", truncated="reject_only"))
    assert sorted(texts(pairs)) == [("b", "a"), ("b", "c")]  # (a, c) would choose the cut-off a
    assert stats["pairs_chosen_truncated"] == 1 and stats["kept_rejected_truncated"] == 1
    kept, _ = build_pairs(cands, judgements, ["h"], BuildOptions(strategy="all-pairs", truncated="keep"))
    assert len(kept) == 3


def test_unknown_finish_reasons_count_as_complete():
    """User candidates files carry "unknown"; an old row without finish reasons reads the same."""
    old = cand("old", ["a", "b"])
    del old["finish_reasons"]
    cands = [cut("user", ["a", "b"], "??"), old]
    judgements = [judg("user", "h", [5, 1]), judg("old", "h", [1, 5])]
    for mode in ("reject_only", "drop", "keep"):
        pairs, stats = build_pairs(cands, judgements, ["h"], BuildOptions(truncated=mode))
        assert texts(pairs) == [("a", "b"), ("b", "a")]
        assert stats["responses_finish_unknown"] == 4 and stats["responses_truncated"] == 0


def test_truncation_flags():
    assert truncation_flags(cut("x", ["a", "b", "c"], "LS?")) == [True, False, None]
    other = cand("x", ["a", "b"])
    other["finish_reasons"] = ["length"]  # shorter than responses: the rest unknown
    assert truncation_flags(other) == [True, None]


def test_judge_noise_from_option_measurement_or_unknown(monkeypatch):
    import rlaif.dataset.noise as noise_mod

    monkeypatch.setitem(noise_mod.EMBEDDED_JUDGE_NOISE_MARGINS, "h:logprob", 0.07)
    key = rubric_key([judg("x", "h", [1])], ["h"])
    assert key == "h:logprob"
    assert rubric_key([judg("x", "b", [1], method="rules"), judg("x", "a", [1])], ["b", "a"]) == "a:logprob+b:rules"
    monkeypatch.setitem(noise_mod.EMBEDDED_JUDGE_NOISE_MARGINS, "a:logprob+b:rules", 0.05)
    assert judge_noise(BuildOptions(), "vllm:smollm2-135m", "a:logprob+b:rules")[0] == 0.05
    assert judge_noise(BuildOptions(rubric_weights={"a": 2.0}), "vllm:smollm2-135m", "a:logprob+b:rules")[0] is None
    assert judge_noise(BuildOptions(noise_margin=0.2), "vllm:smollm2-135m", key)[0] == 0.2
    value, source = judge_noise(BuildOptions(), "vllm:smollm2-135m", key)
    assert value == 0.07 and "measured" in source
    value, source = judge_noise(BuildOptions(), "openai:gpt-x", key)
    assert value is None and "noise_margin" in source
    assert judge_noise(BuildOptions(), "vllm:smollm2-135m", "h:logprob+other:logprob")[0] is None
    assert judge_noise(BuildOptions(), "vllm:smollm2-135m", "h:likelihood")[0] is None  # another method: unknown
