"""Config dataclasses of the trainers (light: no torch import, so `rlaif --help` stays fast).

Each field's ``help`` metadata appears in ``rlaif train rm|dpo --help``; every field can be set
in a ``--config`` YAML file or as ``key=value`` (dotted for nested: ``lora.enabled=true``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DPOLossType = Literal["sigmoid", "ipo", "hinge", "robust"]


@dataclass
class LoraOptions:
    enabled: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) instead of all weights"})
    r: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha"})
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"],
                                      metadata={"help": "module names, or all-linear"})


@dataclass
class TrainConfig:
    """Options both trainers share. ``data``, ``model``, ``out`` are also --data/--model/--out."""

    data: str = field(default="", metadata={"help": "folder with preferences/{train,test}.jsonl"})
    model: str = field(default="smollm2-135m", metadata={"help": "base model: alias, local folder or hub id"})
    out: str = field(default="", metadata={"help": "output folder (model, checkpoints, logs)"})
    max_length: int = field(default=1024, metadata={"help": "tokens of prompt + response, longer pairs are truncated"})
    max_prompt_length: int = field(default=512, metadata={"help": "prompt tokens kept (from the end) when truncating"})
    batch_size: int = field(default=8, metadata={"help": "pairs per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    epochs: float = 1.0
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0 = from epochs"})
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto", metadata={"help": "auto = bf16 mixed precision on a GPU that has it, else fp32"})
    gradient_checkpointing: bool = False
    group_by_length: bool = field(default=True, metadata={"help": "sort within mega-batches by length (less padding)"})
    lora: LoraOptions = field(default_factory=LoraOptions)
    logging_steps: int = 10
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps; 0 = only at the end"})
    eval_batch_size: int = 0
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N optimizer steps; 0 = never"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (oldest removed)"})
    resume: bool = field(default=True, metadata={"help": "continue from the last checkpoint in out/"})
    progress: bool = True


@dataclass
class RMConfig(TrainConfig):
    lr: float = 1e-5
    margin_coef: float = field(default=0.0, metadata={
        "help": "weight of the judge's score margin in the loss (0 = plain Bradley-Terry)"})
    center_coef: float = field(default=0.0, metadata={
        "help": "reward centering coefficient (Eisenstein et al. 2023 use 0.01)"})


@dataclass
class DPOConfig(TrainConfig):
    lr: float = 1e-6
    beta: float = field(default=0.1, metadata={"help": "KL strength (for ipo: the regulariser tau)"})
    loss_type: DPOLossType = field(default="sigmoid", metadata={"help": "sigmoid | ipo | hinge | robust"})
    label_smoothing: float = field(default=0.0, metadata={
        "help": "assumed label-noise rate: cDPO with sigmoid, unbiased with robust"})
    reference: Literal["precompute", "model"] = field(default="precompute", metadata={
        "help": "precompute = reference log-probs in a first pass (no reference in memory); model = frozen copy"})


@dataclass
class ScoreConfig:
    """Options of ``rlaif rm score``."""

    model: str = field(default="", metadata={"help": "reward model folder (output of `rlaif train rm`)"})
    data: str = field(default="", metadata={"help": "JSONL: prompt + response, or prompt + chosen + rejected"})
    out: str = field(default="", metadata={"help": "output JSONL (empty = stdout)"})
    batch_size: int = 8
    max_length: int = 2048
    device: str = field(default="", metadata={"help": "cpu, cuda, cuda:1...; empty = cuda if available"})
