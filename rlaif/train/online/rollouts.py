"""Rollouts for online RL: k samples per prompt from a live engine, on token ids, with log-probs.

The trainer never re-tokenizes text: `RolloutEngine.prompt_ids` applies the chat template once
(with the generation prompt) and the engine is handed exactly those ids; each `Rollout` carries
the sampled ids (EOS included when the model stopped on it) and, per token, its log-probability
under the distribution it was drawn from, ``log_softmax(logits / T)`` restricted to the top-p
nucleus and renormalized (vLLM ``logprobs_mode="processed_logprobs"``; the hf sampler computes the
same). The trainer computes the same from ``logits / T`` at the sampled ids, over the same nucleus
(`rlaif.train.logprobs.nucleus_logits`; the whole vocabulary at ``top_p = 1``), so ``mean |engine - trainer|``
(the stale-weights detector, TRL #5312) is ~0 when the engine holds the trainer's weights.

Seeds: prompt i of a call with seed s samples from ``stable_seed(s, i)`` (sample j of it from
``mix_seed(.) + j`` in both engines), so a prompt's samples do not depend on its batch companions.

Engines:
- ``vllm``: its own copy of the weights; `RolloutEngine.sync` pushes the trainer's parameters
  through a shared-memory mirror (`rlaif.backends.vllm.VLLMBackend.update_weights`) and drops
  the prefix cache. Float32 on CPU by default, so engine and trainer log-probs agree.
- ``vllm`` with ``replicas`` = N > 1: N such engines as Ray actors (`rlaif.backends.pool.EnginePool`).
  A step's prompts are cut into N contiguous parts, one per replica; with the per-prompt seeds
  above the rollouts are those of one engine given them all. `sync` puts the weights in Ray's
  object store once and every replica loads them; a replica found dead (while sampling or
  syncing) is dropped and its part goes to another, which holds the current weights because
  every live replica loads every sync.
- ``hf``: samples with the trainer's live model itself (`HFBackend.from_model`); sync is a no-op.
  Under ``async_generation`` it samples with a copy of the policy and sync copies the weights in.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import torch

from rlaif.backends.base import BackendConfig, Generation, RayOptions, SamplingParams
from rlaif.errors import UserError
from rlaif.io.seeds import stable_seed
from rlaif.train.online.distributed import launcher_free_env, visible_gpus


@dataclass
class Rollout:
    """One sampled completion of one prompt."""

    prompt_index: int            # index of its prompt in the batch passed to generate()
    prompt_ids: list[int]        # exactly the ids the engine was given (chat template applied once)
    completion_ids: list[int]    # generated ids, including the EOS id if the model stopped on it
    engine_logprobs: list[float]  # per completion token, log-prob under the sampling distribution
    text: str                    # decoded completion, special tokens skipped
    finished: bool               # stopped on EOS (not cut by max_tokens)


def _eos_ids(tokenizer: Any, model_dir: str | None, model: Any = None) -> set[int]:
    """The tokenizer's EOS plus the generation config's (the ids an engine stops on)."""
    gen = getattr(model, "generation_config", None)
    if gen is None and model_dir is not None:
        try:
            from transformers import GenerationConfig

            gen = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            gen = None
    extra = getattr(gen, "eos_token_id", None)
    ids = [tokenizer.eos_token_id] + (extra if isinstance(extra, list) else [extra])
    return {int(i) for i in ids if i is not None}


def _peft_merged(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """A peft LoRA model's merged weights under the base model's names:
    ``W = W0 + scaling * B @ A`` for every active, unmerged adapter (Hu et al. 2021)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, param in base.named_parameters():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
            continue
        if "modules_to_save" in parts:  # "<mod>.modules_to_save.<adapter>.weight" -> "<mod>.weight"
            i = parts.index("modules_to_save")
            yield ".".join(parts[:i] + parts[i + 2:]), param.detach()
            continue
        if ".base_layer." not in name:
            yield name, param.detach()
            continue
        mod_name, _, leaf = name.partition(".base_layer.")
        module = lora[mod_name]
        tensor = param.detach()
        if leaf == "weight" and not module.merged and not module.disable_adapters:
            for adapter in module.active_adapters:
                if adapter not in module.lora_A and adapter not in getattr(module, "lora_embedding_A", {}):
                    continue
                if module.use_dora.get(adapter, False):
                    raise UserError("rollout weight sync: DoRA adapters are not supported (use plain LoRA)")
                tensor = tensor + module.get_delta_weight(adapter).to(tensor.dtype)
        yield f"{mod_name}.{leaf}", tensor


