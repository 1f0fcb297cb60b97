"""Run state of the online trainers: settings, the prompt sampler, checkpoints and resume.

A checkpoint (``out/checkpoints/step-N/``) holds the policy's trainable weights (the LoRA adapters
alone when training LoRA), the value model (PPO), the optimizer, every RNG (JSON and plain tensors:
nothing in a checkpoint is unpickled), and ``trainer_state.json`` = step, KL coefficient, entropy
coefficient (when the run has one), the prompt sampler's position and the run's *settings* (the
config minus what cannot change the weights, the prompt file as a digest), in the format of
`rlaif.train.checkpoints`, whose refusal and overwrite logic is reused: a rerun with the same
settings resumes, with other settings it is refused, with ``overwrite`` it starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlaif.config import flatten_dict, to_dict
from rlaif.errors import UserError
from rlaif.io.seeds import stable_seed
from rlaif.io.store import fingerprint
from rlaif.train.checkpoints import IGNORED, TRAINER_OUTPUTS, check_out, checkpoint_dirs, cut_logs, publish_checkpoint
from rlaif.train.online.config import OnlineConfig, resolve_device_defaults

# Online-only keys that change no weight (how often rollouts are logged, where the engines run).
ONLINE_IGNORED = IGNORED + ("log_rollouts_every", "ray")  # IGNORED has nonfinite
ONLINE_IGNORED_FLAT = ("rollout.replicas", "rollout.cpu_reserved_cores", "judge.cpu_reserved_cores")
# What the online trainers write in --out (removed by overwrite): the offline trainers' files too.
ONLINE_TRAINER_OUTPUTS = TRAINER_OUTPUTS + ("rollouts.jsonl", "value", "rubrics")  # rubrics/: judge:auto's criteria
LOGS = ("metrics.jsonl", "rollouts.jsonl")


def later_options(cls: type) -> dict[str, Any]:
    """Options added after runs were checkpointed (marked ``option(..., off=VALUE)``), with the value that
    leaves the step unchanged: at that value they are left out of the settings, so such runs still resume
    (and finished ones still skip)."""
    return {f.name: f.metadata["off"] for f in dataclasses.fields(cls) if "off" in f.metadata}


def later_dependents(cls: type) -> dict[str, str]:
    """Options read only when their parent option is on (marked ``option(..., parent=NAME)``): name -> parent."""
    return {f.name: f.metadata["parent"] for f in dataclasses.fields(cls) if "parent" in f.metadata}


def run_settings(cfg: OnlineConfig) -> dict[str, Any]:
    """The keys that shape the result, flat and dotted, with the algorithm and the prompt file's digest."""
    flat = flatten_dict({key: value for key, value in to_dict(cfg).items() if key not in ONLINE_IGNORED})
    for key in ONLINE_IGNORED_FLAT:
        flat.pop(key, None)
    for key, off in later_options(type(cfg)).items():  # off: the run is that of an rlaif before the option
        if key in flat and flat[key] == off:
            flat.pop(key)
    for key, parent in later_dependents(type(cfg)).items():  # only read when their parent option is on
        if parent not in flat:
            flat.pop(key, None)
    flat["algorithm"] = cfg.algorithm
    flat["prompts"] = hashlib.sha256(Path(cfg.prompts).read_bytes()).hexdigest()[:16]
    return {**flat, "fingerprint": fingerprint(flat)}


