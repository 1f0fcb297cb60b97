"""Log-probabilities (and entropies) of chosen tokens with only the logits that are needed.

    z_t = c tanh(s W h_t / c) / tau,   then the top-k / top-p nucleus of z_t (others -inf)
    log pi(y_t | y_<t) = z_t[y_t] - logsumexp_v z_t[v],     H_t = -sum_v pi_v log pi_v

W is the LM head, s and c what the model does to W h before it returns logits (:class:`HeadTransform`:
Cohere's ``logit_scale``, Granite's 1 / ``logits_scaling``, Gemma's final-logit soft-cap; s = 1 and no
cap for most models), tau the sampling temperature. :func:`check_head_transform` refuses a model whose
logits are something else. :func:`head_logprobs` is the one implementation:
the M positions a caller selected go through the head in chunks of at most ``LOGIT_CHUNK_ELEMENTS //
V`` positions, each chunk's logits upcast to float32 on their own (never ``M x V`` floats); when a
pass needs gradients and has more than one chunk, each chunk is recomputed in backward (activation
checkpointing), so peak memory stays one chunk's logits whatever the vocabulary.

Callers: the offline trainers (dpo) through :func:`selected_logprobs` (a pre-hook on the model's
output layer takes the selected hidden states, so the model's own forward, DDP/peft wrappers
included, never builds (B, T, V) logits); the online trainers through
`rlaif.train.online.batch.token_logprobs` (backbone, then the head at the completion positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from rlaif.errors import UserError

LOGIT_CHUNK_ELEMENTS = 1 << 25  # float32 logits per chunk of positions (128 MiB): 682 positions at V = 49k


@dataclass(frozen=True)
class HeadTransform:
    """What a model does to its LM head's output W h before returning logits: z = c tanh(s W h / c),
    or z = s W h when ``softcap`` c is None."""

    scale: float = 1.0
    softcap: float | None = None

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


def head_transform_of(model: Any) -> HeadTransform:
    """The transform read from the (text) config: s = ``logit_scale`` (Cohere) / ``logits_scaling``
    (Granite, MiniCPM3, HyperCLOVA X), c = ``final_logit_softcapping`` (Gemma 2-4)."""
    from rlaif.train.modeling import text_config, unwrap

    text = text_config(getattr(unwrap(model), "config", None))
    scale = float(getattr(text, "logit_scale", None) or 1.0) / float(getattr(text, "logits_scaling", None) or 1.0)
    return HeadTransform(scale, getattr(text, "final_logit_softcapping", None))


def check_head_transform(model: Any, probe_tokens: int = 8) -> HeadTransform:
    """The model's :class:`HeadTransform`, after checking on a short probe sequence that the model's
    own logits equal it applied to ``head(decoder(ids))`` (relative 1e-4); a model that changes its
    logits in another way after the head gets a one-line error, not silently wrong log-probs."""
    from rlaif.train.modeling import unwrap

    base = unwrap(model)
    transform = head_transform_of(base)
    head = base.get_output_embeddings()
    if head.weight.is_meta:  # weights not in this process (FSDP's rank-0 loading): rank 0 checks
        return transform
    vocab = int(head.weight.shape[0])
    ids = (torch.arange(probe_tokens, device=head.weight.device) * 7919 % vocab).unsqueeze(0)
    training = base.training
    base.eval()  # no dropout in the probe
    try:
        with torch.no_grad():
            full = base(input_ids=ids, use_cache=False).logits.float()
            lean = transform.apply(head(base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state).float())
    finally:
        base.train(training)
    if not torch.isfinite(full).all():  # uninitialised weights (FSDP's other ranks): nothing to compare
        return transform
    gap = float((full - lean).abs().max())
    if not gap <= 1e-4 * (1.0 + float(full.abs().max())):
        kind = getattr(base.config, "model_type", type(base).__name__)
        raise UserError(f"model type {kind!r}: its logits differ from the LM head's output by {gap:.3g} after the "
                        f"transforms rlaif knows (scale {transform.scale:g}, soft-cap {transform.softcap}); rlaif's "
                        "trainers cannot compute its log-probs exactly")
    return transform


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, *,
                  transform: HeadTransform = HeadTransform(), top_p: float = 1.0, top_k: int = 0, entropy: bool = False,
                  entropy_grad: bool = False, hooks: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(targets) (M,) float32 under ``head(hidden)`` (hidden (M, H)), and with ``entropy`` (or
    ``entropy_grad``) the entropy per position (M,), detached unless ``entropy_grad``, else None; z as
    in the module docstring, chunked over positions. ``hooks`` False calls ``head.forward`` (from
    inside a hook on the head itself)."""
    entropy = entropy or entropy_grad
    size = max(1, LOGIT_CHUNK_ELEMENTS // int(head.weight.shape[0]))
    project = head if hooks else head.forward
    args = (temperature, transform, top_p, top_k, entropy, entropy_grad)
    if hidden.shape[0] <= size:
        return logits_logprobs(project(hidden), targets, *args)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    parts = [checkpoint(_chunk, project, h, y, *args, use_reentrant=False) if recompute
             else _chunk(project, h, y, *args) for h, y in zip(hidden.split(size), targets.split(size))]
    logps, entropies = zip(*parts)
    return torch.cat(logps), (torch.cat(entropies) if entropy else None)


def _chunk(project: Any, hidden: torch.Tensor, targets: torch.Tensor, *args: Any) -> tuple[torch.Tensor, Any]:
    """One chunk through the head (a function of its own, so a checkpoint recomputes the head too)."""
    return logits_logprobs(project(hidden), targets, *args)


def logits_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    transform: HeadTransform = HeadTransform(), top_p: float = 1.0, top_k: int = 0,
                    entropy: bool = False, entropy_grad: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """From raw head ``logits`` (.., V) in any dtype: log pi(targets) (..) in float32 and, with
    ``entropy``, H (..) (detached unless ``entropy_grad``), else None; z as in the module docstring."""
    z = transform.apply(logits.float())
    if temperature != 1.0:
        z = z / temperature
    z = nucleus_logits(z, top_p, top_k, targets)
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, -1)
    return logp, (logits_entropy(z if entropy_grad else z.detach()) if entropy else None)


