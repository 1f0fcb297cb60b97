"""The engine interface every backend implements, and the config that picks one.

A conversation is a list of ``{"role": ..., "content": ...}`` dicts (OpenAI/TRL chat format).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

from rlaif.models import DEFAULT_MODEL

Message = dict[str, str]
Conversation = list[Message]


@dataclass
class SamplingParams:
    """Sampling settings for `Backend.chat`. ``seed`` makes a call reproducible on one engine."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = 0
    stop: list[str] = field(default_factory=list)
    # JSON schema the reply must follow (structured outputs where the engine has them;
    # engines without them ignore it and the caller validates).
    json_schema: dict[str, Any] | None = None


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" | "length" | engine-specific


@dataclass
class Generation:
    """All samples for one conversation."""

    completions: list[Completion]
    prompt_tokens: int


@dataclass
class BackendConfig:
    """Which engine and model to use, and the engine's knobs."""

    engine: Literal["auto", "vllm", "hf", "openai", "fake"] = "auto"
    model: str = DEFAULT_MODEL
    dtype: str = "auto"  # "auto": bf16 on GPU, fp32 on CPU (hf); engine default (vllm)
    max_model_len: int | None = 4096
    # vllm
    gpu_memory_utilization: float = 0.3  # on CPU: share of one NUMA node's RAM for the KV cache
    enforce_eager: bool = True
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    # hf
    batch_size: int = 16
    device: str = "auto"
    # openai
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the key itself is read from this variable, never stored
    max_concurrency: int = 16
    timeout_s: float = 120.0
    max_retries: int = 5
    retry_backoff_s: float = 1.0  # first wait between retries; doubles each time, at most 30 s


class Backend(Protocol):
    """What every engine provides."""

    model_id: str

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams,
             seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        """Sample ``params.n`` replies for each conversation (in order).

        ``seeds`` (one per conversation) overrides ``params.seed`` so that a conversation's
        samples do not depend on which other conversations share the call: the pipeline can
        resume a crashed run and get the same rows.
        """
        ...

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        """Next-token log-probabilities of each choice string after the generation prompt.

        The assistant turn is opened (chat template with ``add_generation_prompt``) and
        ``assistant_prefix`` (e.g. ``"Score: "``) is appended; the result maps each choice to
        log p(first token of choice | context). Choices absent from the engine's top-k get
        ``-inf``. Over choices the probabilities sum to <= 1.
        """
        ...

    def close(self) -> None:
        """Release the engine (processes, GPU memory, HTTP clients)."""
        ...
