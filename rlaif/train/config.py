"""Config dataclasses of the trainers (light: no torch import, so `rlaif --help` stays fast).

`TrainerOptions` holds what every trainer shares (the online configs build on it too); each
field's help text appears in ``rlaif train rm|dpo|grpo|rloo|ppo --help``; every field can be set in a
``--config`` YAML file or as ``key=value`` (dotted for nested: ``lora.enabled=true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlaif.config import option, redefault

DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]


@dataclass
class LoraOptions:
    enabled: bool = option(False, "train a LoRA adapter (peft) instead of all weights")
    r: int = option(16, "LoRA rank")
    alpha: int = option(32, "LoRA scaling alpha (the update is scaled by alpha / r)")
    dropout: float = option(0.05, "dropout on the LoRA branch")
    target_modules: list[str] = option(lambda: ["all-linear"], "module names to adapt, or all-linear")


@dataclass
class TrainerOptions:
    """Options every trainer shares, offline (rm, dpo) and online (grpo, rloo, ppo): one help text each.
    ``model`` and ``out`` are also --model/--out."""

    model: str = option("smollm2-135m", "model to start from: alias, local folder or hub id; also --model")
    out: str = option("", "output folder (final model, checkpoints, logs); also --out")
    overwrite: bool = option(False, "start over: delete what the trainer wrote in --out first (else a rerun "
                                    "resumes from the last checkpoint, if its settings match)")
    max_prompt_length: int = option(512, "prompt tokens kept (from the end) when truncating")
    lr: float = option(1e-5, "peak learning rate (AdamW; rm, dpo: with warmup and lr_schedule; online: constant)")
    weight_decay: float = option(0.0, "AdamW weight decay (rm, dpo: not on biases and norms)")
    max_grad_norm: float = option(1.0, "clip the gradient norm to this; 0 = no clipping")
    nonfinite: Literal["stop", "skip"] = option("stop", "a NaN/inf loss or gradient norm: stop (one-line error, "
                                                        "nothing new saved) or skip that update (3 in a row stop)")
    seed: int = option(0, "seed of torch, of the data order and (online) of the sampling")
    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", "auto = bf16 mixed precision on a GPU that has it, else fp32")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory, slower)")
    lora: LoraOptions = option(LoraOptions, "LoRA options (lora.enabled=true ...); a reference model is then "
                                            "the base with the adapters disabled")
    save_steps: int = option(200, "checkpoint every N steps (optimizer steps; online: rollout steps); 0 = never")
    save_total_limit: int = option(2, "checkpoints kept (oldest removed)")
    logging_steps: int = option(10, "write the mean training metrics every N steps")
    progress: bool = option(True, "show progress bars")


@dataclass
class OfflineOptions(TrainerOptions):
    """Options the offline trainers (rm, dpo, sft) share: data, length and the step schedule.
    ``data`` is also --data."""

    data: str = option("", "folder with preferences/{train,test}.jsonl")
    max_length: int = option(1024, "tokens of prompt + response, longer pairs are truncated")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    epochs: float = option(1.0, "passes over the training pairs (fractions allowed); used when max_steps=0")
    max_steps: int = option(0, "optimizer steps; 0 = from epochs")
    warmup_ratio: float = option(0.1, "share of the steps with a linear learning-rate warmup")
    lr_schedule: Literal["cosine", "linear", "constant"] = option("cosine", "learning-rate decay after warmup")
    eval_steps: int = option(0, "evaluate every N steps; 0 = only at the end")


@dataclass
class TrainConfig(OfflineOptions):
    """Options both preference trainers (rm, dpo) share."""

    batch_size: int = option(8, "pairs per micro-batch per process")
    group_by_length: bool = option(True, "sort within mega-batches by length (less padding)")
    eval_batch_size: int = option(0, "pairs per evaluation / reference batch; 0 = batch_size")
    packing: bool = option(True, "pack a micro-batch's pairs into one sequence, no padding, each prompt run once "
                                 "(rejected attends to it as a branch of the prompt+chosen row; exact); false = "
                                 "right-padded rows")
    max_tokens_per_batch: int = option(0, "with packing: token budget of one micro-batch per process (positions "
                                          "run: the prompt once; a pair is never split); when > 0 it wins over "
                                          "batch_size; 0 = batch_size pairs per micro-batch")


@dataclass
class SFTConfig(OfflineOptions):
    """``rlaif train sft``: supervised fine-tuning on chat rows, loss on assistant tokens only."""

    data: str = option("", "messages JSONL, prompt/completion JSONL, a folder with {train,test}.jsonl, or an "
                           "`rlaif run` folder (its sft/{train,test}.jsonl)")
    max_length: int = option(1024, "tokens per conversation; a longer one keeps its first max_length tokens")
    lr: float = redefault(TrainerOptions, "lr", 2e-5)
    max_tokens_per_batch: int = option(4096, "token budget of one packed micro-batch per process (rows are packed "
                                             "into one sequence, no padding); at least max_length")

    @property
    def batch_size(self) -> int:
        """One packed sequence per micro-batch (what DeepSpeed's micro-batch size is told)."""
        return 1


@dataclass
class RMConfig(TrainConfig):
    margin_coef: float = option(0.0, "weight of the judge's score margin in the loss (0 = plain Bradley-Terry)")
    center_coef: float = option(0.0, "reward centering coefficient (Eisenstein et al. 2023 use 0.01)")


@dataclass
class DPOConfig(TrainConfig):
    lr: float = redefault(TrainerOptions, "lr", 1e-6)
    beta: float = option(0.1, "KL strength (for ipo: the regulariser tau)")
    loss_type: DPOLossType = option("sigmoid", "sigmoid | ipo | hinge | robust")
    label_smoothing: float = option(0.0, "assumed label-noise rate: cDPO with sigmoid, unbiased with robust")
    reference: Literal["precompute", "model"] = option(
        "precompute", "precompute = reference log-probs in a first pass (no reference in memory); "
                      "model = frozen copy")
    ref_model: str = option("", "reference model pi_ref (alias, local folder or hub id; same tokenizer as model); "
                                "empty = the starting weights of model (with LoRA: the base)")


@dataclass
class ScoreConfig:
    """Options of ``rlaif rm score``."""

    model: str = option("", "reward model folder (output of `rlaif train rm`)")
    data: str = option("", "JSONL: prompt + response, or prompt + chosen + rejected")
    out: str = option("", "output JSONL (empty = stdout)")
    batch_size: int = option(8, "rows per forward pass")
    max_length: int = option(2048, "tokens of prompt + response (the prompt keeps at most half, from its end)")
    device: str = option("", "cpu, cuda, cuda:1...; empty = cuda if available")
