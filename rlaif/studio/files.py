"""The rubrics folder the studio was started on: safe paths, lint and load of unsaved text, saving.

Only files inside the folder are read or written: a name is joined to the folder, resolved
(symlinks followed) and must stay inside it (`Path.is_relative_to`), so ``../x.yaml``, absolute
paths and a symlink pointing out are refused. Unsaved editor text is linted and loaded from a
temporary copy of the folder's view (the text as ``NAME.yaml`` plus links to its sibling
``.jinja``/``.json`` files, so ``template_file`` and ``schema_file`` resolve as they would on
disk); the folder itself is never written for that. Saving is atomic (temporary file in the same
folder, fsynced, ``os.replace``, the file's mode kept) and keeps the previous text as ``NAME.yaml.prev``; a rubric that fails
lint is written only as the draft ``NAME.draft.yaml``.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from rlaif.io.store import atomic_write_text
from rlaif.judging.criteria_lint import CRITERIA_SUFFIX, lint_criteria_text
from rlaif.judging.lint import Finding, lint_file
from rlaif.judging.rubrics import Rubric, rubric_from_file
from rlaif.judging.paths import trusting_paths
from rlaif.judging.templates import RubricError

RUBRIC_SUFFIXES = (".yaml", ".yml")
DRAFT_SUFFIX = ".draft.yaml"
PREV_SUFFIX = ".prev"
MAX_TEXT_CHARS = 1_000_000


class StudioInputError(ValueError):
    """A request the studio refuses (bad path, not a rubric file, too large): answered with a 4xx."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Saved:
    path: Path  # where the text went (the rubric, or its draft)
    draft: bool
    previous: Path | None  # the kept previous version, if the file existed


