"""The template variables of a rubric: the one table of name -> (methods, description).

`rlaif rubric lint` checks templates against it, each judge method provides the variables it
lists (tests/test_judge_methods.py checks that they agree), and `variables_markdown` renders the
table that docs/rubrics.md shows (tests/test_rubric_docs.py checks that they agree).
"""

from __future__ import annotations

TEMPLATED = ("logprob", "verdict", "pairwise", "likelihood")  # the methods with a template
SCORED = ("logprob", "verdict")  # the methods that score one response on a scale

TEMPLATE_VARIABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "prompt": (TEMPLATED, "the user's last message, fenced as data (likelihood: the plain text)"),
    "conversation": (TEMPLATED, "all prompt messages as 'Role: text', fenced (likelihood: plain)"),
    "response": (SCORED, "the candidate response, fenced as data"),
    "response_a": (("pairwise",), "the response shown first, fenced as data"),
    "response_b": (("pairwise",), "the response shown second, fenced as data"),
    "scale": (SCORED, "one line per point: '5: label'"),
    "scale_min": (SCORED, "lowest score"),
    "scale_max": (SCORED, "highest score"),
    "principles": (TEMPLATED, "list of principles (all or the seeded sample)"),
    "verdict_format": (("verdict",), "the verdict JSON schema as JSON text"),
    "description": (TEMPLATED, "the rubric's description"),
}


def variables_of(method: str) -> set[str]:
    """The variable names a template of ``method`` may use."""
    return {name for name, (methods, _) in TEMPLATE_VARIABLES.items() if method in methods}


def variables_markdown() -> str:
    """The table as Markdown (variable, methods, value), one row per variable."""
    rows = ["| variable | methods | value |", "|---|---|---|"]
    for name, (methods, description) in TEMPLATE_VARIABLES.items():
        shown = "all templated" if methods == TEMPLATED else ", ".join(methods)
        rows.append(f"| `{name}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"
