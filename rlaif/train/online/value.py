"""PPO's value model V(x, y_<=t): a transformer backbone (no LM head) and a Linear(hidden, 1) head,
one value per token.

Initialisation ("The N+ implementation details of RLHF with PPO", Huang et al. 2024, arXiv
2403.17031, detail 2): from the reward model when the reward is one (``rlaif train rm`` output,
a ``*ForSequenceClassification`` with a ``score`` head): its backbone, and the value head copied
from the score head, so V at the last token starts at the RM's score. Without an RM (judge /
python rewards) it starts from the policy's backbone with a zero head whose bias the trainer
sets, at step 0, to the mean score of the first rollouts (`start_at_mean_score`): V = that mean
everywhere, the best constant guess (a zero bias would leave V = 0 while the returns sit at the
reward's mean c, and with GAE, lambda < 1, the advantages would carry c * lambda^(T-1-t), a
position pattern shared by every sequence). The value model reads the policy's token ids, so an
RM whose tokenizer differs from the policy's is refused.

Shared backbone (``value_head=shared``, `SharedValueHead`): the value head reads the policy's own
last hidden state (after the final norm, the LM head's input), so one model has two heads; in the
update one policy forward gives the log-probs and the values (`SharedValueHead.riding`), and the
value loss's gradient (times vf_coef) reaches the policy's backbone. The head starts at zero with
its bias at the first rollouts' mean score, whatever the rewards (an RM's score head was trained on
the RM's features, not the policy's).

On disk (``save_value_model``): the backbone's ``save_pretrained`` files plus
``value_head.safetensors`` (weight (1, H), bias (1,), fp32); a shared head writes the head file
alone, and `load_value_model` puts it back on the saved policy's backbone.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch

from rlaif.errors import UserError
from rlaif.train.modeling import position_ids, score_head, unwrap
from rlaif.train.packing import attends_per_row, pack_sharing_prefixes

HEAD_FILE = "value_head.safetensors"


class ValueModel(torch.nn.Module):
    """backbone (AutoModel of a causal LM or of the RM) + Linear(hidden, 1) in fp32."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token values (B, T) in fp32, for any padding side (positions count real tokens)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids(attention_mask), use_cache=False)
        hidden = out.last_hidden_state                                  # (B, T, H)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)  # (B, T)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Passed on to the backbone (the trainer's ``gradient_checkpointing`` setting)."""
        self.backbone.config.use_cache = False
        self.backbone.gradient_checkpointing_enable(**kwargs)