class RubricFolder:
    """One folder of rubric files; every path the studio touches goes through `resolve`."""

    def __init__(self, folder: Path) -> None:
        self.root = folder.resolve()

    def resolve(self, name: str) -> Path:
        """``name`` (relative to the folder) as a resolved path inside it; StudioInputError otherwise."""
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise StudioInputError("give a rubric file name, e.g. helpfulness.yaml")
        if Path(name).is_absolute():
            raise StudioInputError(f"{name}: an absolute path; give a name inside {self.root}", 403)
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise StudioInputError(f"{name}: outside the rubrics folder {self.root}", 403)
        if not path.name.endswith(RUBRIC_SUFFIXES + (CRITERIA_SUFFIX,)):
            raise StudioInputError(f"{name}: not a rubric file (.yaml) nor a criteria file ({CRITERIA_SUFFIX})")
        return path

    def display(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def rubric_names(self) -> list[str]:
        """The folder's rubric and criteria files (drafts and files linked from outside left out)."""
        out = []
        for p in sorted(self.root.rglob("*")):
            if p.name.endswith(RUBRIC_SUFFIXES + (CRITERIA_SUFFIX,)) and not p.name.endswith(DRAFT_SUFFIX) and p.is_file():
                if p.resolve().is_relative_to(self.root):
                    out.append(self.display(p))
        return out

    def read(self, name: str) -> tuple[str, str | None]:
        """(text of the file, text of its draft or None); a missing file reads as ""."""
        path = self.resolve(name)
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        draft = self._draft_path(path)
        return text, (draft.read_text(encoding="utf-8") if draft.is_file() else None)

    def _draft_path(self, path: Path) -> Path:
        stem = path.name[: -len(path.suffix)]
        return self.resolve(self.display(path.parent / f"{stem}{DRAFT_SUFFIX}"))

    @contextlib.contextmanager
    def staged(self, name: str, text: str) -> Iterator[Path]:
        """``text`` as ``name`` in a temporary folder beside links to the rubric folder's other files."""
        path = self.resolve(name)
        check_text(text)
        self._check_references(path, text)
        with tempfile.TemporaryDirectory(prefix="rlaif-studio-") as tmp:
            stage = Path(tmp) / path.parent.relative_to(self.root)
            stage.mkdir(parents=True, exist_ok=True)
            for sibling in path.parent.iterdir():
                if sibling.is_file() and not sibling.name.endswith(RUBRIC_SUFFIXES + (PREV_SUFFIX,)):
                    (stage / sibling.name).symlink_to(sibling.resolve())
            staged = stage / path.name
            staged.write_text(text, encoding="utf-8")
            with trusting_paths():  # the links lead out of the stage; _check_references kept them in the root
                yield staged

    def _check_references(self, path: Path, text: str) -> None:
        """``template_file`` and ``schema_file`` must name files inside the folder too."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return  # lint reports it
        if not isinstance(data, dict):
            return
        refs = [("template_file", data.get("template_file"))]
        checks = data.get("checks") if isinstance(data.get("checks"), list) else []
        refs += [(f"checks.{i}.schema_file", c.get("schema_file")) for i, c in enumerate(checks) if isinstance(c, dict)]
        for field_, ref in refs:
            if isinstance(ref, str) and not (path.parent / ref).resolve().is_relative_to(self.root):
                raise StudioInputError(f"{self.display(path)}: field '{field_}': {ref} is outside the rubrics "
                                       f"folder {self.root}", 403)

    def lint(self, name: str, text: str) -> list[Finding]:
        """`rlaif rubric lint`'s findings for unsaved text, with paths pointing at the real file
        (a criteria file: `rlaif.judging.criteria_lint`'s)."""
        if name.endswith(CRITERIA_SUFFIX):
            path = self.resolve(name)
            _, found = lint_criteria_text(check_text(text))
            return [Finding(path, line, f.message if f.index is None else f"criterion {f.index + 1}: {f.message}",
                            f.level) for line, f in found]
        with self.staged(name, text) as staged:
            findings = lint_file(staged)
            tmp = str(staged.parent)
            real = self.resolve(name).parent
            for f in findings:
                f.path = real / Path(f.path).relative_to(tmp) if str(f.path).startswith(tmp) else Path(f.path)
                f.message = f.message.replace(tmp, str(real))
        return findings

    def load(self, name: str, text: str) -> Rubric:
        """The rubric in unsaved text (RubricError ``file:line: message`` when it does not load)."""
        if name.endswith(CRITERIA_SUFFIX):
            raise StudioInputError(f"{name}: a criteria file has no judge preview nor calibration", 422)
        with self.staged(name, text) as staged:
            tmp, real = str(staged.parent), self.resolve(name).parent
            try:
                rubric = rubric_from_file(staged)
            except RubricError as e:
                raise RubricError(str(e).replace(tmp, str(real))) from None
        rubric.path = self.resolve(name)
        if rubric.template_path is not None and str(rubric.template_path).startswith(tmp):
            rubric.template_path = real / Path(rubric.template_path).relative_to(tmp)
        return rubric

    def save(self, name: str, text: str, *, draft: bool) -> Saved:
        """Write ``text`` atomically to the rubric file (``draft``: to ``NAME.draft.yaml`` instead),
        the previous content kept as ``<file>.prev``. The caller decides ``draft`` from lint."""
        path = self.resolve(name)
        check_text(text)
        target = self._draft_path(path) if draft else path
        previous = None
        if target.is_file():
            previous = target.with_name(target.name + PREV_SUFFIX)
            if not previous.resolve().is_relative_to(self.root):
                raise StudioInputError(f"{self.display(previous)}: a link out of the rubrics folder", 403)
            _atomic_write(previous, target.read_text(encoding="utf-8"))
        _atomic_write(target, text)
        return Saved(target, draft, previous)


def check_text(text: object) -> str:
    if not isinstance(text, str):
        raise StudioInputError("'text' must be a string (the rubric YAML)")
    if len(text) > MAX_TEXT_CHARS:
        raise StudioInputError(f"rubric text of {len(text)} characters; the limit is {MAX_TEXT_CHARS}", 413)
    return text


def _atomic_write(path: Path, text: str) -> None:
    """Atomic, durable, mode-keeping write of the real file behind ``path`` (`atomic_write_text`)."""
    atomic_write_text(path.resolve(), text)
