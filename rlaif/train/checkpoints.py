"""Checkpoints, and what a rerun of ``rlaif train rm|dpo`` does with the folder it finds.

A checkpoint (``out/checkpoints/step-N/``) holds model + optimizer + scheduler + RNG (accelerate)
and ``trainer_state.json`` = step + the run's *settings*: the config minus the keys that cannot
change the trained weights (`IGNORED`), with ``data`` replaced by a digest of the preference
files. ``summary.json`` of a finished run keeps the same record. A rerun

- with the same settings continues from the last checkpoint (or returns the finished summary);
- with other settings is refused with one line naming what differs;
- with ``overwrite=true`` first removes what the folder's marker lists (`rlaif.io.outdir`) and
  starts over.

A folder holding files rlaif did not write (a user's model) is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from rlaif.config import flatten_dict, to_dict
from rlaif.errors import UserError
from rlaif.io.diskfull import names_path
from rlaif.io.outdir import fsync_tree, prepare_out, publish_files
from rlaif.io.store import PARTIAL_DIR, atomic_write_text, fingerprint, fsync_dir, refuse_out_overlap
from rlaif.train.config import OfflineOptions
from rlaif.train.data import find_split_files

# How often to log, evaluate or save, and where: none of it changes the trained weights.
IGNORED = ("out", "overwrite", "progress", "logging_steps", "eval_steps", "save_steps", "save_total_limit",
           "nonfinite")  # nonfinite: a run stopped by a NaN may resume with nonfinite=skip
# What `rlaif train rm|dpo` writes in --out besides save_pretrained's files: listed in the folder's marker
# (`rlaif.io.outdir`) before training; overwrite removes what the marker lists, by exact name.
TRAINER_OUTPUTS = ("checkpoints", "runs", "adapter", "metrics.jsonl", "summary.json", "ref_logps.pt")
# save_pretrained's files (model + tokenizer): listed as they are moved into --out (`publish_files`).
SAVED_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
               "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt")
# A finished or checkpointed run: what makes a folder without a marker one rlaif made (`rlaif.io.outdir`).
RUN_EVIDENCE = ("summary.json", "checkpoints")
STAGING = Path(PARTIAL_DIR) / "final"

def run_settings(cfg: OfflineOptions, files: dict[str, Path] | None = None) -> dict[str, Any]:
    """The config keys that shape the result (dotted, flat), the data as a digest of its files
    (``files``: split -> path; default the preference files of ``cfg.data``)."""
    digest = hashlib.sha256()
    for split, path in sorted((files if files is not None else find_split_files(cfg.data)).items()):
        digest.update(split.encode() + b"\0" + path.read_bytes() + b"\0")
    flat = flatten_dict({key: value for key, value in to_dict(cfg).items() if key not in IGNORED})
    flat["data"] = digest.hexdigest()[:16]
    return {**flat, "fingerprint": fingerprint(flat)}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [key for key in new if key != "fingerprint" and old.get(key) != new[key]]
    keys += [key for key in old if key not in new and key != "fingerprint"]
    text = ", ".join("data (the preference files differ)" if k == "data" else f"{k} {old.get(k)!r} -> {new.get(k)!r}"
                     for k in keys[:4])
    return text + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _refuse_if_different(old: dict[str, Any] | None, new: dict[str, Any], where: Path, what: str) -> None:
    if old is not None and old.get("fingerprint") == new["fingerprint"]:
        return
    why = "made before settings were recorded" if old is None else f"made with other settings: {_differences(old, new)}"
    raise UserError(f"{where}: holds {what} {why}; rerun with --overwrite (overwrite=true) to start over, "
                    f"or pick another --out")


def is_trainer_output(name: str, outputs: tuple[str, ...] = TRAINER_OUTPUTS) -> bool:
    """A name a trainer wrote in --out before output folders carried a marker (exact names; the
    shards of a sharded save_pretrained)."""
    return (name in outputs or name in SAVED_FILES
            or re.fullmatch(r"model-[0-9]+-of-[0-9]+\.safetensors", name) is not None)


def trainer_inputs(cfg: Any) -> dict[str, str | None]:
    """The paths a trainer (rm, dpo, grpo, rloo, ppo) reads, by option: what --out must keep clear of."""
    inputs = {"--model": cfg.model, "--data": getattr(cfg, "data", None), "--prompts": getattr(cfg, "prompts", None),
              "ref_model": getattr(cfg, "ref_model", None)}
    for spec in getattr(cfg, "reward", None) or []:
        kind, _, rest = spec.partition(":")
        if kind in ("rm", "python"):
            inputs[f"--reward {spec}"] = rest if kind == "rm" else rest.rpartition(":")[0]
    return inputs


def refuse_out_on_inputs(cfg: Any) -> None:
    """--out equal to, inside or holding an input of the trainer: one line, before anything is read or deleted
    (``--overwrite`` would otherwise remove the model it is about to load)."""
    refuse_out_overlap(cfg.out, trainer_inputs(cfg))


def launched_on_cpu() -> bool:
    """Several processes (torchrun / ``accelerate launch``) on a machine without CUDA: accelerate
    must be told ``cpu=True`` to join them over gloo; without it each process trains alone."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def check_out(cfg: OfflineOptions, out: Path, settings: dict[str, Any],
              outputs: tuple[str, ...] = TRAINER_OUTPUTS) -> dict[str, Any] | None:
    """Refuse an ``out`` holding files rlaif did not write (`rlaif.io.outdir`); list ``outputs`` in its
    marker; overwrite (remove what the marker lists first), or refuse a folder made with other settings. Returns the
    summary of a finished run with these settings (nothing to train), else None (train: resume if
    a checkpoint is left)."""
    main = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch` / torchrun only rank 0 writes
    prepare_out(out, outputs, overwrite=cfg.overwrite, legacy=lambda name: is_trainer_output(name, outputs),
                evidence=RUN_EVIDENCE, write=main)
    if cfg.overwrite:
        from accelerate import PartialState

        PartialState(cpu=launched_on_cpu()).wait_for_everyone()  # nobody reads before rank 0 has removed
        return None
    if (out / "summary.json").is_file() and (out / "config.json").is_file():
        summary = json.loads((out / "summary.json").read_text())
        _refuse_if_different(summary.get("settings"), settings, out, "a trained model")
        print(f"{out} already holds a model trained with these settings (summary.json); "
              f"pass --overwrite to train again")
        return summary
    existing = checkpoint_dirs(out)
    if existing:
        state = json.loads((existing[-1] / "trainer_state.json").read_text())
        _refuse_if_different(state.get("settings"), settings, existing[-1], "a checkpoint")
    return None


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def publish_checkpoint(tmp: Path, final: Path, out: Path, limit: int) -> None:
    """Rename a fully written ``tmp`` checkpoint folder to ``final`` (a kill leaves the whole
    checkpoint or none), then keep only the last ``limit`` checkpoints (0: all). Its files and folders
    are fsynced before the rename and the parent after it, so a power loss cannot publish a
    checkpoint whose files are not on disk."""
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    for old in checkpoint_dirs(out)[:-limit] if limit > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


@names_path(lambda out, names, step: out / names[0] if names else out)
def cut_logs(out: Path, names: tuple[str, ...], step: int | None) -> None:
    """Keep the lines of the JSONL logs ``names`` up to ``step`` (later steps are redone after a
    resume; a torn last line goes too), rewritten atomically; ``step=None``: delete them (a fresh start)."""
    for name in names:
        path = out / name
        if step is None:
            path.unlink(missing_ok=True)
        elif path.is_file():
            kept = [x for x in path.read_text(encoding="utf-8").splitlines(keepends=True)
                    if x.endswith("\n") and json.loads(x)["step"] <= step]
            atomic_write_text(path, "".join(kept))  # cut short (disk full), the kept lines would go


@names_path(lambda accelerator, out, step, *args, **kwargs: out / "checkpoints" / f".step-{step}.tmp")
def save_checkpoint(accelerator: Any, out: Path, step: int, limit: int, settings: dict[str, Any],
                    progress: dict[str, Any] | None = None) -> Path:
    """model + optimizer + scheduler + RNG (accelerate), the step, the settings and ``progress``
    (what the run's summary needs from the steps before, e.g. each step's metrics); written to a
    temporary folder first and renamed, so a kill leaves either the whole checkpoint or none."""
    final = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "settings": settings, "progress": progress or {}}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        publish_checkpoint(tmp, final, out, limit)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: Path) -> tuple[int, dict[str, Any]]:
    """Restore the state saved in ``path``; returns its step and progress (the LR scheduler's state
    among it, as JSON). accelerate loads the rest with ``weights_only=True``."""
    state = json.loads((path / "trainer_state.json").read_text())
    if "scheduler" not in state.get("progress", {}):  # older checkpoints pickled it (custom_checkpoint_0.pkl)
        raise UserError(f"{path}: a checkpoint from an older rlaif (its LR schedule is a pickle, which rlaif no "
                        f"longer loads); rerun with --overwrite to start over")
    planted = sorted(path.glob("custom_checkpoint_*"))
    if planted:
        raise UserError(f"{planted[0]}: rlaif writes no such file and will not unpickle it (it could run code); "
                        f"remove it, or rerun with --overwrite")
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as err:  # accelerate loads with weights_only=True: a non-tensor object
        raise UserError(f"{path}: holds a file that is not plain tensors (refused, unpickling it could run code: "
                        f"{str(err).splitlines()[0]}); rerun with --overwrite") from None
    return state["step"], state["progress"]


def save_model_files(out: Path, save: Callable[[Path], None]) -> None:
    """``save(folder)`` (save_pretrained of model and tokenizer) into a staging folder in
    ``out/.rlaif/``, then each file listed in the marker and moved into ``out`` (`publish_files`):
    every file rlaif puts in ``out`` is listed before it appears there."""
    stage = out / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    save(stage)
    publish_files(stage, out)
