"""Issue 20 item 13: ``template_file`` and ``schema_file`` must resolve inside the rubric's folder
(``..``, absolute paths and symlinks out of it are refused in one line) unless
``RLAIF_TRUST_RUBRIC_PATHS=1``; the shipped rubrics keep working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.judging.rubrics import SHIPPED_RUBRICS, load_rubric
from rlaif.judging.templates import RubricError

TEMPLATE = "Secret template {{ prompt }} {{ response }}"
SCHEMA = {"type": "object"}


def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(rubric folder, a folder beside it holding a template and a schema the rubric must not read)."""
    rubrics, outside = tmp_path / "rubrics", tmp_path / "private"
    rubrics.mkdir()
    outside.mkdir()
    (outside / "t.jinja").write_text(TEMPLATE)
    (outside / "s.json").write_text(json.dumps(SCHEMA))
    return rubrics, outside


def templated(folder: Path, ref: str) -> Path:
    path = folder / "t.yaml"
    path.write_text(f"name: t\ndescription: d\nmethod: logprob\nscale: {{1: bad, 2: good}}\ntemplate_file: {ref}\n")
    return path


def rules(folder: Path, ref: str) -> Path:
    path = folder / "r.yaml"
    path.write_text(f"name: r\ndescription: d\nmethod: rules\nchecks:\n  - kind: json_schema\n    schema_file: {ref}\n")
    return path


def refs(tmp_path: Path, outside: Path, rubrics: Path, name: str) -> list[str]:
    """``..``, absolute, and a symlink inside the folder that leads out of it."""
    (rubrics / f"link_{name}").symlink_to(outside / name)
    return [f"../private/{name}", str(outside / name), f"link_{name}"]


@pytest.mark.parametrize("kind", ["template_file", "schema_file"])
def test_paths_outside_the_rubric_folder_are_refused(tmp_path: Path, kind: str,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rubrics, outside = folders(tmp_path)
    name, write = ("t.jinja", templated) if kind == "template_file" else ("s.json", rules)
    for ref in refs(tmp_path, outside, rubrics, name):
        path = write(rubrics, ref)
        with pytest.raises(RubricError, match=rf"^{path}:\d+: field '.*{kind}': {ref} is outside the rubric's folder"):
            load_rubric(path)
        assert main(["rubric", "lint", str(path)]) == 1
        out = capsys.readouterr().out
        assert f"{ref} is outside the rubric's folder" in out and len(out.splitlines()) == 1
        assert main(["rubric", "preview", str(path), "--prompt", "p", "--response", "r"]) == 2
        assert "outside the rubric's folder" in capsys.readouterr().err
        with monkeypatch.context() as trusted:  # the documented way to allow it
            trusted.setenv("RLAIF_TRUST_RUBRIC_PATHS", "1")
            rubric = load_rubric(path)
            assert rubric.template == TEMPLATE if kind == "template_file" else rubric.checks[0].schema == SCHEMA


def test_paths_inside_the_folder_and_shipped_rubrics_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rubrics, _ = folders(tmp_path)
    (rubrics / "sub").mkdir()
    (rubrics / "sub" / "t.jinja").write_text(TEMPLATE)
    (rubrics / "sub" / "s.json").write_text(json.dumps(SCHEMA))
    (rubrics / "inner.jinja").symlink_to(rubrics / "sub" / "t.jinja")  # a link that stays inside is fine
    assert load_rubric(templated(rubrics, "sub/t.jinja")).template == TEMPLATE
    assert load_rubric(templated(rubrics, "inner.jinja")).template == TEMPLATE
    assert load_rubric(rules(rubrics, "./sub/../sub/s.json")).checks[0].schema == SCHEMA
    assert load_rubric(SHIPPED_RUBRICS / "helpfulness.yaml").template_path == SHIPPED_RUBRICS / "helpfulness.jinja"
    assert main(["rubric", "lint"]) == 0
