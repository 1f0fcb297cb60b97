"""Score (prompt, response) pairs with a reward model trained by ``rlaif train rm``.

    from rlaif.train.score import score
    score(["What is 2+2?"], ["4"], model="outputs/rm")          # -> [1.73]

A prompt is a string (one user turn) or a list of chat messages. Conversations are rendered
with the model's chat template exactly as in training, and the score is read at the last real
token (see modeling.reward_scores).
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlaif.io.records import as_messages
from rlaif.train.data import PreferenceRow, pad_right, tokenize_pair

Prompt = str | list[dict[str, str]]


class RewardModel:
    """A loaded reward model; ``__call__(prompts, responses) -> list[float]``."""

    def __init__(self, path: str, device: str | None = None, max_length: int = 2048,
                 max_prompt_length: int = 1024) -> None:
        from rlaif.models import resolve_model
        from rlaif.train.modeling import load_reward_model, load_tokenizer

        path = resolve_model(path)
        self.tokenizer = load_tokenizer(path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = load_reward_model(path, self.tokenizer.pad_token_id).to(self.device, dtype).eval()
        self.max_length, self.max_prompt_length = max_length, max_prompt_length

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int = 8) -> list[float]:
        from rlaif.train.modeling import reward_scores

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        # Same templating and truncation as training (the response doubles as a dummy 'rejected').
        pairs = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            reply = [{"role": "assistant", "content": r}]
            row = PreferenceRow(as_messages(p), reply, reply)
            pairs.append(tokenize_pair(self.tokenizer, row, self.max_length, self.max_prompt_length, index=i))
        seqs = [p.prompt_ids + p.chosen_ids for p in pairs]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # little padding per batch
        scores = [0.0] * len(seqs)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            input_ids, attention_mask = pad_right([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            values = reward_scores(self.model, input_ids.to(self.device), attention_mask.to(self.device))
            for i, v in zip(idx, values.tolist()):
                scores[i] = v
        return scores


def score(prompts: Sequence[Prompt], responses: Sequence[str], model: str, batch_size: int = 8,
          device: str | None = None) -> list[float]:
    """Reward of each (prompt, response) pair under the reward model at ``model`` (a folder)."""
    return RewardModel(model, device=device)(prompts, responses, batch_size=batch_size)

