"""Rubrics: load and validate a rubric file; the judge chat it renders.

A rubric is one YAML file (``rubrics/NAME.yaml``; the template inline or in a sibling ``.jinja``
file) checked against ``rlaif/judging/schemas/rubric.schema.json`` plus the semantic checks of
`rlaif.judging.validation`. Its ``method`` is looked up once in `rlaif.judging.methods.METHODS`
(``rubric.judge_method``): the method renders the judge's input, builds its requests and scores
the replies. With a judge model the template renders the judge's *user* message, after a fixed
system message (`rlaif.judging.templates.DATA_NOTE`, then the rubric's optional ``system`` text);
likelihood and rules differ (see their modules in `rlaif.judging.methods`). The variables a
template may use are listed once, in `rlaif.judging.variables`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlaif.errors import UserError, where
from rlaif.io.records import read_text
from rlaif.io.seeds import digest_int
from rlaif.io.yaml_lines import key_lines, line_of, load_limited
from rlaif.judging.methods import METHODS, JudgeMethod
from rlaif.judging.methods.verdict import capped_verdict_schema
from rlaif.judging.paths import rubric_relative
from rlaif.judging.rules import Check, checks_from_data
from rlaif.judging.templates import RubricError
from rlaif.judging.validation import schema_errors, semantic_errors
from rlaif.shipped import shipped_dir

SHIPPED_RUBRICS = shipped_dir("rubrics")  # the package's rubrics (the checkout's rubrics/ in a checkout)


@dataclass
class CalibrationExample:
    prompt: str
    response_a: str
    response_b: str
    better: Literal["a", "b"]
    id: str = ""
    note: str = ""


@dataclass
class Rubric:
    name: str
    description: str
    method: str  # a name in METHODS
    template: str  # "" for rules
    scale: dict[int, str] = field(default_factory=dict)  # ordered low -> high; {} for pairwise
    verdict_schema: dict[str, Any] | None = None
    score_field: str = "score"
    system: str = ""
    assistant_prefix: str = ""
    max_tokens: int = 384
    temperature: float = 0.0
    principles: list[str] = field(default_factory=list)
    principles_mode: Literal["all", "sample"] = "all"
    principles_per_judgement: int = 1
    examples: list[CalibrationExample] = field(default_factory=list)
    path: Path | None = None
    template_path: Path | None = None  # where template line numbers point (yaml or .jinja)
    template_line: int = 0  # line offset of the template's first line in template_path
    contrast: bool = False  # likelihood: PMI variant
    contrast_template: str = ""  # likelihood: the neutral user message ("" = empty)
    checks: list[Check] = field(default_factory=list)  # rules
    judge_method: JudgeMethod = field(init=False, repr=False, compare=False)  # METHODS[method]

    def __post_init__(self) -> None:
        self.judge_method = METHODS[self.method]

    @property
    def needs_judge(self) -> bool:
        """False for rules rubrics: they run without a judge engine."""
        return self.judge_method.needs_judge

    @property
    def scale_range(self) -> list[int]:
        """[lo, hi] of the scores this rubric writes (likelihood, rules, pairwise: [0, 1])."""
        return [min(self.scale), max(self.scale)] if self.scale else [0, 1]

    @property
    def choices(self) -> list[str]:
        """Strings whose next-token log-probs the judge reads after ``assistant_prefix`` (logprob: the
        scale points; pairwise: "A", "B"; else none)."""
        return self.judge_method.choices(self)

    def select_principles(self, key: str, seed: int) -> list[str]:
        """All principles, or a sample of ``principles_per_judgement`` seeded by (seed, key).

        Sampling one principle per judgement is Constitutional AI's choice (Bai et al. 2022);
        the key (item id, response/pair index) makes it independent of batch composition.
        """
        if self.principles_mode == "all" or not self.principles:
            return list(self.principles)
        generator = random.Random(digest_int(f"{seed}:{key}", 8))
        return generator.sample(self.principles, min(self.principles_per_judgement, len(self.principles)))


def judge_conversation(rubric: Rubric, messages: list[dict[str, str]], **kwargs: Any) -> list[dict[str, str]]:
    """The chat the judge sees for ``messages`` and the response(s) in ``kwargs`` (see the method)."""
    return rubric.judge_method.conversation(rubric, messages, **kwargs)


# ---------------------------------------------------------------------------------------------
# loading

def read_rubric_data(path: Path) -> tuple[dict[str, Any], str]:
    """Parse the YAML (scale keys as strings, for the JSON schema); return (data, text)."""
    if not path.is_file():
        raise RubricError(f"{path}: rubric file not found")
    text = read_text(path)
    try:
        data = load_limited(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise RubricError(f"{where(path, mark.line + 1 if mark else None)}invalid YAML: "
                          f"{getattr(e, 'problem', e)}") from None
    except (ValueError, RecursionError) as e:
        raise RubricError(f"{where(path, 1)}{e if isinstance(e, ValueError) else 'YAML nested too deeply'}") from None
    if not isinstance(data, dict):
        raise RubricError(f"{path}:1: a rubric is a YAML mapping (name, description, method, ...)")
    if isinstance(data.get("scale"), dict):
        data["scale"] = {str(point): label for point, label in data["scale"].items()}
    return data, text


def template_source(path: Path, data: dict[str, Any], lines: dict[tuple[Any, ...], int]) -> tuple[str, Path, int]:
    """(template text, file its line numbers refer to, line offset); ("", path, 0) for rules."""
    if not METHODS[data["method"]].templated:
        return "", path, 0
    if "template_file" in data:
        try:
            template_path = rubric_relative(path.parent, data["template_file"])
        except ValueError as e:
            raise RubricError(f"{where(path, lines.get(('template_file',)))}field 'template_file': {e}") from None
        if not template_path.is_file():
            raise RubricError(f"{where(path, lines.get(('template_file',)))}field 'template_file': "
                              f"{template_path} not found")
        return read_text(template_path), template_path, 0
    return data["template"], path, lines.get(("template",), 0)  # block scalar: text starts next line


def rubric_from_file(path: str | Path) -> Rubric:
    """Load and validate a rubric file; the first problem is a RubricError ``file:line: message``."""
    path = Path(path)
    data, text = read_rubric_data(path)
    lines = key_lines(text)
    problems = schema_errors(data) + semantic_errors(data, path.parent)
    if problems:
        key_path, message = problems[0]
        raise RubricError(f"{where(path, line_of(lines, key_path))}{message}")
    template, template_path, template_line = template_source(path, data, lines)
    method = data["method"]
    max_tokens = data.get("max_tokens", 384)
    verdict_schema = data.get("verdict_schema")
    return Rubric(
        name=data["name"], description=data["description"], method=method, template=template,
        scale={int(point): label for point, label in (data.get("scale") or {}).items()},
        verdict_schema=capped_verdict_schema(verdict_schema, max_tokens) if verdict_schema else None,
        score_field=data.get("score_field", "score"),
        system=data.get("system", ""), assistant_prefix=data.get("assistant_prefix", METHODS[method].default_prefix),
        max_tokens=max_tokens, temperature=float(data.get("temperature", 0.0)),
        principles=list(data.get("principles", [])), principles_mode=data.get("principles_mode", "all"),
        principles_per_judgement=data.get("principles_per_judgement", 1),
        examples=[CalibrationExample(**{"id": f"{data['name']}-{index}", **example})
                  for index, example in enumerate(data.get("examples", []))],
        path=path, template_path=template_path, template_line=template_line,
        contrast=bool(data.get("contrast", False)), contrast_template=data.get("contrast_template", ""),
        checks=checks_from_data(data.get("checks", []), path.parent),
    )


def rubric_dirs() -> list[Path]:
    """Where rubric names are looked up: ./rubrics, then the shipped rubrics."""
    out = [Path.cwd() / "rubrics"]
    if SHIPPED_RUBRICS.resolve() != out[0].resolve():
        out.append(SHIPPED_RUBRICS)
    return out


def available_rubrics() -> list[str]:
    return sorted({file.stem for folder in rubric_dirs() if folder.is_dir() for file in folder.glob("*.yaml")})


def find_rubric(name_or_path: str | Path) -> Path:
    """A .yaml path, or a name looked up as NAME.yaml in ./rubrics, then in the shipped rubrics."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UserError(f"{path}: rubric file not found")
        return path
    for folder in rubric_dirs():
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    raise UserError(f"unknown rubric '{name}' (available: {', '.join(available_rubrics()) or 'none'})")


def load_rubric(name_or_path: str | Path) -> Rubric:
    """Load a rubric by path or by name (see `find_rubric`), validated."""
    return rubric_from_file(find_rubric(name_or_path))
