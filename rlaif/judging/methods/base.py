"""What every judge method has, and the defaults the methods with a judge model share.

A method answers, for one rubric: which template variables it provides (`variables`, as listed
in `rlaif.judging.variables`), the judge chat (`conversation`), the requests for an item
(`requests`), how replies become scores (`score`), the preview text (`judge_inputs`,
`preview_lines`), and its part of validation and lint (`semantic_errors`, `foreign_key_errors`,
`template_warnings`, `lint_warnings`, `dry_run`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rlaif.backends.base import Backend, Conversation
from rlaif.judging.items import JudgeItem, Request
from rlaif.judging.preview import chat_text
from rlaif.judging.templates import DATA_NOTE, conversation_text, fence, last_user_message, render

if TYPE_CHECKING:
    from rlaif.judging.rubrics import Rubric

Problem = tuple[tuple[Any, ...], str]  # (key path in the rubric YAML, message)


class JudgeMethod:
    """One judge method; the subclasses override what differs."""

    name = ""
    needs_judge = True  # False: runs without a judge engine
    templated = True  # the rubric has a template
    pairwise = False  # judges ordered pairs of responses, not one response at a time
    scores_reply = False  # the response is the judge's scored reply, not text in its prompt
    default_prefix = ""  # assistant_prefix when the rubric gives none
    choices_key = ("assistant_prefix",)  # the YAML key a choice-token problem points at
    required_variables: tuple[str, ...] = ()  # a template must use these
    view = ""  # how the studio draws a verdict row

    def facts(self) -> dict[str, Any]:
        """What the studio page needs to know about the method (served in /api/state)."""
        return {"name": self.name, "needs_judge": self.needs_judge, "pairwise": self.pairwise, "view": self.view}

    # -- the rubric YAML ----------------------------------------------------------------------
    def semantic_errors(self, data: dict[str, Any], base: Path | None) -> list[Problem]:
        """Checks of this method's keys that the JSON schema cannot express."""
        return []

    def foreign_key_errors(self, data: dict[str, Any], method: str) -> list[Problem]:
        """This method's own keys found in a rubric of another ``method``."""
        return []

    # -- the judge's input --------------------------------------------------------------------
    def choices(self, rubric: Rubric) -> list[str]:
        """Strings whose next-token log-probs the judge reads after the assistant prefix ([]: none)."""
        return []

    def variables(self, rubric: Rubric, messages: list[dict[str, str]], *, response: str | None = None,
                  response_a: str | None = None, response_b: str | None = None,
                  principles: list[str] | None = None) -> dict[str, Any]:
        """The variables a template sees (see `rlaif.judging.variables`): the ones every method has."""
        return {"prompt": fence("PROMPT", last_user_message(messages)),
                "conversation": fence("CONVERSATION", conversation_text(messages)),
                "principles": list(rubric.principles if principles is None else principles),
                "description": rubric.description}

    def render(self, rubric: Rubric, variables: dict[str, Any], template: str | None = None) -> str:
        """The rubric's template (or ``template``) rendered; errors name the template's file and line."""
        return render(rubric.template if template is None else template, variables, rubric.template_path,
                      rubric.template_line)

    def conversation(self, rubric: Rubric, messages: list[dict[str, str]], **kwargs: Any) -> Conversation:
        """The chat the judge sees: system (`DATA_NOTE` + the rubric's system text) and the template."""
        system = DATA_NOTE + ("\n\n" + rubric.system.strip() if rubric.system.strip() else "")
        user = self.render(rubric, self.variables(rubric, messages, **kwargs))
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def requests(self, rubric: Rubric, item: JudgeItem, item_index: int, seed: int) -> list[Request]:
        """The judge conversations for one item, in the order `score` reads them."""
        raise NotImplementedError

    def dry_run(self, rubric: Rubric, messages: list[dict[str, str]], response_a: str, response_b: str) -> None:
        """Build every judge input kind once with all principles (lint: a RubricError if one fails)."""
        self.conversation(rubric, messages, response=response_a, principles=rubric.principles)

    # -- scoring ------------------------------------------------------------------------------
    def score(self, backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], requests: list[Request],
              rows: list[dict[str, Any]], *, seed: int, verdict_retries: int, progress: bool) -> None:
        """Fill ``rows`` (scores, details, comparisons, failures) from the judge's replies."""
        raise NotImplementedError

    # -- preview and lint ---------------------------------------------------------------------
    def judge_inputs(self, backend: Any, rubric: Rubric, requests: list[Request]) -> list[tuple[str, str]]:
        """(title, exact judge input) for each request."""
        return [(request_title(r), chat_text(backend, r.conversation, rubric.assistant_prefix)) for r in requests]

    def preview_lines(self, row: dict[str, Any]) -> list[str]:
        """A judgement row as text lines, as `rlaif rubric preview` prints it."""
        raise NotImplementedError

    def template_warnings(self, used: set[str]) -> list[str]:
        """Warnings about variables a good template of this method shows (``used``: the ones it does)."""
        return []

    def lint_warnings(self, data: dict[str, Any]) -> list[Problem]:
        """Warnings about the rubric's keys (the rubric passed validation)."""
        return []


def scale_points(scale: Any) -> list[int] | None:
    """The points of a YAML scale whose keys are all integers (as strings), in file order; else None."""
    if isinstance(scale, dict) and scale and all(re.fullmatch(r"-?\d+", str(key)) for key in scale):
        return [int(key) for key in scale]
    return None


def request_title(request: Request) -> str:
    """How a preview names a request: the response, or the ordered pair."""
    if request.j is None:
        return f"response {request.i}"
    return f"A = response {request.i}, B = response {request.j}"


def probability_bar(probability: float, width: int = 30) -> str:
    return "#" * round(probability * width)


class ScaleMethod(JudgeMethod):
    """A method that scores one response at a time on the rubric's integer scale (logprob, verdict)."""

    required_variables = ("response",)

    def variables(self, rubric: Rubric, messages: list[dict[str, str]], *, response: str | None = None,
                  response_a: str | None = None, response_b: str | None = None,
                  principles: list[str] | None = None) -> dict[str, Any]:
        out = super().variables(rubric, messages, principles=principles)
        out["response"] = fence("RESPONSE", response or "")
        out["scale"] = "\n".join(f"{point}: {label}" for point, label in rubric.scale.items())
        out["scale_min"], out["scale_max"] = min(rubric.scale), max(rubric.scale)
        return out

    def requests(self, rubric: Rubric, item: JudgeItem, item_index: int, seed: int) -> list[Request]:
        out = []
        for index, response in enumerate(item.responses):
            principles = rubric.select_principles(f"{item.id}:{index}", seed)
            conversation = self.conversation(rubric, item.messages, response=response, principles=principles)
            out.append(Request(item_index, index, None, conversation))
        return out

    def template_warnings(self, used: set[str]) -> list[str]:
        return [] if "scale" in used else ["template never shows the 'scale' labels"]
