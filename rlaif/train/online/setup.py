"""What an online run is built from: policy, reference, value model, optimizer, rollout engine,
rewards. The reference is a frozen copy of the starting policy, or (LoRA) the same model with its
adapters disabled; GRPO with beta = 0 loads none. PPO's value model starts from the reward model
when a reward is ``rm:DIR`` (N+ details), else from the policy; with ``value_head=shared`` it is a
head on the policy itself (value.SharedValueHead)."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import torch

from rlaif.io.heap import keep_freed_memory
from rlaif.io.log import log
from rlaif.train.online.algorithms import strategy
from rlaif.train.online.config import OnlineConfig, PPOConfig
from rlaif.train.online.distributed import Dist, engine_env
from rlaif.train.online.step import Learner
from rlaif.train.optim import adamw
from rlaif.train.packing import packing_refusal, use_varlen_attention


@dataclass(kw_only=True)
class Run(Learner):
    """The live objects of one run: the `Learner` (policy, value model, optimizer, device, processes)
    and what sampling and rewarding need."""

    tokenizer: Any
    reference: Callable[[], ContextManager[Any]] | None  # `with reference() as ref_model:`
    engine: Any  # None on ranks > 0 when the main process samples for all (rollout.replicas > 1)
    rewards: list[Any]
    weights: dict[str, float]
    kl: Any  # maths.FixedKLController | AdaptiveKLController
    warned: set[str] = field(default_factory=set)  # one-time warnings already given
    value_from_policy: bool = False  # PPO value model from the policy (zero head): its bias is set at step 0
    sampler: Any = None  # state.PromptSampler over the prompt file, set by trainer._loop (its position is saved)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        for source in self.rewards:
            close = getattr(source, "close", None)
            if close is not None:
                close()


def _autocast(cfg: OnlineConfig, device: torch.device) -> Callable[[], ContextManager[Any]]:
    bf16 = device.type == "cuda" and (cfg.precision == "bf16" or (
        cfg.precision == "auto" and torch.cuda.is_bf16_supported()))
    if bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def load_policy(cfg: OnlineConfig, base: str, device: torch.device) -> Any:
    """The trained policy (fp32 weights; LoRA and gradient checkpointing as configured)."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.logprobs import check_head_transform
    from rlaif.train.modeling import prepare_model

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    check_head_transform(model)  # the lean log-probs (batch.token_logprobs) reproduce its logits
    reason = packing_refusal(model.config)
    if reason is None:
        use_varlen_attention(model)  # packed rows attend per row (batch.token_logprobs; padded inputs: SDPA as before)
    else:
        log(f"{reason}: the update pads its rows instead of packing them (slower, same numbers)")
    return without_dropout(prepare_model(model, cfg, task_type="CAUSAL_LM").to(device))  # type: ignore[arg-type]


def without_dropout(model: Any) -> Any:
    """``model`` with every dropout at p = 0 (LoRA's included), as TRL's ``disable_dropout``: the
    update's forwards must give the log-probs the engine sampled with and the old-policy pass took,
    else ratios and the skipped-pass old log-probs carry dropout noise (a LoRA run with dropout 0.05
    logged logprob_gap 0.012 against 2.5e-7 without)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if hasattr(model.config, "attention_dropout"):
        model.config.attention_dropout = 0.0
    return model


def make_reference(cfg: OnlineConfig, base: str, policy: Any, device: torch.device
                   ) -> Callable[[], ContextManager[Any]] | None:
    """None when no KL term is used; else a context giving the frozen reference model."""
    if not strategy(cfg).uses_reference():
        return None
    if cfg.lora.enabled:
        @contextmanager
        def adapters_off() -> Iterator[Any]:
            with policy.disable_adapter():
                yield policy
        return adapters_off
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device).eval()
    ref.requires_grad_(False)
    if packing_refusal(ref.config) is None:
        use_varlen_attention(ref)

    @contextmanager
    def frozen() -> Iterator[Any]:
        yield ref
    return frozen


def make_value_model(cfg: OnlineConfig, base: str, specs: list[tuple[str, str, float]], device: torch.device,
                     policy: Any = None) -> Any:
    """PPO's value model (None for the others): a head on ``policy`` (value_head=shared), else from
    ``value_model`` if set, else the first rm: reward, else the policy's weights."""
    if not isinstance(cfg, PPOConfig):
        return None
    from rlaif.train.online.value import build_value_model, shared_value_head

    if cfg.value_head == "shared":
        return shared_value_head(policy).to(device).train()

    rm_dir = cfg.value_init_dir(specs)
    model = build_value_model(base, rm_dir, torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device).train()