def logits_entropy(z: torch.Tensor) -> torch.Tensor:
    """H = -sum_v p_v log p_v of p = softmax(z) per row (..); -inf logits (outside the nucleus) contribute 0."""
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp.masked_fill(torch.isinf(z), 0.0)).sum(-1)


def nucleus_logits(z: torch.Tensor, top_p: float = 1.0, top_k: int = 0, targets: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """``z`` (.., V) with every token outside the top-k and the top-p nucleus set to -inf, as vLLM's
    sampler does it (`apply_top_k_top_p_pytorch`: sort ascending, drop tokens below the k-th largest,
    then those whose ascending cumulative probability is <= 1 - p, the largest always kept), so
    log_softmax of the result is the renormalised distribution the engine samples from and returns
    log-probs of (``logprobs_mode="processed_logprobs"``). ``targets``: ids kept whatever the
    boundary says (the engine sampled them, so they were in its nucleus; a float round-off at the
    boundary must not give -inf). No-op at top_p 1 and top_k 0 (or >= V)."""
    vocab = z.shape[-1]
    if top_p >= 1.0 and (top_k <= 0 or top_k >= vocab):
        return z
    ordered, order = z.sort(-1)
    if 0 < top_k < vocab:
        ordered = ordered.masked_fill(ordered < ordered[..., vocab - top_k:vocab - top_k + 1], float("-inf"))
    if top_p < 1.0:
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        ordered = ordered.masked_fill(drop, float("-inf"))
    out = torch.empty_like(z).scatter_(-1, order, ordered)
    if targets is not None:
        target = targets.unsqueeze(-1)
        out = out.scatter(-1, target, z.gather(-1, target))
    return out


def selected_logprobs(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor | None, targets: torch.Tensor,
                      mask: torch.Tensor, temperature: float = 1.0, attention_mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Log-probs (M,) of ``targets[mask]``, in the row-major order of ``mask`` (B, T); ``targets[b, t]``
    is the token position t predicts (already shifted). ``position_ids`` restarting inside a row of one
    (1, T) sequence mark packed rows (attention_mask None); padded rows pass their ``attention_mask``."""
    from rlaif.train.modeling import unwrap

    head = unwrap(model).get_output_embeddings()
    transform = head_transform_of(model)
    select = mask.bool()
    wanted = targets[select]
    result: list[torch.Tensor] = []

    def pre(_module: Any, args: tuple) -> tuple:
        hidden = args[0][select]                                         # (M, H)
        result.append(head_logprobs(head, hidden, wanted, temperature, transform=transform, hooks=False)[0])
        return (args[0][:, :0], *args[1:])                               # the head itself computes nothing

    handle = head.register_forward_pre_hook(pre)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    finally:
        handle.remove()
    return result[-1]
