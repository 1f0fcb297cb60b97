"""Score (prompt, response) pairs with a reward model trained by ``rlaif train rm``.

    from rlaif.train.score import score
    score(["What is 2+2?"], ["4"], model="outputs/rm")          # -> [1.73]

A prompt is a string (one user turn) or a list of chat messages. Conversations are rendered
with the model's chat template exactly as in training, and the score is read at the last real
token (see modeling.reward_scores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from rlaif.errors import UserError, where
from rlaif.io.records import as_messages
from rlaif.train.config import ScoreConfig
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



def read_score_rows(path: Path) -> list[dict[str, Any]]:
    """Lines with ``prompt`` (string or messages) and ``response`` (string), or a preference pair
    (``chosen``/``rejected``, strings or [{"role": "assistant", ...}])."""
    from rlaif.io.records import iter_jsonl

    rows = []
    for line, obj in iter_jsonl(path, objects_only=True):
        prompt = obj.get("prompt", obj.get("messages"))
        if not isinstance(prompt, (str, list)) or not prompt:
            raise UserError(f"{where(path, line, 'prompt')}expected a string or a list of messages")
        keys = ["response"] if "response" in obj else ["chosen", "rejected"]
        texts = {}
        for key in keys:
            value = obj.get(key)
            if isinstance(value, list) and value and isinstance(value[-1], dict):
                value = value[-1].get("content")
            if not isinstance(value, str):
                raise UserError(f"{where(path, line, key)}expected a string (or a 'response' field)")
            texts[key] = value
        rows.append({"obj": obj, "prompt": prompt, "texts": texts})
    if not rows:
        raise UserError(f"{path}: no rows to score")
    return rows


def pairwise_accuracy(records: list[dict[str, Any]]) -> tuple[float, int] | None:
    """Share of the scored pairs with reward_chosen > reward_rejected, and the pair count (None: no pairs)."""
    pairs = [record for record in records if "reward_chosen" in record]
    if not pairs:
        return None
    return sum(pair["reward_chosen"] > pair["reward_rejected"] for pair in pairs) / len(pairs), len(pairs)


def score_file(cfg: ScoreConfig) -> None:
    """``rlaif rm score``: each line of ``cfg.data`` written back (to ``cfg.out`` or stdout) with
    ``score``, or ``reward_chosen``/``reward_rejected`` and the pairwise accuracy on stderr."""
    rows = read_score_rows(Path(cfg.data))
    reward_model = RewardModel(cfg.model, device=cfg.device or None, max_length=cfg.max_length,
                               max_prompt_length=cfg.max_length // 2)
    prompts, responses, slots = [], [], []
    for index, row in enumerate(rows):
        for key, text in row["texts"].items():
            prompts.append(row["prompt"])
            responses.append(text)
            slots.append((index, key))
    values = reward_model(prompts, responses, batch_size=cfg.batch_size)
    for (index, key), value in zip(slots, values):
        rows[index]["obj"]["score" if key == "response" else f"reward_{key}"] = value
    out = open(cfg.out, "w", encoding="utf-8") if cfg.out else sys.stdout
    try:
        for row in rows:
            out.write(json.dumps(row["obj"], ensure_ascii=False) + "\n")
    finally:
        if cfg.out:
            out.close()
    accuracy = pairwise_accuracy([row["obj"] for row in rows])
    if accuracy is not None:
        print(f"pairwise accuracy (reward_chosen > reward_rejected): {accuracy[0]:.3f} on {accuracy[1]} pairs",
              file=sys.stderr)
