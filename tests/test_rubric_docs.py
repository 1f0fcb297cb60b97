"""docs/rubrics.md shows the template-variable table rendered from the code's one table."""

from __future__ import annotations

from pathlib import Path

from rlaif.judging.variables import variables_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "rubrics.md"
START, END = "<!-- template-variables:start -->", "<!-- template-variables:end -->"


def test_docs_variable_table_is_the_rendered_code_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC} lost its {START} ... {END} markers"
    shown = text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert shown == variables_markdown(), (
        f"the table between the markers in {DOC} differs from rlaif.judging.variables; paste this between them:\n"
        + variables_markdown())
