"""The judge methods as one table: each class provides the variables the variable table lists,
the rubric schema names exactly these methods, the studio page draws every method's view, and a
rubric carries its method object."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlaif.judging.methods import METHODS
from rlaif.judging.rubrics import SHIPPED_RUBRICS, load_rubric, rubric_from_file
from rlaif.judging.templates import RubricError
from rlaif.judging.validation import rubric_schema
from rlaif.judging.variables import TEMPLATE_VARIABLES, variables_of

USER = [{"role": "user", "content": "Name a prime number."}]
STUDIO_JS = Path(__file__).resolve().parents[1] / "rlaif" / "studio" / "static" / "studio.js"


def test_the_schema_names_exactly_the_methods() -> None:
    assert rubric_schema()["properties"]["method"]["enum"] == list(METHODS)


@pytest.mark.parametrize("name", [name for name, method in METHODS.items() if method.templated])
def test_each_method_provides_the_variables_the_table_lists(name: str) -> None:
    rubric = next(r for r in map(load_rubric, sorted(SHIPPED_RUBRICS.glob("*.yaml"))) if r.method == name)
    provided = METHODS[name].variables(rubric, USER, response="x", response_a="a", response_b="b")
    assert set(provided) == variables_of(name)
    assert set(METHODS[name].required_variables) <= variables_of(name)


def test_every_variable_belongs_to_a_templated_method() -> None:
    for name, (methods, _) in TEMPLATE_VARIABLES.items():
        assert methods and all(METHODS[m].templated for m in methods), name


def test_a_rubric_carries_its_method_object() -> None:
    for path in sorted(SHIPPED_RUBRICS.glob("*.yaml")):
        rubric = load_rubric(path)
        assert rubric.judge_method is METHODS[rubric.method]
        assert rubric.needs_judge == rubric.judge_method.needs_judge


def test_the_studio_page_draws_every_view_and_hard_codes_no_method() -> None:
    script = STUDIO_JS.read_text(encoding="utf-8")
    views = set(re.findall(r"^  (\w+): \(row, column\) =>", script, re.MULTILINE))
    assert {method.view for method in METHODS.values()} == views
    assert not re.search(r"method === \"", script)


def test_a_pairwise_rubric_has_no_scale(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ndescription: d\nmethod: pairwise\nscale: {1: a, 2: b}\n"
                    "template: '{{ response_a }} {{ response_b }}'\n", encoding="utf-8")
    with pytest.raises(RubricError, match=r"mine\.yaml:4: pairwise rubrics have no scale"):
        rubric_from_file(path)
