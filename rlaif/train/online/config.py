"""Config of ``rlaif train grpo | rloo | ppo`` (light: no torch import, so ``--help`` stays fast).

`OnlineConfig` adds to the trainers' shared options (`TrainerOptions`) what the three algorithms
share; `GRPOConfig`, `RLOOConfig` and `PPOConfig` set each recipe's defaults and options (GRPO:
Shao et al. 2024, TRL defaults; RLOO: Ahmadian et al. 2024; PPO: "The N+ implementation details of
RLHF with PPO", Huang et al. 2024); algorithms.py holds each one's step rules. Every field is a
``key=value`` / ``--config`` option with its help text in ``--help``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Literal

from rlaif.backends.base import BackendConfig, RayOptions
from rlaif.config import option, redefault
from rlaif.errors import UserError
from rlaif.train.config import TrainerOptions


VALUE_LR_FACTOR = 10.0  # PPO: default value_lr = 10 x lr


@dataclass
class RolloutOptions:
    """The rollout engine's knobs (the policy's weights are pushed into it after every update)."""

    dtype: str = option("auto", "engine weights dtype (auto, float32, bfloat16); auto: float32 on CPU so "
                                "engine and trainer log-probs agree, bf16 on GPU")
    max_model_len: int = option(2048, "vllm: longest prompt + completion in tokens")
    gpu_memory_utilization: float | None = option(None, "vllm: share of GPU memory (on CPU: of one NUMA node's "
                                                        "RAM) for weights and KV cache; null = 0.3 on GPU, 0.15 on CPU")
    enforce_eager: bool = option(True, "vllm: no CUDA graphs / torch.compile (faster start, slower decode)")
    enable_prefix_caching: bool = option(True, "vllm: reuse the KV cache of the k samples' shared prompt")
    cpu_reserved_cores: int | None = option(None, "vllm on CPU: cores kept free of the engine's compute threads "
                                                  "(null: vLLM's default, 1); 0: every core, faster on an idle "
                                                  "machine since the trainer waits while the engine samples")
    batch_size: int = option(64, "hf: sequences per generate() call")
    replicas: int = option(1, "vllm: rollout engine replicas as Ray actors (pip install 'rlaif[ray]'), each "
                              "sampling a share of the step's prompts; the new weights go to every replica "
                              "after each update; 1 = one engine in this process")

    def backend_config(self, engine: str, model_dir: str) -> BackendConfig:
        """The same options as a BackendConfig for the rollout engine."""
        share = self.gpu_memory_utilization
        if share is None:
            import torch

            share = 0.3 if torch.cuda.is_available() else 0.15
        return BackendConfig(engine=engine, model=model_dir, dtype=self.dtype, max_model_len=self.max_model_len,
                             gpu_memory_utilization=share, enforce_eager=self.enforce_eager,
                             enable_prefix_caching=self.enable_prefix_caching, enable_sample_logprobs=True,
                             cpu_reserved_cores=self.cpu_reserved_cores, batch_size=self.batch_size,
                             replicas=self.replicas)


def _judge_default() -> BackendConfig:
    return BackendConfig()


@dataclass
class OnlineConfig(TrainerOptions):
    """Options the three online algorithms share; each subclass names its algorithm (the verb)."""

    algorithm: ClassVar[str] = ""  # the verb: grpo | rloo | ppo (its rules: algorithms.strategy)
    min_k: ClassVar[int] = 2  # completions per prompt a group baseline needs

    lr: float = redefault(TrainerOptions, "lr", 1e-6)
    save_steps: int = redefault(TrainerOptions, "save_steps", 50)
    logging_steps: int = redefault(TrainerOptions, "logging_steps", 1)
    # data
    prompts: str = option("", "prompt file (JSONL/TXT/parquet, as for `rlaif generate`); also --prompts")
    prompt_column: str = option("prompt", "column holding the prompt (a string or a message list)")
    # rewards
    reward: list[str] = option(list, "reward specs: rm:DIR (an `rlaif train rm` output), judge:RUBRIC (direct "
                                      "RLAIF), rubrics:FIELD (each prompt's criteria), python:FILE.py:FUNC; "
                                      "several are mixed; also --reward (repeatable)")
    reward_weights: list[float] = option(list, "weight of each reward spec, in order (empty: 1 each)")
    judge: BackendConfig = option(_judge_default, "engine of judge: rewards (judge.engine, judge.model ...)")
    verdict_retries: int = option(2, "judge: verdict rubrics: re-asks of an invalid verdict before it counts as "
                                     "failed (a failed judgement masks the sample)")
    auto_rubric_refresh: int = option(10, "judge:auto: the judge rewrites a prompt's criteria when they are this many "
                                          "steps old (0 = never); a person's edit is never rewritten")
    auto_rubric_retries: int = option(2, "judge:auto: re-asks of an unusable criteria answer before the prompt's "
                                         "samples are masked")
    auto_rubric_template: str = option("", "judge:auto: the criteria writer's prompt template (Jinja); empty = the "
                                           "shipped rubrics/criteria_writer.jinja")
    # rollouts
    engine: Literal["auto", "vllm", "hf"] = option("auto", "rollout engine: vllm (weights synced in place), hf "
                                                           "(samples with the trained policy itself); auto = "
                                                           "vllm if installed, else hf")
    rollout: RolloutOptions = option(RolloutOptions, "rollout engine options (rollout.dtype ...)")
    ray: RayOptions = option(RayOptions, "the Ray cluster for rollout.replicas > 1")
    k: int = option(8, "completions sampled per prompt")
    prompts_per_step: int = option(8, "prompts per step (a step's batch is prompts_per_step * k completions)")
    max_tokens: int = option(128, "completion tokens at most (a completion cut here has no EOS)")
    temperature: float = option(1.0, "sampling temperature; the trainer divides its logits by the same value")
    top_p: float = option(1.0, "nucleus sampling threshold")
    # optimisation
    steps: int = option(100, "rollout steps (each: sample, score, update, sync)")
    epochs_per_step: int = option(1, "passes over each step's rollouts")
    minibatch_size: int = option(0, "completions per optimizer update; 0 = the whole step's batch")
    micro_batch_size: int = option(8, "completions per forward/backward (gradients accumulate up to a minibatch)")
    beta: float = option(0.0, "KL coefficient against the reference (the starting policy)")
    clip_eps: float = option(0.2, "PPO-clip range of the probability ratio")
    overlong_buffer: int = option(0, "DAPO soft overlong penalty: the last N tokens before max_tokens cost up to "
                                     "overlong_penalty (linear; -overlong_penalty at max_tokens); 0 = off", off=0)
    overlong_penalty: float = option(1.0, "overlong_buffer: the penalty at max_tokens, added to the reward",
                                     parent="overlong_buffer")
    entropy_coef: float = option(0.0, "entropy bonus: -entropy_coef x mean token entropy in the loss (the "
                                      "starting value when entropy_target is set); 0 = off", off=0.0)
    entropy_target: float | None = option(None, "adapt entropy_coef towards this mean token entropy (nats): "
                                                "+entropy_coef_delta per step below it, - above, never < 0", off=None)
    entropy_coef_delta: float = option(0.005, "entropy_target: the coefficient's step per rollout step",
                                       parent="entropy_target")
    dynamic_sampling: bool = option(False, "grpo/rloo: drop groups whose rewards are all equal (no advantage) and "
                                           "sample more prompts to refill the step (DAPO, Yu et al. 2025)", off=False)
    max_refill_rounds: int = option(3, "dynamic_sampling: extra sampling rounds per step at most; still short, the "
                                       "step trains on the groups it has", parent="dynamic_sampling")
    is_correction: Literal["none", "token", "sequence"] = option(
        "none", "training-inference mismatch correction (mismatch.py): token = truncated importance sampling, "
                "w_t = min(pi_old/pi_engine, is_cap) per token (Yao et al. 2025); sequence = masked sequence IS, "
                "the sequence ratio as weight, samples outside [is_min, is_cap] masked (rloo takes sequence only)",
                off="none")
    is_cap: float = option(2.0, "upper bound of the importance weight (token: truncation; sequence: mask above)",
                           parent="is_correction")
    is_min: float | None = option(None, "is_correction=sequence: samples whose ratio is below it are masked; "
                                        "null = 1 / is_cap", parent="is_correction")
    async_generation: bool = option(False, "one-step off-policy: the engine samples step t+1's batch (with the "
                                           "weights before step t's update) while the trainer updates on step t; "
                                           "needs is_correction token or sequence", off=False)
    log_rollouts_every: int = option(10, "write the step's rollouts to rollouts.jsonl every N steps (and the "
                                                "first step's); 0 = never")


@dataclass
class GRPOConfig(OnlineConfig):
    """GRPO (Shao et al. 2024) with TRL's defaults: k = 8, no KL (no reference model loaded)."""

    algorithm: ClassVar[str] = "grpo"
    k: int = option(8, "completions sampled per prompt (a group; >= 2)")
    beta: float = option(0.0, "k3 KL coefficient in the loss; 0 = no reference model loaded")
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group", "divide advantages by the group's reward std (group), the batch's (batch), or not (none: "
                 "Dr. GRPO, Liu et al. 2025)")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "cispo"] = option(
        "dapo", "grpo: mean over each sequence then batch; dapo: sum over the batch's active tokens (Yu et al. "
                "2025); dr_grpo: sum / (batch * max_tokens), no length bias (Liu et al. 2025); cispo: clipped, "
                "detached IS weight x log-prob, every token keeps its gradient, summed as dapo (MiniMax-M1 2025)")
    importance_sampling_level: Literal["token", "sequence", "sequence_token"] = option(
        "token", "token: PPO-clip per token; sequence: GSPO (Zheng et al. 2025), the length-normalised sequence "
                 "ratio clipped by gspo_clip_eps, mean over sequences; sequence_token: GSPO-token, summed by "
                 "loss_type", off="token")
    clip_eps_high: float | None = option(None, "upper clip 1 + clip_eps_high of the token ratio (DAPO clip-higher, "
                                               "e.g. 0.28; cispo: its IS-weight cap); null = clip_eps", off=None)
    gspo_clip_eps: float = option(3e-4, "GSPO: lower clip range of the sequence ratio (paper: 3e-4)",
                                  parent="importance_sampling_level")
    gspo_clip_eps_high: float = option(4e-4, "GSPO: upper clip range of the sequence ratio (paper: 4e-4)",
                                       parent="importance_sampling_level")

    def clip_range(self) -> tuple[float, float]:
        """(eps_low, eps_high) of the ratio: GSPO's own for a sequence ratio, else clip_eps / clip_eps_high."""
        if self.importance_sampling_level != "token":
            return self.gspo_clip_eps, self.gspo_clip_eps_high
        return self.clip_eps, self.clip_eps if self.clip_eps_high is None else self.clip_eps_high


