"""transformers engine: batched sampling with left padding; the fallback when vLLM is missing.

Sampling is a small loop of our own over the model's KV cache rather than ``generate``: every
row (one sample of one conversation) draws from its own ``torch.Generator`` seeded from the
conversation's seed and the sample index, so a conversation's samples do not depend on which
other conversations share its batch (``generate`` draws from one global stream). Rows are
sorted by prompt length before batching to keep padding small.

Per step, for each row: logits / temperature -> top-p filter (smallest set of tokens whose
probability reaches ``top_p``, Holtzman et al. 2020) -> one multinomial draw; ``temperature == 0``
is greedy (argmax). A row finishes on an EOS token ("stop"), on a stop string ("stop", text cut
before it), or after ``max_tokens`` ("length"). JSON schemas are not enforced here (no
structured decoding); callers validate replies.

Each completion carries the sampled ``token_ids`` (EOS included when it stopped on EOS) and, with
``SamplingParams.logprobs``, each sampled token's log-probability under the distribution it was
drawn from: log of its probability in ``softmax(logits / temperature)`` after the top-p filter,
renormalized over the kept tokens; greedy: ``log_softmax(logits)`` at the argmax.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from rlaif.backends.base import BackendConfig, Completion, Conversation, Generation, SamplingParams
from rlaif.backends.choices import choice_token_ids, combine, render_prompt
from rlaif.errors import UserError
from rlaif.io.seeds import mix_seed
from rlaif.models import check_causal_lm, resolve_model


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, {"half": "float16", "float": "float32"}.get(name, name), None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"option 'dtype': unknown dtype {name!r} (use auto, float32, bfloat16, float16)")
    return dtype


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input ids padded on the left, and the matching attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _sample(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One next token per row from (B, V) logits; row i draws only from ``generators[i]``."""
    return _sample_logprobs(logits, params, generators, with_logprobs=False)[0]


