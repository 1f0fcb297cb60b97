"""Data shipped with rlaif: the repository's top-level ``rubrics/``, ``prompts/`` and ``benchmarks/`` folders.

They stay at the top level, where users edit them. A wheel installs them as package data
(pyproject.toml maps ``rlaif.shipped.rubrics`` -> ``rubrics/`` and ``rlaif.shipped.prompts`` ->
``prompts/``); in a checkout (editable install, or none) the checkout's folders are used. Either
way they are found from any working directory, and there is one copy of each file.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

Kind = Literal["rubrics", "prompts", "benchmarks"]

_CHECKOUT = Path(__file__).resolve().parents[2]


def shipped_dir(kind: Kind) -> Path:
    """The folder of shipped rubrics or prompts: the checkout's own (editable install, or none),
    else the copy installed inside the package."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / kind).is_dir():
        return _CHECKOUT / kind
    return Path(str(files(__name__) / kind))