class SharedValueHead(torch.nn.Module):
    """A Linear(hidden, 1) fp32 head on the *policy's* last hidden state. The policy is held, not
    registered: ``parameters()``, ``state_dict()`` and ``.to()`` are the head's alone (the backbone's
    weights are the policy's, trained and saved with it)."""

    def __init__(self, policy: torch.nn.Module, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head
        object.__setattr__(self, "policy", policy)  # not a submodule: see the class docstring
        self.config = unwrap(policy).config

    def _decoder(self) -> torch.nn.Module:
        return unwrap(self.policy).get_decoder()  # PeftModel passes get_decoder on to the base model

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-token values (B, T) in fp32 from last hidden states (B, T, H)."""
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token values (B, T): the policy's decoder (no LM head) and the value head."""
        out = self._decoder()(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask), use_cache=False)
        return self.values(out.last_hidden_state)

    @contextmanager
    def riding(self) -> Iterator[Callable[..., torch.Tensor]]:
        """Within the block, the policy's forward also gives the values: yields a stand-in value model
        whose call returns the values (B, T) of the block's first policy forward (one forward, two
        heads; later forwards, e.g. a LoRA reference's, are ignored)."""
        captured: list[torch.Tensor] = []

        def keep(_module: Any, _inputs: Any, out: Any) -> None:
            captured.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

        def values_of(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.values(unpack_hidden(captured[0], input_ids, attention_mask, attends_per_row(self._decoder())))

        handle = self._decoder().register_forward_hook(keep)
        try:
            yield values_of
        finally:
            handle.remove()


def unpack_hidden(hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  shared: bool = True) -> torch.Tensor:
    """Hidden states (B, L, H) in the padded layout of ``attention_mask`` (B, L): as they are, or, from
    a packed forward (1, S, H) of ``batch.token_logprobs`` (rows sharing prefixes as
    `rlaif.train.packing.pack_sharing_prefixes` lays them out with ``shared``), gathered back to their
    rows with zeros on padding."""
    if hidden.shape[:2] == attention_mask.shape:
        return hidden
    index = pack_sharing_prefixes(input_ids.cpu(), attention_mask.cpu(), shared).index.to(hidden.device)
    return hidden[0][index] * attention_mask.unsqueeze(-1).to(hidden.dtype)


def is_shared(model: Any) -> bool:
    """Whether ``model`` is a value head on the policy's backbone."""
    return isinstance(unwrap(model), SharedValueHead)


def riding_values(value_model: Any) -> ContextManager[Any]:
    """`SharedValueHead.riding` for a shared head; else the value model itself (its own forward)."""
    return unwrap(value_model).riding() if is_shared(value_model) else nullcontext(value_model)


def shared_value_head(policy: torch.nn.Module) -> SharedValueHead:
    """A zero value head on ``policy``'s last hidden state (its bias is set at step 0: `start_at_mean_score`)."""
    return SharedValueHead(policy, _head(unwrap(policy).config.hidden_size))


@torch.no_grad()
def start_at_mean_score(model: torch.nn.Module, scores: torch.Tensor, valid: torch.Tensor) -> float:
    """Set the (zero) head's bias to the mean of the valid ``scores`` (N,), so V = that mean at every
    token before any training; returns it (0 when nothing is valid)."""
    head = unwrap(model).head
    v = valid.to(scores.dtype)
    mean = float((scores * v).sum() / v.sum()) if float(v.sum()) > 0 else 0.0
    head.bias.fill_(mean)
    return mean


def _head(hidden: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.nn.Linear:
    """Linear(hidden, 1) in fp32, zero unless ``weight`` (1, H) / ``bias`` (1,) are given."""
    head = torch.nn.Linear(hidden, 1, bias=True, dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(weight if weight is not None else torch.zeros(1, hidden))
        head.bias.copy_(bias if bias is not None else torch.zeros(1))
    return head


def _same_tokenizer(policy_dir: str, reward_model_dir: str) -> bool:
    """Both folders' tokenizers map the same strings to the same ids."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(policy_dir).get_vocab() == \
        AutoTokenizer.from_pretrained(reward_model_dir).get_vocab()


def _from_reward_model(policy_dir: str, reward_model_dir: str, dtype: Any) -> ValueModel:
    from transformers import AutoModelForSequenceClassification

    try:
        same = _same_tokenizer(policy_dir, reward_model_dir)
        rm = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=1, dtype=dtype)
    except (OSError, ValueError) as err:
        raise UserError(f"value model: cannot load reward model '{reward_model_dir}': "
                        f"{str(err).splitlines()[0]}") from None
    if not same:
        raise UserError(f"value model: reward model '{reward_model_dir}' has another tokenizer than the "
                        f"policy '{policy_dir}'; the value model reads the policy's tokens, so it cannot "
                        f"start from this RM (train the RM on the policy's tokenizer)")
    score = score_head(rm)
    bias = score.bias.detach().float() if getattr(score, "bias", None) is not None else None
    head = _head(rm.config.hidden_size, score.weight.detach().float(), bias)
    return ValueModel(rm.base_model, head)


def build_value_model(policy_dir: str, reward_model_dir: str | None, dtype: Any = torch.float32) -> ValueModel:
    """The value model: from the RM (backbone + score head) when given, else the policy's backbone
    with a zero head. ``dtype``: the backbone's weights (a torch dtype or its name)."""
    if reward_model_dir:
        return _from_reward_model(policy_dir, reward_model_dir, dtype)
    from transformers import AutoModel

    try:
        backbone = AutoModel.from_pretrained(policy_dir, dtype=dtype)
    except (OSError, ValueError) as err:
        raise UserError(f"value model: cannot load '{policy_dir}': {str(err).splitlines()[0]}") from None
    return ValueModel(backbone, _head(backbone.config.hidden_size))


def save_value_model(model: torch.nn.Module, out_dir: str | Path) -> None:
    """Write the backbone (``save_pretrained``, safetensors) and ``value_head.safetensors`` to out_dir."""
    from safetensors.torch import save_file

    model = unwrap(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not is_shared(model):  # a shared head's backbone is the policy, saved beside value/
        model.backbone.save_pretrained(out, safe_serialization=True)
    head = {"weight": model.head.weight.detach().float().cpu().contiguous(),
            "bias": model.head.bias.detach().float().cpu().contiguous()}
    save_file(head, str(out / HEAD_FILE))



def load_value_model(value_dir: str | Path, policy_dir: str | Path | None = None,
                     dtype: Any = torch.float32) -> ValueModel:
    """A value model from what `save_value_model` wrote to ``value_dir``: its own backbone, or for a
    shared head (no config.json there) the backbone of the policy saved in ``policy_dir`` (default:
    the folder above, the trainer's --out)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    value_dir = Path(value_dir)
    backbone_dir = value_dir if (value_dir / "config.json").is_file() else Path(policy_dir or value_dir.parent)
    try:
        backbone = AutoModel.from_pretrained(str(backbone_dir), dtype=dtype)
        head = load_file(str(value_dir / HEAD_FILE))
    except (OSError, ValueError) as err:
        raise UserError(f"value model: cannot load '{value_dir}': {str(err).splitlines()[0]}") from None
    return ValueModel(backbone, _head(backbone.config.hidden_size, head["weight"], head["bias"]))