def _sample_logprobs(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator | None],
                     with_logprobs: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B,) next tokens and (B,) their log-probs under the distribution they were drawn from.

    Inverse-CDF sampling: u_i ~ U(0, 1) from row i's generator, token = first index whose
    cumulative probability exceeds u_i * total (zero-probability tokens are never picked). The
    log-prob is log(p_token / total): the top-p-filtered distribution, renormalized.
    """
    if params.temperature <= 0:
        tokens = logits.argmax(dim=-1)
        if not with_logprobs:
            return tokens, None
        return tokens, torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)  # (B, V)
    order = None
    if params.top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        keep = probs.cumsum(dim=-1) - probs < params.top_p  # always keeps the top token
        probs = probs * keep
    cum = probs.cumsum(dim=-1)  # (B, V)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(cum.device) * cum[:, -1]  # (B,)
    idx = torch.searchsorted(cum, u.unsqueeze(-1), right=True).clamp(max=cum.shape[-1] - 1)  # (B, 1)
    logp = (probs.gather(-1, idx).squeeze(-1) / cum[:, -1]).log()  # (B,)
    if order is not None:
        idx = order.gather(-1, idx)
    return idx.squeeze(-1), logp


class HFBackend:
    """``Backend`` over a transformers causal LM (fp32 on CPU, bf16 on GPU by default)."""

    def __init__(self, config: BackendConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        path = resolve_model(config.model)
        check_causal_lm(path)
        self.device = _pick_device(config.device)
        dtype = _pick_dtype(config.dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"model '{config.model}': could not load it with transformers: "
                            f"{str(e).splitlines()[0]}") from None
        self._set_special_ids()
        self.model_id = f"hf:{config.model}"

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, config: BackendConfig | None = None) -> "HFBackend":
        """An engine over a model already in memory (e.g. the policy being trained: RL rollouts
        then sample from its current weights). It runs on the model's own device and dtype."""
        self = cls.__new__(cls)
        self.config = config or BackendConfig(engine="hf", max_model_len=None)
        self.device = next(model.parameters()).device
        self.tokenizer, self.model = tokenizer, model
        self._set_special_ids()
        self.model_id = "hf:in-memory"
        return self

    def _set_special_ids(self) -> None:
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos = [self.tokenizer.eos_token_id] + (gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = {e for e in eos if e is not None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)

    # -- helpers ---------------------------------------------------------------------------
    def _encode(self, conversation: Conversation, assistant_prefix: str = "") -> list[int]:
        ids = self.tokenizer.encode(render_prompt(self.tokenizer, conversation, assistant_prefix),
                                    add_special_tokens=False)
        limit = self.config.max_model_len
        if limit is not None and len(ids) >= limit:
            raise UserError(f"a prompt has {len(ids)} tokens, not less than max_model_len={limit}; "
                            f"shorten it or raise max_model_len")
        return ids

    def _batches(self, n_rows: int, lengths: list[int]) -> list[list[int]]:
        order = sorted(range(n_rows), key=lambda r: -lengths[r])
        size = max(1, self.config.batch_size)
        return [order[i:i + size] for i in range(0, n_rows, size)]

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, past: Any = None,
                 positions: torch.Tensor | None = None) -> Any:
        if positions is None:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                          past_key_values=past, use_cache=True)

    def _generate_rows(self, prompts: list[list[int]], params: SamplingParams,
                       generators: list[torch.Generator | None]) -> list[Completion]:
        """Sample one completion per row of one batch (rows share the KV cache loop)."""
        B = len(prompts)
        ids, mask = _left_pad(prompts, self.pad_id, self.device)
        # per-row budget, so a row's result never depends on its batch companions
        room = [params.max_tokens if self.config.max_model_len is None
                else min(params.max_tokens, self.config.max_model_len - len(p)) for p in prompts]
        out = self._forward(ids, mask)
        positions = mask.sum(-1, keepdim=True) - 1  # (B, 1) position of the last prompt token
        tokens: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        finish: list[str | None] = ["length" if r <= 0 else None for r in room]
        stop_text: list[str | None] = [None] * B  # text cut before a stop string
        for _ in range(max(room)):
            nxt_t, logp_t = _sample_logprobs(out.logits[:, -1, :], params, generators, params.logprobs)  # (B,)
            nxt = nxt_t.tolist()
            logp = logp_t.tolist() if logp_t is not None else [0.0] * B
            for i, t in enumerate(nxt):
                if finish[i] is not None:
                    continue
                tokens[i].append(t)
                logprobs[i].append(logp[i])
                if t in self.eos_ids:
                    finish[i] = "stop"
                elif params.stop:
                    text = self.tokenizer.decode(tokens[i], skip_special_tokens=True)
                    cut = min((text.find(s) for s in params.stop if s in text), default=-1)
                    if cut >= 0:
                        finish[i], stop_text[i] = "stop", text[:cut]
                if finish[i] is None and len(tokens[i]) >= room[i]:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            # finished rows keep stepping (masked tokens are cheap at this size) so shapes stay (B, 1)
            step = torch.tensor(nxt, device=self.device).unsqueeze(-1)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=self.device)], dim=-1)
            positions = positions + 1
            out = self._forward(step, mask, out.past_key_values, positions)
        comps = []
        for i in range(B):
            body = tokens[i][:-1] if tokens[i] and tokens[i][-1] in self.eos_ids else tokens[i]
            text = stop_text[i] if stop_text[i] is not None else self.tokenizer.decode(body, skip_special_tokens=True)
            comps.append(Completion(text=text, num_tokens=len(tokens[i]), finish_reason=finish[i] or "length",  # type: ignore[arg-type]
                                    token_ids=tokens[i], logprobs=logprobs[i] if params.logprobs else None))
        return comps

    # -- Backend ---------------------------------------------------------------------------
    def chat(self, conversations: Sequence[Conversation], params: SamplingParams,
             seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        if seeds is not None and len(seeds) != len(conversations):
            raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
        return self.generate_ids([self._encode(c) for c in conversations], params, seeds, progress)

    def generate_ids(self, prompts: Sequence[list[int]], params: SamplingParams,
                     seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        """`chat` on prompts already tokenized (chat template applied): ``params.n`` samples each.

        Sample k of prompt i draws from a generator seeded ``mix_seed(seeds[i]) + k`` (or
        ``params.seed``; ``None``: random), so it ignores its batch companions."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        # one row per (prompt, sample); row r = prompt r // n, sample r % n
        n = params.n
        rows = [(c, k) for c in range(len(prompts)) for k in range(n)]
        results: list[Completion | None] = [None] * len(rows)
        with tqdm(total=len(rows), desc="hf generate", unit="sample", disable=not progress) as bar:
            for batch in self._batches(len(rows), [len(prompts[c]) for c, _ in rows]):
                gens: list[torch.Generator | None] = []
                for r in batch:
                    c, k = rows[r]
                    seed = seeds[c] if seeds is not None else params.seed
                    seed = random.getrandbits(62) if seed is None else mix_seed(seed)
                    gens.append(torch.Generator().manual_seed(seed + k))
                comps = self._generate_rows([list(prompts[rows[r][0]]) for r in batch], params, gens)
                for r, comp in zip(batch, comps):
                    results[r] = comp
                bar.update(len(batch))
        return [Generation(completions=[results[c * n + k] for k in range(n)],  # type: ignore[misc]
                           prompt_tokens=len(prompts[c])) for c in range(len(prompts))]

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        ids_by_choice = choice_token_ids(self.tokenizer, choices)
        wanted = sorted({t for ids in ids_by_choice.values() for t in ids})
        prompts = [self._encode(c, assistant_prefix) for c in conversations]
        results: list[dict[str, float]] = [{} for _ in prompts]
        with tqdm(total=len(prompts), desc="hf choice logprobs", unit="prompt", disable=not progress) as bar:
            for batch in self._batches(len(prompts), [len(p) for p in prompts]):
                ids, mask = _left_pad([prompts[i] for i in batch], self.pad_id, self.device)
                logits = self._forward(ids, mask).logits[:, -1, :]  # (B, V)
                logp = torch.log_softmax(logits.float(), dim=-1)[:, wanted].cpu()  # (B, len(wanted))
                for row, i in enumerate(batch):
                    results[i] = combine(dict(zip(wanted, logp[row].tolist())), ids_by_choice)
                bar.update(len(batch))
        return results

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
