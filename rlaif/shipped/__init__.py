"""Data shipped with rlaif: the repository's top-level ``rubrics/`` and ``prompts/`` folders.

They stay at the top level, where users edit them. A wheel installs them as package data
(pyproject.toml maps ``rlaif.shipped.rubrics`` -> ``rubrics/`` and ``rlaif.shipped.prompts`` ->
``prompts/``); in a checkout (editable install, or none) this package's import path also points
at the checkout's top level. Either way `importlib.resources` finds them, from any working
directory, and there is one copy of each file.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

Kind = Literal["rubrics", "prompts"]

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parents[1]
if not (_HERE / "rubrics").is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 (a package's __path__): rlaif.shipped.rubrics -> rubrics/


def shipped_dir(kind: Kind) -> Path:
    """The folder of shipped rubrics or prompts (inside the installed package, or the checkout)."""
    return Path(str(files(f"rlaif.shipped.{kind}") / ""))
