"""The judge's prompts against the judge's context, checked before the judge engine loads.

Per item and rubric the longest judge prompt is built as the judge will see it: the rubric's
template rendered with the prompt and the longest candidate (pairwise: the two longest, in
candidate order), through the judge's chat template plus the rubric's assistant prefix, and
counted with the judge's tokenizer. It must leave room for at least one token of reply, as
`rlaif.dataset.generate.check_prompt_lengths` asks of generation prompts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from rlaif.backends.choices import render_prompt
from rlaif.dataset.generate import context_limit
from rlaif.errors import UserError
from rlaif.judging.rubrics import Rubric, judge_conversation


def _longest(responses: Sequence[str], counts: Sequence[int], how_many: int) -> list[int]:
    """Indices of the ``how_many`` longest responses (by tokens; the first among equals), in candidate order."""
    return sorted(sorted(range(len(responses)), key=lambda i: (-counts[i], i))[:how_many])


def longest_judge_conversation(rubric: Rubric, item: Mapping[str, Any], counts: Sequence[int],
                               seed: int) -> list[dict[str, str]] | None:
    """The judge chat for the item's longest candidate(s); None where the rubric sends nothing."""
    responses = item["responses"]
    if not rubric.needs_judge:  # rules: no judge prompt
        return None
    if rubric.judge_method.pairwise:
        if len(responses) < 2:
            return None
        i, j = _longest(responses, counts, 2)
        principles = rubric.select_principles(f"{item['id']}:{i}-{j}", seed)
        return judge_conversation(rubric, item["messages"], response_a=responses[i], response_b=responses[j],
                                  principles=principles)
    if not responses:
        return None
    (i,) = _longest(responses, counts, 1)
    if rubric.method == "criteria":  # per-prompt criteria (`rlaif.judging.criteria`)
        from rlaif.judging.criteria import criteria_conversation, parse_criteria

        criteria = parse_criteria((item.get("metadata") or {}).get(rubric.field), f"item '{item['id']}'", rubric.field)
        return criteria_conversation(item["messages"], responses[i], criteria)
    principles = rubric.select_principles(f"{item['id']}:{i}", seed)
    return judge_conversation(rubric, item["messages"], response=responses[i], principles=principles)


def judge_prompt_tokens(tokenizer: Any, rubric: Rubric, item: Mapping[str, Any], seed: int) -> int | None:
    """Tokens of the item's longest judge prompt for ``rubric`` (None where the rubric sends nothing)."""
    responses = list(item["responses"])
    counts = [len(ids) for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]] if responses else []
    conversation = longest_judge_conversation(rubric, item, counts, seed)
    if conversation is None:
        return None
    if rubric.judge_method.scores_reply:  # likelihood: the scored input is the instruction plus the whole response
        from rlaif.backends.turns import reply_token_ids

        prompt, reply = reply_token_ids(tokenizer, conversation, responses[_longest(responses, counts, 1)[0]])
        return len(prompt) + len(reply)
    prompt = render_prompt(tokenizer, conversation, rubric.assistant_prefix)  # "" where a method has none (verdict)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def check_judge_prompt_lengths(rubrics: Sequence[Rubric], candidates: Sequence[Mapping[str, Any]], model_dir: str,
                               max_model_len: int | None, seed: int,
                               sources: Mapping[str, str] | None = None) -> None:
    """UserError naming the rubric and the item (and its file:line from ``sources``, by id) for the
    first judge prompt that does not fit the judge's context."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    limit = context_limit(model_dir, max_model_len)
    for item in candidates:
        for rubric in rubrics:
            tokens = judge_prompt_tokens(tokenizer, rubric, item, seed)
            if tokens is not None and tokens + 1 > limit:
                where = f"{sources[item['id']]}: " if sources and item["id"] in sources else ""
                longest = "two longest candidates" if rubric.judge_method.pairwise else "longest candidate"
                raise UserError(f"{where}item '{item['id']}': the judge prompt of rubric '{rubric.name}' with its "
                                f"{longest} is {tokens} tokens, longer than the judge's context ({limit} tokens; raise "
                                "judge.max_model_len if the model allows more)")