@torch.no_grad()
def policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face checkpoint name, tensor) for every weight of ``model`` as an engine loads
    them: a peft model's LoRA merged in; tied weights once (``named_parameters`` skips the tied
    ``lm_head``, which vLLM ties itself)."""
    model = getattr(model, "module", model)  # DDP / accelerate wrapper
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        yield from _peft_merged(model)
    else:
        for name, param in model.named_parameters():
            yield name, param.detach()


def _vllm_config(model_dir: str, options: BackendConfig | None) -> BackendConfig:
    """The rollout engine's BackendConfig: ``options`` (or defaults) with sample log-probs on and,
    on CPU, dtype float32 for ``auto`` and a small memory share by default."""
    cuda = torch.cuda.is_available()
    if options is None:
        options = BackendConfig(gpu_memory_utilization=0.3 if cuda else 0.15, max_model_len=2048)
    dtype = "float32" if options.dtype == "auto" and not cuda else options.dtype
    return dataclasses.replace(options, engine="vllm", model=model_dir, dtype=dtype, enable_sample_logprobs=True)


def engine_dtype(backend: Any) -> str | None:
    """The dtype a vLLM engine holds its weights in ("bfloat16"), None for another engine
    (module-level: runs on a replica)."""
    engine = getattr(getattr(backend, "llm", None), "llm_engine", None)
    dtype = getattr(getattr(engine, "model_config", None), "dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def vllm_engine(config: BackendConfig) -> Any:
    """One vLLM engine (module-level: Ray builds replicas with it by name)."""
    from rlaif.backends.vllm import VLLMBackend

    return VLLMBackend(config)


@contextmanager
def local_ray_env(ray_options: RayOptions | None) -> Iterator[None]:
    """While this process starts a local Ray for the replicas (no ``ray.address``, no RAY_ADDRESS,
    Ray not running): Ray sees every visible GPU but the trainers' (this node's ranks train on
    cuda:0 .. cuda:L-1, L = LOCAL_WORLD_SIZE, else on the current device), so no replica lands on a
    trainer's GPU; and the replicas inherit none of the launcher's variables (a vLLM engine seeing
    RANK / WORLD_SIZE would try to join the trainers' process group). Ray reads both when it starts.
    A no-op without CUDA. On a cluster of your own, keep the trainers' GPUs out of Ray yourself."""
    address = (ray_options.address if ray_options else None) or os.environ.get("RAY_ADDRESS")
    if address or not torch.cuda.is_available() or ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        yield
        return
    ids = visible_gpus()
    local = os.environ.get("LOCAL_WORLD_SIZE")
    mine = ids[:int(local)] if local else ids[torch.cuda.current_device():][:1]
    others = ",".join(i for i in ids if i not in mine)
    with launcher_free_env(others):
        print(f"rlaif: rollout: the trainers' GPU{'s' if len(mine) > 1 else ''} {','.join(mine)} kept out of the "
              f"local Ray; replicas get {others or 'none'}", file=sys.stderr, flush=True)
        yield


class RolloutEngine:
    """Samples k completions per prompt from the current policy (see the module docstring)."""

    def __init__(self, engine: Literal["vllm", "hf"], model_dir: str, tokenizer: Any, *,
                 backend_options: BackendConfig | None = None, max_prompt_length: int,
                 hf_model: torch.nn.Module | None = None, ray_options: RayOptions | None = None,
                 engine_factory: Callable[[BackendConfig], Any] = vllm_engine) -> None:
        """``engine_factory`` builds one vllm engine from its config (tests pass a fake); with
        ``backend_options.replicas`` > 1 each Ray actor builds its own with it, on the cluster of
        ``ray_options`` (or RAY_ADDRESS, or a local Ray)."""
        if max_prompt_length < 1:
            raise ValueError("max_prompt_length must be >= 1")
        self.engine, self.tokenizer, self.max_prompt_length = engine, tokenizer, max_prompt_length
        self.last_sync_s = 0.0
        self.replicas = 1  # engines that loaded the last sync (replicas > 1: the live ones)
        self.wire_dtype: torch.dtype | None = None  # replicas: floating weights cast to the engines' dtype to send
        if engine == "vllm":
            config = _vllm_config(model_dir, backend_options)
            if config.replicas > 1:
                from rlaif.backends.pool import EnginePool

                with local_ray_env(ray_options):
                    self.backend: Any = EnginePool(config, engine_factory, ray_options, role="rollout")
                self.replicas = len(self.backend.actors)
                dtype = self.backend.call_all_with(engine_dtype)[0]
                self.wire_dtype = getattr(torch, dtype) if dtype else None
            else:
                self.backend = engine_factory(config)
            self.eos_ids = _eos_ids(tokenizer, model_dir)
        elif engine == "hf":
            if hf_model is None:
                raise ValueError("the hf rollout engine samples with the trainer's model: pass hf_model")
            if backend_options is not None and backend_options.replicas > 1:
                raise UserError(f"option 'rollout.replicas': {backend_options.replicas} needs engine=vllm (the hf "
                                f"engine samples with the trainer's own model, so it has no replicas)")
            from rlaif.backends.hf import HFBackend

            opts = backend_options or BackendConfig()
            config = dataclasses.replace(opts, engine="hf", model=model_dir, max_model_len=None)
            self.backend = HFBackend.from_model(hf_model, tokenizer, config)
            self.eos_ids = _eos_ids(tokenizer, None, hf_model)
            self.backend.eos_ids = set(self.eos_ids)
        else:
            raise UserError(f"rollout engine {engine!r}: use vllm or hf")

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat template with the generation prompt, applied once; the last
        ``max_prompt_length`` ids kept (left truncation keeps the generation prompt)."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # BatchEncoding in some transformers versions
            ids = ids["input_ids"]
        return [int(i) for i in ids[-self.max_prompt_length:]]

    def generate(self, prompt_ids: list[list[int]], k: int, *, temperature: float, top_p: float,
                 max_tokens: int, seed: int, first_index: int = 0) -> list[Rollout]:
        """``k`` samples of every prompt: ``len == k * len(prompt_ids)``, prompt i's samples at
        ``[i*k, (i+1)*k)``, drawn with seed ``stable_seed(seed, first_index + i)`` (a process
        sampling a slice of the step's prompts passes the slice's start, so the samples are those
        of one process sampling them all)."""
        if k < 1 or max_tokens < 1:
            raise ValueError("k and max_tokens must be >= 1")
        if not prompt_ids:
            return []
        seeds = [stable_seed(seed, first_index + i) for i in range(len(prompt_ids))]
        params = SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, logprobs=True)
        if self.engine == "vllm":
            gens = self.backend.generate_ids(prompt_ids, params, seeds, progress=False)
        else:
            gens = self._hf_generate(prompt_ids, params, seeds)
        groups = [g.completions for g in gens]
        out = []
        for i, (ids, comps) in enumerate(zip(prompt_ids, groups)):
            for c in comps:
                toks = list(c.token_ids or [])
                out.append(Rollout(prompt_index=i, prompt_ids=list(ids), completion_ids=toks,
                                   engine_logprobs=list(c.logprobs or []), text=c.text,
                                   finished=bool(toks) and toks[-1] in self.eos_ids))
        return out

    def _hf_generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[Generation]:
        model = self.backend.model
        was_training = model.training
        model.eval()  # no dropout while sampling; the trainer's mode is restored after
        try:
            gens = self.backend.generate_ids(prompts, params, seeds, progress=False)
        finally:
            model.train(was_training)
        return gens

    def sync(self, model: torch.nn.Module) -> float:
        """Push ``model``'s weights (LoRA merged if peft) into the engine in place and drop its
        prefix cache; with replicas, into every live one (``replicas`` says how many loaded them).
        Returns the seconds it took (also in ``last_sync_s``). hf: a no-op when the engine samples
        with the live model, else a copy of its weights."""
        start = time.perf_counter()
        if self.engine == "vllm":
            weights = policy_weights(model)
            if self.wire_dtype is not None:  # the cast the engine's copy makes anyway, before the transfer
                weights = ((n, t.to(self.wire_dtype) if t.is_floating_point() else t) for n, t in weights)
            loaded = self.backend.update_weights(weights)
            if isinstance(loaded, int):
                self.replicas = loaded
        elif self.backend.model is not model:  # hf with its own copy (async_generation)
            with torch.no_grad():
                self.backend.model.load_state_dict(model.state_dict())
        self.last_sync_s = time.perf_counter() - start
        return self.last_sync_s

    def close(self) -> None:
        """Release the engine (vllm: its processes and memory; hf: only our reference)."""
        if self.engine == "vllm" and self.backend is not None:
            self.backend.close()
        self.backend = None
