"""likelihood (GPTScore, Fu et al. 2023, arXiv 2302.04166): the response's likelihood under the judge.

One prefill per candidate; with the instruction chat c rendered from the rubric (the template is
the user message; the rubric's ``system`` text, if any, the system message, and no `DATA_NOTE`:
the judge reads no data, it scores the response as its own reply, so ``prompt`` and
``conversation`` are plain text, not fenced) and the response's tokens y_1..y_T (its end-of-turn
marker included, `rlaif.backends.turns`), the length-normalised log-likelihood is
m = (1/T) sum_t log p(y_t | c, y_<t). The score is exp(m) in (0, 1], the per-token geometric-mean
probability. With ``contrast`` (a PMI variant) the same mean m0 is taken under a neutral chat c0
(``contrast_template`` rendered with the same variables, or an empty user message) and the score
is sigmoid(m - m0): 0.5 where the instruction changes nothing, above where it makes the response
likelier per token. Every candidate of an item is scored after the same instruction (principles
are sampled per item), so the scores compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rlaif.backends.base import Backend, Conversation
from rlaif.judging.items import JudgeItem, Request
from rlaif.judging.methods.base import JudgeMethod, Problem, request_title
from rlaif.judging.preview import scored_text
from rlaif.judging.templates import conversation_text, last_user_message
from rlaif.judging.verdicts import likelihood_score

if TYPE_CHECKING:
    from rlaif.judging.rubrics import Rubric

CONTRAST_KEYS = ("contrast", "contrast_template")


class LikelihoodMethod(JudgeMethod):
    name = "likelihood"
    scores_reply = True
    view = "likelihood"

    def semantic_errors(self, data: dict[str, Any], base: Path | None) -> list[Problem]:
        out: list[Problem] = []
        if "scale" in data:
            out.append((("scale",), "likelihood rubrics have no scale (scores are in [0, 1])"))
        if "contrast_template" in data and not data.get("contrast"):
            out.append((("contrast_template",), "contrast_template without contrast: true"))
        if "assistant_prefix" in data:
            out.append((("assistant_prefix",), "assistant_prefix applies to logprob and pairwise methods"))
        return out

    def foreign_key_errors(self, data: dict[str, Any], method: str) -> list[Problem]:
        return [((key,), f"'{key}' applies to the likelihood method only (method is {method})")
                for key in CONTRAST_KEYS if key in data]

    def variables(self, rubric: Rubric, messages: list[dict[str, str]], **kwargs: Any) -> dict[str, Any]:
        """Conditioning text, not data shown to a judge: ``prompt`` and ``conversation`` unfenced."""
        return {**super().variables(rubric, messages, **kwargs),
                "prompt": last_user_message(messages), "conversation": conversation_text(messages)}

    def conversation(self, rubric: Rubric, messages: list[dict[str, str]], **kwargs: Any) -> Conversation:
        """The conditioning chat the response is scored after: the rubric's system text (if any) and
        the rendered instruction; no data note."""
        user = self.render(rubric, self.variables(rubric, messages, **kwargs))
        system = [{"role": "system", "content": rubric.system.strip()}] if rubric.system.strip() else []
        return system + [{"role": "user", "content": user}]

    def contrast_conversation(self, rubric: Rubric, messages: list[dict[str, str]], **kwargs: Any) -> Conversation:
        """The neutral chat (no system text; ``contrast_template`` rendered with the same variables, or
        an empty user message) the response's likelihood is compared to."""
        user = self.render(rubric, self.variables(rubric, messages, **kwargs), rubric.contrast_template) \
            if rubric.contrast_template else ""
        return [{"role": "user", "content": user}]

    def requests(self, rubric: Rubric, item: JudgeItem, item_index: int, seed: int) -> list[Request]:
        principles = rubric.select_principles(item.id, seed)  # one instruction for all the item's candidates
        conversation = self.conversation(rubric, item.messages, principles=principles)
        neutral = self.contrast_conversation(rubric, item.messages, principles=principles) if rubric.contrast else None
        return [Request(item_index, index, None, conversation, response, neutral)
                for index, response in enumerate(item.responses)]

    def dry_run(self, rubric: Rubric, messages: list[dict[str, str]], response_a: str, response_b: str) -> None:
        self.conversation(rubric, messages, principles=rubric.principles)
        if rubric.contrast:
            self.contrast_conversation(rubric, messages, principles=rubric.principles)

    def score(self, backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], requests: list[Request],
              rows: list[dict[str, Any]], *, seed: int, verdict_retries: int, progress: bool) -> None:
        assert backend is not None
        conversations = [r.conversation for r in requests] + [r.neutral for r in requests if r.neutral is not None]
        replies = [r.reply for r in requests] + [r.reply for r in requests if r.neutral is not None]
        logprobs = backend.response_logprobs(conversations, replies, progress=progress)  # one call, every prefill
        neutral = logprobs[len(requests):] if rubric.contrast else [None] * len(requests)
        for request, reply_logprobs, neutral_logprobs in zip(requests, logprobs, neutral):
            row = rows[request.item]
            try:
                score, details = likelihood_score(reply_logprobs, neutral_logprobs)
            except ValueError as e:
                row["details"][request.i] = {"error": str(e)}
                row["failures"] += 1
            else:
                row["scores"][request.i] = score
                row["details"][request.i] = details

    def judge_inputs(self, backend: Any, rubric: Rubric, requests: list[Request]) -> list[tuple[str, str]]:
        """The exact scored inputs, the reply tokens marked (and the neutral chat's, with contrast)."""
        inputs = []
        for request in requests:
            title = request_title(request)
            inputs.append((title, scored_text(backend, request.conversation, request.reply)))
            if request.neutral is not None:
                inputs.append((f"{title}, neutral (contrast)", scored_text(backend, request.neutral, request.reply)))
        return inputs

    def preview_lines(self, row: dict[str, Any]) -> list[str]:
        out = []
        for index, (score, details) in enumerate(zip(row["scores"], row["details"])):
            if score is None:
                out.append(f"response {index}: failed: {details.get('error')}")
                continue
            line = (f"response {index}: score {score:.4f}  mean log-prob {details['mean_logprob']:.3f} over "
                    f"{details['tokens']} tokens")
            if "pmi" in details:
                line += (f"; neutral {details['mean_logprob_neutral']:.3f}, PMI {details['pmi']:+.3f} per token; "
                         f"score = sigmoid(PMI)")
            else:
                line += " (score = exp(mean log-prob), the per-token geometric-mean probability)"
            out.append(line)
        return out
