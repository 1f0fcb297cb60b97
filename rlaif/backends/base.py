"""The engine interface every backend implements, and the config that picks one.

A conversation is a list of ``{"role": ..., "content": ...}`` dicts (OpenAI/TRL chat format).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

from rlaif.config import option
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
    # also return each sampled token's log-probability (`Completion.logprobs`)
    logprobs: bool = False


@dataclass
class Completion:
    """One sampled reply.

    ``token_ids`` are exactly the tokens the engine sampled, in order (``num_tokens`` of them):
    the end-of-sequence token is included when generation stopped on it; with a stop string,
    ``text`` is cut before the stop string while ``token_ids`` run through the token that
    completed it. Training code uses these ids and never re-tokenizes ``text``. ``None`` where the
    engine cannot say (an OpenAI-compatible server without ``return_token_ids``).

    ``logprobs`` (only when `SamplingParams.logprobs` is set) holds, per sampled token, its
    log-probability under the distribution it was drawn from: ``log_softmax(logits / temperature)``
    restricted to the top-p nucleus and renormalized (with ``top_p=1``, the usual RL setting, just
    the temperature-scaled log-softmax); greedy (``temperature=0``): ``log_softmax(logits)``.
    The openai engine reports what the server returns (see `rlaif.backends.openai`).
    """

    text: str
    num_tokens: int
    finish_reason: str  # "stop" | "length" | engine-specific
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


@dataclass
class Generation:
    """All samples for one conversation."""

    completions: list[Completion]
    prompt_tokens: int


@dataclass
class BackendConfig:
    """Which engine and model to use, and the engine's knobs."""

    engine: Literal["auto", "vllm", "hf", "openai", "fake"] = option(
        "auto", "inference engine: vllm, hf (transformers), openai (HTTP server), fake (tests); "
                "auto = vllm if installed, else hf")
    model: str = option(DEFAULT_MODEL, "model: the embedded alias smollm2-135m, a local Hugging Face folder, "
                                       "a hub id, or (openai) the served model name")
    dtype: str = option("auto", "weights dtype (auto, float32, bfloat16, float16); auto: bf16 on GPU, "
                                "fp32 on CPU (hf); vllm: its default, fp32 on CPUs without native bf16 or with AMX")
    max_model_len: int | None = option(4096, "longest prompt + reply in tokens (null: the model's own limit)")
    # vllm
    gpu_memory_utilization: float = option(0.3, "vllm: share of GPU memory to use; on CPU, share of one "
                                                "NUMA node's RAM reserved for weights and KV cache")
    enforce_eager: bool = option(True, "vllm: no CUDA graphs / torch.compile (faster start, slower decode)")
    enable_prefix_caching: bool = option(True, "vllm: reuse the KV cache of shared prompt prefixes")
    block_size: int | None = option(None, "vllm: KV-cache block size in tokens; the prefix cache reuses whole "
                                          "blocks, so small blocks let more of a rubric's fixed text hit it "
                                          "(null: 32 on CPU, vLLM's own default on GPU)")
    tensor_parallel_size: int = option(1, "vllm: number of GPUs to split the model across")
    cpu_reserved_cores: int | None = option(None, "vllm on CPU: cores kept free of the engine's compute threads for "
                                                  "its scheduler (null: vLLM's default, 1); 0 computes on every "
                                                  "core: 1.4-1.6x faster generation on an idle 2-core machine, 3x "
                                                  "slower beside other busy processes")
    replicas: int = option(1, "engine replicas as Ray actors, chunks going to whichever is free, each with "
                              "tensor_parallel_size GPUs (pip install 'rlaif[ray]'; option ray.address); "
                              "1: one engine in this process")
    enable_sample_logprobs: bool = option(False, "vllm: build the engine so that samples can return their "
                                                 "log-probs (SamplingParams.logprobs; for RL rollouts); costs a "
                                                 "log-softmax over the vocabulary at every sampling step")
    # hf
    batch_size: int = option(16, "hf: rows (conversation x sample) per forward batch")
    device: str = option("auto", "hf: torch device (auto: cuda if available, else cpu)")
    # openai
    base_url: str | list[str] = option("http://127.0.0.1:8000/v1", "openai: server URL up to /v1; several (a list, "
                                                                  "or comma-separated) share the requests")
    api_key_env: str = option("OPENAI_API_KEY", "openai: environment variable holding the API key "
                                                "(the key itself is never stored or logged)")
    max_concurrency: int = option(16, "openai: requests in flight at once")
    timeout_s: float = option(120.0, "openai: seconds before one HTTP request times out (the whole answer, "
                                     "not each read: a server that drips bytes times out too)")
    max_response_mb: float = option(8.0, "openai: largest answer body in MB; a larger one stops the run")
    http_retries: int = option(5, "openai: retries of a failed request (429, 5xx, timeout, connection error)")
    http_retry_backoff_s: float = option(1.0, "openai: first wait between HTTP retries in seconds; doubles "
                                              "each time, at most 30 s (a 429's Retry-After is honoured)")
    return_token_ids: bool = option(False, "openai: ask the server for the sampled token ids "
                                           "(vLLM's server extension; hosted APIs reject it)")


@dataclass
class RayOptions:
    """Where engine replicas (``replicas`` > 1) run; see `rlaif.backends.pool`."""

    address: str | None = option(None, "Ray cluster for engine replicas: auto or HOST:PORT to join a running "
                                       "one; null: RAY_ADDRESS if set, else a local Ray for this run")


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

    def response_logprobs(self, conversations: Sequence[Conversation], responses: Sequence[str],
                          progress: bool = True) -> list[list[float]]:
        """Log-probability of each token of ``responses[i]`` after ``conversations[i]``.

        Prompt and reply tokens are split by `rlaif.backends.turns.reply_token_ids` on every
        engine (the reply's tokens plus the chat template's end-of-turn marker), so engines agree.
        One prefill per pair, no sampling. Engines that cannot score given text raise `UserError`.
        """
        ...

    def close(self) -> None:
        """Release the engine (processes, GPU memory, HTTP clients)."""
        ...