def check_online_out(cfg: OnlineConfig, out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """`check_out` for an online run; first, a run in ``out`` whose settings differ from these only in
    options left at a default that has changed since it was made (PPO's ``epochs_per_step``: 4 on CPU
    once, 1 now) is refused in one line naming the ``key=value`` to pass to resume it."""
    if not cfg.overwrite:
        _refuse_changed_defaults(cfg, out, settings)
    return check_out(cfg, out, settings, ONLINE_TRAINER_OUTPUTS)  # type: ignore[arg-type]


def _refuse_changed_defaults(cfg: OnlineConfig, out: Path, settings: dict[str, Any]) -> None:
    where, old = _recorded_settings(out)
    if old is None or old.get("fingerprint") == settings["fingerprint"]:
        return
    default = type(cfg)()
    resolve_device_defaults(default)
    defaults = flatten_dict(to_dict(default))
    keys = [k for k in {**old, **settings} if k != "fingerprint" and old.get(k) != settings.get(k)]
    if not all(k in old and k in settings and k in defaults and settings[k] == defaults[k] for k in keys):
        return  # something the user chose differs: check_out names it
    passed = " ".join(f"{k}={_as_override(old[k])}" for k in keys)
    now = ", ".join(f"{k}={_as_override(settings[k])}" for k in keys)
    raise UserError(f"{where}: was checkpointed with {passed}, a default that has changed since (now {now}); "
                    f"pass {passed} to resume it, or --overwrite to start over")


def _recorded_settings(out: Path) -> tuple[Path, dict[str, Any] | None]:
    """The settings of the run in ``out``: its summary.json's when finished, else its last checkpoint's
    (None when unreadable: `check_out` judges the folder)."""
    if (out / "summary.json").is_file() and (out / "config.json").is_file():
        where, path = out, out / "summary.json"
    elif existing := checkpoint_dirs(out):
        where, path = existing[-1], existing[-1] / "trainer_state.json"
    else:
        return out, None
    try:
        settings = json.loads(path.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return where, None
    return where, settings if isinstance(settings, dict) else None


def _as_override(value: Any) -> str:
    """``value`` as the command line's ``key=value`` reads it back (YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def _epoch_order(n_prompts: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_prompts))
    random.Random(stable_seed(seed, "prompts", epoch)).shuffle(order)
    return order


def prompt_order(n_prompts: int, seed: int, step: int, per_step: int) -> list[int]:
    """Prompt indices of ``step`` when every step takes ``per_step``: positions
    [step * per_step, (step + 1) * per_step) of `PromptSampler`'s sequence."""
    return PromptSampler(n_prompts, seed, step * per_step).take(per_step)


class PromptSampler:
    """A cursor over an endless sequence of seeded shuffles of the prompt file (epoch e shuffled with
    stable_seed(seed, "prompts", e)). ``position`` counts the prompts taken so far; it is saved in
    checkpoints, so a step that takes a variable number (dynamic sampling) resumes where it stopped."""

    def __init__(self, n_prompts: int, seed: int, position: int = 0) -> None:
        self.n_prompts, self.seed, self.position = n_prompts, seed, position
        self._epoch, self._order = -1, []  # the current epoch's shuffle, cached

    def take(self, count: int) -> list[int]:
        """The next ``count`` prompt indices; the position moves past them."""
        out = []
        for pos in range(self.position, self.position + count):
            epoch, offset = divmod(pos, self.n_prompts)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, _epoch_order(self.n_prompts, self.seed, epoch)
            out.append(self._order[offset])
        self.position += count
        return out


@dataclass
class Restored:
    step: int
    kl_coef: float | None
    prompt_position: int | None = None  # None: a checkpoint without it (then step * prompts_per_step)
    entropy_coef: dict[str, Any] | None = None  # the entropy controller's state_dict(), when the run had one


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}


RNG_JSON, RNG_TENSORS = "rng.json", "rng_tensors.pt"


def _save_rng_state(folder: Path) -> None:
    """Every RNG in formats that cannot run code on load: Python's and NumPy's state as JSON, torch's
    (and CUDA's) as plain tensors (read back with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"python": [version, list(internal), gauss]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    (folder / RNG_JSON).write_text(json.dumps(state))
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
    torch.save(tensors, folder / RNG_TENSORS)


def _load_rng_state(folder: Path) -> None:
    """Restore what `_save_rng_state` wrote; a checkpoint of the old pickled ``rng.pt`` is refused."""
    if not (folder / RNG_JSON).is_file() or not (folder / RNG_TENSORS).is_file():
        raise UserError(f"{folder}: a checkpoint of an older rlaif (pickled rng.pt, not loaded: it could run "
                        f"code); rerun with --overwrite to start over, or resume with the older rlaif version")
    try:
        state = json.loads((folder / RNG_JSON).read_text())
        tensors = torch.load(folder / RNG_TENSORS, weights_only=True)
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(tensors["torch"])
    except (ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
        raise UserError(f"{folder}: unreadable RNG state ({type(e).__name__}); rerun with --overwrite") from None
    cuda = [tensors[f"cuda{i}"] for i in range(sum(key.startswith("cuda") for key in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(out: Path, step: int, limit: int, settings: dict[str, Any], policy: torch.nn.Module,
                    value: torch.nn.Module | None, optimizer: torch.optim.Optimizer, kl_coef: float | None,
                    prompt_position: int, entropy_coef: dict[str, Any] | None = None) -> Path:
    """Write ``out/checkpoints/step-{step}`` via a temporary folder renamed at the end (a kill leaves
    the whole checkpoint or none); keep the last ``limit``. ``entropy_coef`` is the entropy
    controller's JSON-able ``state_dict()`` (None: the run has none)."""
    final = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(_trainable(policy), tmp / "policy.pt")
    if value is not None:
        torch.save(_trainable(value), tmp / "value.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    _save_rng_state(tmp)
    (tmp / "trainer_state.json").write_text(json.dumps({
        "step": step, "settings": settings, "kl_coef": kl_coef, "prompt_position": prompt_position,
        "entropy_coef": entropy_coef}))
    publish_checkpoint(tmp, final, out, limit)
    return final


def load_checkpoint(path: Path, policy: torch.nn.Module, value: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer) -> Restored:
    """Restore what `save_checkpoint` wrote into the live objects."""
    policy.load_state_dict(torch.load(path / "policy.pt", weights_only=True), strict=False)
    if value is not None:
        value.load_state_dict(torch.load(path / "value.pt", weights_only=True), strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    _load_rng_state(path)
    state = json.loads((path / "trainer_state.json").read_text())
    position = state.get("prompt_position")
    return Restored(step=int(state["step"]), kl_coef=state.get("kl_coef"),
                    prompt_position=None if position is None else int(position),
                    entropy_coef=state.get("entropy_coef"))


def resume_or_start(out: Path, policy: torch.nn.Module, value: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer, main: bool = True) -> Restored | None:
    """Load the last checkpoint and cut metrics.jsonl / rollouts.jsonl back to its step (later steps
    are redone); with none, clear the logs of an earlier attempt and return None. Several processes:
    each loads the checkpoint, only the ``main`` one touches files."""
    existing = checkpoint_dirs(out)
    if not existing:
        if main:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            cut_logs(out, LOGS, None)
        return None
    restored = load_checkpoint(existing[-1], policy, value, optimizer)
    if main:
        cut_logs(out, LOGS, restored.step)
    return restored


def checkpoint_run(cfg: OnlineConfig, run: Any, out: Path, done: int, settings: dict[str, Any],
                   taken_ahead: int = 0) -> Path:
    """`save_checkpoint` of the live run after ``done`` steps: weights, optimizer, RNG, KL and entropy
    coefficients, the prompt sampler's position (less ``taken_ahead`` prompts the next step took early)."""
    entropy = getattr(run, "entropy_coef", None)
    return save_checkpoint(out, done, cfg.save_total_limit, settings, run.policy, run.value_model, run.optimizer,
                           run.kl.value, run.sampler.position - taken_ahead,
                           entropy_coef=None if entropy is None else entropy.state_dict())


def restore_run(cfg: OnlineConfig, run: Any, restored: Restored | None, n_prompts: int) -> None:
    """Set the run's prompt sampler (at the checkpoint's position, or 0 when starting), its KL and
    entropy coefficients, and push the restored weights (LoRA merged) into the engine, which was
    built from the base weights. A checkpoint without a position had fixed steps: step * prompts_per_step."""
    position = 0
    if restored is not None:
        position = restored.prompt_position
        if position is None:
            position = restored.step * cfg.prompts_per_step
        if restored.kl_coef is not None:
            run.kl.value = restored.kl_coef
        entropy = getattr(run, "entropy_coef", None)
        if entropy is not None and restored.entropy_coef is not None:
            entropy.load_state_dict(restored.entropy_coef)
        if run.engine is not None:
            run.engine.sync(run.policy)
    run.sampler = PromptSampler(n_prompts, cfg.seed, position)
