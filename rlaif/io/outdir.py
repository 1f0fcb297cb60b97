"""Output folders: rlaif writes over what it wrote there, and nothing else.

Every output folder carries ``DIR/.rlaif/outputs.json``: the names of the entries directly in DIR
(files and folders) that rlaif wrote there. A name is listed *before* it is written (`claim`), so a
crash never leaves an unlisted rlaif file. Before writing anything a command calls `prepare_out`:

- DIR missing, empty, or every entry listed (``.rlaif`` itself, and ``.NAME.tmp`` of a listed NAME,
  are rlaif's; an entry holding one of the command's input files is left alone, never written or
  removed): go on; any other entry (a user's README.md, a model): one-line UserError naming it,
  nothing touched;
- ``overwrite``: refused outright for ``/``, ``$HOME`` and the cwd's ancestors (inputs: see
  `rlaif.io.store.refuse_out_overlap`); else removes listed entries only (by exact name, never by
  pattern) and their partial files in ``DIR/.rlaif/``.

Folders made before the marker existed (no ``outputs.json``) are taken as rlaif's when they hold
``evidence`` of a run (``.rlaif``, a trainer's ``summary.json`` or ``checkpoints``) and every entry
is one of the names that command wrote then (``legacy``); the marker is then written listing them,
so reruns of such folders keep resuming. A user's model folder (config.json, model.safetensors, no
evidence) is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

from rlaif.errors import UserError
from rlaif.io.store import PARTIAL_DIR, atomic_write_text, fsync_dir

MARKER = "outputs.json"


def marker_path(out: str | Path) -> Path:
    return Path(out) / PARTIAL_DIR / MARKER


def listed(out: str | Path) -> set[str] | None:
    """The names the marker lists; None when DIR has no marker."""
    path = marker_path(out)
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["outputs"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: unreadable rlaif marker; move the folder away or pick another --out") from None
    return set(names)


def _write_marker(out: Path, names: set[str]) -> None:
    atomic_write_text(marker_path(out), json.dumps({"outputs": sorted(names)}, indent=1) + "\n")


def claim(out: str | Path, *names: str) -> None:
    """List ``names`` (entries directly in ``out``) in the marker before they are written."""
    out = Path(out)
    have = listed(out) or set()
    if not set(names) <= have:
        _write_marker(out, have | set(names))


def _ours(name: str, names: set[str]) -> bool:
    return name == PARTIAL_DIR or name in names or (
        name.startswith(".") and name.endswith(".tmp") and name[1:-4] in names)


def _holding_inputs(out: Path, inputs: Iterable[str | None]) -> set[str]:
    """The entries of ``out`` that are, or hold, one of the command's input files."""
    target = out.resolve()
    names = set()
    for value in inputs:
        path = Path(value).expanduser().resolve() if value else None
        if path is not None and path.exists() and target in path.parents:
            names.add(path.relative_to(target).parts[0])
    return names


def rlaif_entries(out: Path, legacy: Callable[[str], bool], evidence: Iterable[str],
                  inputs: Iterable[str | None] = ()) -> set[str]:
    """The names rlaif wrote in ``out`` (see the module docstring); UserError naming the first
    entry that is not one of them nor holds one of the command's ``inputs`` (read, never written)."""
    kept = _holding_inputs(out, inputs)
    entries = sorted(p.name for p in out.iterdir() if p.name not in kept)
    names = listed(out)
    if names is None:  # no marker: empty, or a folder made before markers existed
        old = {name for name in entries if name != PARTIAL_DIR}
        names = old if any((out / e).exists() for e in evidence) and all(legacy(n) for n in old) else set()
        foreign = next((n for n in entries if not _ours(n, names) and not legacy(n)), None) or \
            next((n for n in entries if not _ours(n, names)), None)
    else:
        foreign = next((n for n in entries if not _ours(n, names)), None)
    if foreign is not None:
        raise UserError(f"option 'out': {out} holds {foreign}, which rlaif did not write (not listed in "
                        f"{marker_path(out)}); pick a new or empty --out, or move {foreign} away (nothing was written)")
    return names


def refuse_dangerous(out: Path) -> None:
    """``--overwrite`` of ``/``, ``$HOME`` or a folder holding the cwd: refused outright."""
    target = out.expanduser().resolve()
    home = Path.home().resolve()
    why = ("is the filesystem root" if target == Path(target.anchor) else "is your home folder" if target == home
           else "holds the current folder" if target in Path.cwd().resolve().parents else None)
    if why:
        raise UserError(f"option 'out': refusing --overwrite of {out}: it {why}; pick a folder of its own for --out")


def remove_listed(out: Path, names: set[str], only: Iterable[str] | None = None) -> set[str]:
    """Remove the listed entries (those among ``only`` when given) and their partial files in
    ``DIR/.rlaif/``; returns the names still listed."""
    gone = names if only is None else names & set(only)
    for name in sorted(gone):
        for path in (out / name, out / PARTIAL_DIR / name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    return names - gone


def prepare_out(out: str | Path, outputs: Iterable[str], *, overwrite: bool, legacy: Callable[[str], bool],
                evidence: Iterable[str], remove: Iterable[str] | None = None, inputs: Iterable[str | None] = (),
                write: bool = True) -> None:
    """Check ``out`` before anything is written (module docstring; ``inputs``: the command's input
    files, which may lie in ``out``), then, if ``write``: with ``overwrite`` remove the listed entries
    (among ``remove`` when given), create ``out`` and list ``outputs`` (the names the command writes)
    in its marker. ``write=False``: the check alone (the non-main processes of a distributed trainer)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"option 'out': {out} exists and is not a folder")
    names = rlaif_entries(out, legacy, evidence, inputs) if out.is_dir() else set()
    if overwrite:
        refuse_dangerous(out)
    if not write:
        return
    if overwrite:
        names = remove_listed(out, names, remove)
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, names | set(outputs))


def publish_files(stage: Path, out: Path) -> None:
    """Move every file of the fully written folder ``stage`` into ``out`` (listing each in the
    marker first, as its name is known only now), fsynced; then remove ``stage``."""
    names = sorted(p.name for p in stage.iterdir())
    claim(out, *names)
    for name in names:
        fsync_file(stage / name)
        os.replace(stage / name, out / name)
    fsync_dir(out)
    shutil.rmtree(stage, ignore_errors=True)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (folders after their entries), ``folder`` last."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_dir(Path(root))