@dataclass
class RLOOConfig(OnlineConfig):
    """RLOO (Ahmadian et al. 2024): leave-one-out baseline, sequence k1 KL in the reward."""

    algorithm: ClassVar[str] = "rloo"
    k: int = option(4, "completions sampled per prompt (>= 2: each one's baseline is the others' mean)")
    beta: float = option(0.05, "coefficient of the sequence KL (k1, summed over tokens) subtracted from the reward")
    lr: float = redefault(TrainerOptions, "lr", 3e-6)


@dataclass
class PPOConfig(OnlineConfig):
    """PPO as in the N+ implementation details (Huang et al. 2024): per-token k1 KL in the reward,
    reward on the EOS token, GAE, whitened advantages, clipped policy and value losses."""

    algorithm: ClassVar[str] = "ppo"
    min_k: ClassVar[int] = 1
    k: int = option(1, "completions sampled per prompt")
    lr: float = option(3e-6, "learning rate of the policy (AdamW, constant); the value model's is value_lr")
    epochs_per_step: int | None = option(None, "passes over each step's rollouts; null = 4 on a GPU (the N+ "
                                               "recipe), 1 on CPU (each pass costs a full forward and backward "
                                               "there)")
    temperature: float = option(0.7, "sampling temperature; policy and reference logits are divided by it too")
    beta: float = option(0.05, "per-token k1 KL coefficient in the reward (the starting value when adaptive_kl)")
    adaptive_kl: bool = option(False, "adapt beta towards kl_target (Ziegler et al. 2019)")
    kl_target: float = option(6.0, "adaptive_kl: target sequence KL")
    kl_horizon: int = option(10000, "adaptive_kl: horizon of the controller")
    value_lr: float | None = option(None, "learning rate of the value model; null = 10 x lr (a critic that starts "
                                          "knowing nothing must move faster than the policy; OpenRLHF's critic lr "
                                          "is 9 x its actor's)")
    vf_coef: float = option(0.1, "weight of the value loss")
    value_clip: float = option(0.2, "clip range of the value update")
    gamma: float = option(1.0, "GAE discount")
    lam: float | None = option(None, "GAE lambda; null = 0.95 when the value model starts from a reward model or "
                                     "value_model (N+ details), 1.0 when it starts from the policy (a critic that "
                                     "knows nothing yet: Monte-Carlo returns, so its errors do not enter the "
                                     "advantages)")
    whiten_advantages: bool = option(True, "whiten advantages over the batch")
    missing_eos_score: float | None = option(-1.0, "score given to a completion cut by max_tokens (no EOS); "
                                                   "null = keep its reward")
    value_model: str = option("", "value model init: empty = from the reward model when a reward is rm:DIR, "
                                  "else from the policy; or a model folder (value_head=separate only)")
    value_head: Literal["separate", "shared"] = option(
        "separate", "separate: a critic model of its own (N+ details); shared: a value head on the policy's last "
                    "hidden state (one model, two heads, one forward; the value loss x vf_coef also trains "
                    "the policy's backbone; the head starts at the first rollouts' mean score)", off="separate")

    def value_init_dir(self, specs: list[tuple[str, str, float]]) -> str | None:
        """Where the value model starts: ``value_model`` if set, else the first rm: reward, else None (the
        policy; always for a shared head)."""
        if self.value_head == "shared":
            return None
        return self.value_model or next((target for source, target, _ in specs if source == "rm"), None)

    def value_learning_rate(self) -> float:
        """The value model's learning rate: ``value_lr``, or 10 x ``lr`` when it is null."""
        return float(self.value_lr) if self.value_lr is not None else VALUE_LR_FACTOR * self.lr

    def gae_lambda(self, critic_from_policy: bool) -> float:
        """GAE's lambda: ``lam``, or when null 1.0 for a critic started from the policy, else 0.95.

        With lam < 1, A_t = sum_l lam^l delta_{t+l} bootstraps on V; a critic that starts knowing
        nothing makes A_t ~ lam^(T-1-t) (r - V), a position pattern that whitening turns into
        advantages whose sign follows the position, not the sample. lam = 1 gives A_t = return_t - V_t,
        unbiased for any critic."""
        if self.lam is not None:
            return float(self.lam)
        return 1.0 if critic_from_policy else 0.95


