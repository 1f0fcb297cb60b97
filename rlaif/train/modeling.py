"""Model-side operations the trainers and the scorer share: loading, set-up (gradient
checkpointing, LoRA), position ids, and the two forward passes that matter.

    reward_scores      r(x, y) read at each row's last *real* token            (N,)
    response_logprobs  sum_t log pi(y_t | x, y_<t) over response tokens only   (2B,)

Both run the model's own forward (so DDP/FSDP/peft wrappers do their work) and hook one module
to keep only what is needed.
"""

from __future__ import annotations

from typing import Any

import torch

from rlaif.errors import UserError
from rlaif.train.config import TrainConfig
from rlaif.train.data import IGNORE_INDEX, Batch


# ----------------------------------------------------------------------------- loading and set-up

def load_tokenizer(path: str) -> Any:
    """The model's tokenizer, with a pad token (eos if it has none) and a chat template (required)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None) is None:
        raise UserError(f"model '{path}': its tokenizer has no chat template; the trainers need one to "
                        f"render conversations")
    return tok


def load_reward_model(path: str, pad_token_id: int) -> Any:
    """A causal LM with a one-scalar head (``*ForSequenceClassification``), fp32."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad_token_id
    return model


def prepare_model(model: Any, cfg: TrainConfig, task_type: str) -> Any:
    """Gradient checkpointing and optional LoRA; the weights stay fp32 (autocast does bf16)."""
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets: Any = cfg.lora.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout, target_modules=targets,
                                                 task_type=task_type))
    return model


def merged_from_adapter(base: str, adapter: Any, trained: Any) -> Any:
    """``base`` loaded afresh (fp32, this process only) with the LoRA adapter saved in folder
    ``adapter`` merged in: under FSDP / ZeRO-3 the trained model's weights are shards, so the
    merge happens on a full copy. ``trained`` (the peft model) tells the task and the pad token."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if str(trained.peft_config["default"].task_type).endswith("SEQ_CLS"):
        model = load_reward_model(base, trained.config.pad_token_id)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model.config.pad_token_id = trained.config.pad_token_id
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def unwrap(model: Any) -> Any:
    """The model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def text_config(config: Any) -> Any:
    """The language model's part of ``config`` (a multimodal model's text config), or ``config`` itself."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2... over real tokens whatever the padding side (HF counts padding otherwise)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------- reward model

def score_head(model: Any) -> torch.nn.Module:
    """The per-position scalar head of a *ForSequenceClassification model (``score`` in HF LMs)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("score", "classifier") and not name.endswith("original_module"):
            return module
    raise UserError(f"{type(model).__name__}: no 'score' head found; the reward model must be a "
                    f"*ForSequenceClassification model on a causal LM")


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row (works for left or right padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask).argmax(-1)


def reward_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row, shape (N,), read at each row's last real token.

    A hook on the head captures its per-position output (N, T, 1) before HF's pad-token-based
    pooling (reading the score at padding is TRL #937/#3750).
    """
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
              use_cache=False)
    finally:
        handle.remove()
    per_position = captured[-1][..., 0]  # (N, T)
    rows = torch.arange(per_position.shape[0], device=per_position.device)
    return per_position[rows, last_real_index(attention_mask)].float()


# ----------------------------------------------------------------------------- policy

def response_logprobs(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each row's response tokens and their count, shapes (2B,), (2B,).

    The LM head runs only on positions that predict a response token: a pre-hook on the output
    layer gathers those M hidden states, so logits are (M, V), not (2B, T, V) over prompt and
    padding as well (as TRL's fused head also does).
    """
    predicts = batch.labels[:, 1:] != IGNORE_INDEX                     # (2B, T-1): position t -> label t+1
    select = torch.nn.functional.pad(predicts, (0, 1))                  # (2B, T)
    targets = batch.labels[:, 1:][predicts]                             # (M,), row-major like select

    def gather(_module: Any, args: tuple) -> tuple:
        return (args[0][select].unsqueeze(0), *args[1:])                # (1, M, H)

    handle = unwrap(model).get_output_embeddings().register_forward_pre_hook(gather)
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=position_ids(batch.attention_mask), logits_to_keep=0, use_cache=False)
    finally:
        handle.remove()
    logits = out.logits[0]                                              # (M, V)
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float() - torch.logsumexp(logits.float(), -1)
    rows = select.nonzero()[:, 0]
    logps = torch.zeros(select.shape[0], device=logits.device).index_add(0, rows, token_logps)
    return logps, predicts.sum(-1)