def make_optimizer(cfg: OnlineConfig, policy: Any, value_model: Any
                   ) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """AdamW over the policy's trainable parameters (``lr``) and, for PPO, the value model's in a
    second parameter group (``value_lr``; a shared head's group is the head alone, its backbone is
    the policy's); returns all trained parameters (for the gradient clip)."""
    policy_params = [p for p in policy.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": policy_params, "lr": cfg.lr}]
    params = list(policy_params)
    if isinstance(cfg, PPOConfig) and value_model is not None:
        value_params = [p for p in value_model.parameters() if p.requires_grad]
        groups.append({"params": value_params, "lr": cfg.value_learning_rate()})
        params += value_params
    return params, adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def resolve_engine(name: str) -> str:
    if name == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    return name


def pooled(cfg: OnlineConfig) -> bool:
    """The rollouts come from a Ray pool of engines that the main process drives (rollout.replicas > 1)."""
    return cfg.rollout.replicas > 1


def hf_engine_model(cfg: OnlineConfig, policy: Any) -> Any:
    """The model the hf engine samples with: the live policy, or under ``async_generation`` a copy
    of it (sampling runs during the update; `RolloutEngine.sync` copies the weights in after it)."""
    if not cfg.async_generation:
        return policy
    import copy

    return copy.deepcopy(policy).requires_grad_(False)


def build_run(cfg: OnlineConfig, base: str, specs: list[tuple[str, str, float]], dist: Dist | None = None) -> Run:
    """Everything the step loop needs, in the order that fails cheapest first. Under several
    processes every rank builds its own copy and engine on its device (``dist``); with a Ray pool
    (rollout.replicas > 1) only the main process builds the engine."""
    from rlaif.rewards.load import load_rewards
    from rlaif.train.modeling import load_tokenizer
    from rlaif.train.online.rollouts import RolloutEngine

    dist = dist or Dist()
    device = dist.device
    tokenizer = load_tokenizer(base)
    rewards = load_rewards(cfg.reward, judge=cfg.judge, seed=cfg.seed, verdict_retries=cfg.verdict_retries,
                           out=cfg.out, auto={"refresh": cfg.auto_rubric_refresh, "retries": cfg.auto_rubric_retries,
                                              "template": cfg.auto_rubric_template or None})
    policy = load_policy(cfg, base, device)
    reference = make_reference(cfg, base, policy, device)
    value_model = make_value_model(cfg, base, specs, device, policy)
    params, optimizer = make_optimizer(cfg, policy, value_model)
    dist.same_start(params)
    kl = strategy(cfg).kl_controller()
    engine_name = resolve_engine(cfg.engine)
    engine = None
    if dist.main or not pooled(cfg):
        own_vllm = engine_name == "vllm" and not pooled(cfg)  # Ray places a pool's replicas itself
        with engine_env(dist) if own_vllm else nullcontext():
            engine = RolloutEngine(engine_name, base, tokenizer,
                                   backend_options=cfg.rollout.backend_config(engine_name, base),
                                   max_prompt_length=cfg.max_prompt_length,
                                   hf_model=hf_engine_model(cfg, policy) if engine_name == "hf" else None,
                                   ray_options=cfg.ray)
    keep_freed_memory(device.type)  # after the engine started: its processes keep glibc's defaults
    weights = {f"{source}:{target}": weight for source, target, weight in specs}
    value_from_policy = isinstance(cfg, PPOConfig) and not cfg.value_init_dir(specs)
    return Run(policy=policy, value_model=value_model, optimizer=optimizer, params=params, device=device,
               autocast=_autocast(cfg, device), dist=dist, tokenizer=tokenizer, reference=reference, engine=engine,
               rewards=rewards, weights=weights, kl=kl, value_from_policy=value_from_policy,
               entropy_coef=strategy(cfg).entropy_controller())