def is_low(cfg: OnlineConfig) -> float:
    """The lower bound of the sequence IS weight: ``is_min``, or 1 / ``is_cap`` when null."""
    return float(cfg.is_min) if cfg.is_min is not None else 1.0 / cfg.is_cap


CONFIGS: dict[str, type[OnlineConfig]] = {"grpo": GRPOConfig, "rloo": RLOOConfig, "ppo": PPOConfig}


def world_size() -> int:
    """Processes of this launch (torchrun / ``accelerate launch`` set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_launch(algorithm: str) -> None:
    """One-line UserError for an accelerate config that shards the weights (FSDP, DeepSpeed): each
    process's rollout engine needs the full weights after every step, so only DDP is supported."""
    if world_size() <= 1:
        return
    for var, kind in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise UserError(f"train {algorithm}: {kind} is not supported by the online trainers (each process's "
                            f"rollout engine needs the full weights after every step); launch with "
                            f"configs/accelerate_ddp.yaml")


GPU_EPOCHS, CPU_EPOCHS = 4, 1  # PPO's epochs_per_step when null


def resolve_device_defaults(cfg: OnlineConfig) -> None:
    """Fill the options whose null default depends on the device: PPO's ``epochs_per_step``."""
    if cfg.epochs_per_step is None:
        import torch

        cfg.epochs_per_step = GPU_EPOCHS if torch.cuda.is_available() else CPU_EPOCHS


def check_config(cfg: OnlineConfig) -> None:
    """One-line UserError for a missing required option or a value out of range (device defaults
    filled first: `resolve_device_defaults`)."""
    name = cfg.algorithm
    check_launch(name)
    resolve_device_defaults(cfg)
    for value, flag in ((cfg.prompts, "--prompts"), (cfg.out, "--out")):
        if not value:
            raise UserError(f"train {name}: {flag} is required")
    if not cfg.reward:
        raise UserError(f"train {name}: at least one --reward SPEC is required (rm:DIR, judge:RUBRIC, "
                        f"python:FILE.py:FUNC)")
    if cfg.reward_weights and len(cfg.reward_weights) != len(cfg.reward):
        raise UserError(f"option 'reward_weights': {len(cfg.reward_weights)} weights for {len(cfg.reward)} "
                        f"reward specs")
    if isinstance(cfg, PPOConfig) and cfg.dynamic_sampling:
        raise UserError(f"train {name}: option 'dynamic_sampling' is for grpo and rloo (a group of k >= 2 "
                        f"completions with equal rewards has no advantage there); PPO's value baseline has no groups")
    for key, value, ok, rule in _range_checks(cfg):
        if not ok:
            raise UserError(f"train {name}: option '{key}' must be {rule}, got {value!r}")


def _range_checks(cfg: OnlineConfig) -> list[tuple[str, object, bool, str]]:
    """(option, its value, whether it is in range, the rule) for every option with a range."""
    low_k = cfg.min_k
    k_rule = f">= {low_k}" + ("" if low_k == 1 else " (a group baseline needs 2 samples)")
    checks = [("k", cfg.k, cfg.k >= low_k, k_rule),
              ("steps", cfg.steps, cfg.steps >= 1, ">= 1"),
              ("prompts_per_step", cfg.prompts_per_step, cfg.prompts_per_step >= 1, ">= 1"),
              ("auto_rubric_refresh", cfg.auto_rubric_refresh, cfg.auto_rubric_refresh >= 0, ">= 0"),
              ("auto_rubric_retries", cfg.auto_rubric_retries, cfg.auto_rubric_retries >= 0, ">= 0"),
              ("max_tokens", cfg.max_tokens, cfg.max_tokens >= 1, ">= 1"),
              ("max_prompt_length", cfg.max_prompt_length, cfg.max_prompt_length >= 1, ">= 1"),
              ("temperature", cfg.temperature, cfg.temperature > 0, "> 0"),
              ("top_p", cfg.top_p, 0 < cfg.top_p <= 1, "in (0, 1]"),
              ("lr", cfg.lr, cfg.lr > 0, "> 0"),
              ("epochs_per_step", cfg.epochs_per_step, cfg.epochs_per_step >= 1, ">= 1"),
              ("minibatch_size", cfg.minibatch_size, cfg.minibatch_size >= 0, ">= 0"),
              ("micro_batch_size", cfg.micro_batch_size, cfg.micro_batch_size >= 1, ">= 1"),
              ("max_grad_norm", cfg.max_grad_norm, cfg.max_grad_norm >= 0, ">= 0"),
              ("beta", cfg.beta, cfg.beta >= 0, ">= 0"),
              ("clip_eps", cfg.clip_eps, cfg.clip_eps > 0, "> 0"),
              ("save_steps", cfg.save_steps, cfg.save_steps >= 0, ">= 0"),
              ("logging_steps", cfg.logging_steps, cfg.logging_steps >= 1, ">= 1"),
              ("max_refill_rounds", cfg.max_refill_rounds, cfg.max_refill_rounds >= 0, ">= 0"),
              ("log_rollouts_every", cfg.log_rollouts_every, cfg.log_rollouts_every >= 0, ">= 0"),
              ("verdict_retries", cfg.verdict_retries, cfg.verdict_retries >= 0, ">= 0"),
              ("overlong_buffer", cfg.overlong_buffer, 0 <= cfg.overlong_buffer <= cfg.max_tokens,
               f"in [0, max_tokens={cfg.max_tokens}]"),
              ("overlong_penalty", cfg.overlong_penalty, cfg.overlong_penalty >= 0, ">= 0"),
              ("entropy_coef", cfg.entropy_coef, cfg.entropy_coef >= 0, ">= 0"),
              ("entropy_target", cfg.entropy_target, cfg.entropy_target is None or cfg.entropy_target > 0,
               "> 0 or null"),
              ("entropy_coef_delta", cfg.entropy_coef_delta, cfg.entropy_coef_delta > 0, "> 0"),
              ("is_cap", cfg.is_cap, cfg.is_cap >= 1, ">= 1"),
              ("is_min", cfg.is_min, cfg.is_min is None or 0 <= cfg.is_min <= 1, "in [0, 1] or null"),
              ("is_correction", cfg.is_correction, cfg.is_correction != "token" or cfg.algorithm != "rloo",
               "none or sequence for rloo (its clip takes one ratio per sample)"),
              ("async_generation", cfg.async_generation, not cfg.async_generation or (
                  cfg.is_correction != "none" and world_size() == 1),
               "false unless is_correction is token or sequence (the batch is one step stale) and one process runs"),
              ("async_generation", cfg.async_generation, not (cfg.async_generation and cfg.dynamic_sampling),
               "false with dynamic_sampling (refill rounds sample with the current weights)")]
    if isinstance(cfg, GRPOConfig):
        level = cfg.importance_sampling_level
        checks += [("clip_eps_high", cfg.clip_eps_high, cfg.clip_eps_high is None or cfg.clip_eps_high > 0,
                    "> 0 or null"),
                   ("gspo_clip_eps", cfg.gspo_clip_eps, cfg.gspo_clip_eps > 0, "> 0"),
                   ("gspo_clip_eps_high", cfg.gspo_clip_eps_high, cfg.gspo_clip_eps_high > 0, "> 0"),
                   ("importance_sampling_level", level, level == "token" or cfg.loss_type != "cispo",
                    "token with loss_type=cispo (CISPO weighs each token)"),
                   ("is_correction", cfg.is_correction, cfg.is_correction != "token" or level == "token",
                    f"none or sequence with importance_sampling_level={level} (GSPO takes one ratio per sample)")]
    if isinstance(cfg, PPOConfig):
        checks += [("gamma", cfg.gamma, 0 < cfg.gamma <= 1, "in (0, 1]"),
                   ("lam", cfg.lam, cfg.lam is None or 0 <= cfg.lam <= 1, "in [0, 1] or null"),
                   ("vf_coef", cfg.vf_coef, cfg.vf_coef >= 0, ">= 0"),
                   ("value_lr", cfg.value_lr, cfg.value_lr is None or cfg.value_lr > 0, "> 0 or null"),
                   ("value_clip", cfg.value_clip, cfg.value_clip > 0, "> 0"),
                   ("kl_target", cfg.kl_target, cfg.kl_target > 0, "> 0"),
                   ("kl_horizon", cfg.kl_horizon, cfg.kl_horizon >= 1, ">= 1"),
                   ("value_model", cfg.value_model, not (cfg.value_model and cfg.value_head == "shared"),
                    "empty with value_head=shared (the shared head sits on the policy)")]
    return checks
