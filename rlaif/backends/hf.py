"""transformers engine: batched sampling with left padding; the fallback when vLLM is missing.

Sampling is a small loop of our own over the model's KV cache rather than ``generate``: every
row (one sample of one conversation) draws from its own ``torch.Generator`` seeded from the
conversation's seed and the sample index, so a conversation's samples do not depend on which
other conversations share its batch (``generate`` draws from one global stream). Rows are
sorted by prompt length before batching to keep padding small; the ``n`` samples of a prompt
share one prefill (its KV cache is copied to each), only the last position's logits are
computed, and a finished row leaves the batch at once (its KV cache rows are dropped).

Per step, for each row: logits / temperature -> top-p filter (smallest set of tokens whose
probability reaches ``top_p``, Holtzman et al. 2020) -> one inverse-CDF draw; ``temperature == 0``
is greedy (argmax). A row finishes on an EOS token ("stop"), on a stop string ("stop", text cut
before it), or after ``max_tokens`` ("length").

``SamplingParams.json_schema`` is enforced with xgrammar (Dong et al. 2024): each row has a
grammar matcher; before each draw the tokens that cannot continue valid JSON of the schema get
logit -inf, and once the JSON is complete only EOS is allowed. No free whitespace (xgrammar's
``any_whitespace=False``: separators ``", "`` and ``": "``), as the vllm engine asks for. A row
cut by ``max_tokens`` still ends mid-JSON ("length").

Each completion carries the sampled ``token_ids`` (EOS included when it stopped on EOS) and, with
``SamplingParams.logprobs``, each sampled token's log-probability under the distribution it was
drawn from: log of its probability in ``softmax(logits / temperature)`` after the grammar mask and
the top-p filter, renormalized over the kept tokens; greedy: ``log_softmax(logits)`` at the argmax.
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from rlaif.backends.base import BackendConfig, Completion, Conversation, Generation, SamplingParams
from rlaif.backends.choices import choice_token_ids, combine, render_prompt
from rlaif.backends.hf_sampling import RowState, constrain, sample
from rlaif.backends.turns import reply_token_ids
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


def select_rows(past: Any, index: torch.Tensor) -> None:
    """Keep (or repeat) the rows ``index`` of a transformers cache, in place. Its attention layers do this
    themselves (``batch_select_indices``); the conv and recurrent states of state-space / conv layers
    (``LinearAttentionLayer``: LFM2, Mamba hybrids), which have no such method, are indexed here."""
    for layer in past.layers:
        if hasattr(layer, "batch_select_indices"):
            layer.batch_select_indices(index)
            continue
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name, None) or {}
            for key, state in states.items():
                if state is not None:
                    states[key] = state[index]


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input ids padded on the left, and the matching attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


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
        self._grammar_compiler: Any = None  # xgrammar, built on the first json_schema
        self._grammars: dict[str, Any] = {}

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
                 positions: torch.Tensor | None = None, logits_to_keep: int | torch.Tensor = 1) -> Any:
        """One forward pass; logits only at ``logits_to_keep`` (default: the last position)."""
        if positions is None:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                          past_key_values=past, use_cache=True, logits_to_keep=logits_to_keep)

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """The schema compiled by xgrammar for this tokenizer (cached per schema); no free
        whitespace, as the vllm engine asks for (``disable_any_whitespace``)."""
        import xgrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._grammar_compiler is None:
                vocab = self.model.get_output_embeddings().weight.shape[0]  # logits width (may exceed the tokenizer's)
                info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab,
                                                               stop_token_ids=sorted(self.eos_ids))
                self._grammar_compiler = xgrammar.GrammarCompiler(info)
            try:
                self._grammars[key] = self._grammar_compiler.compile_json_schema(key, any_whitespace=False)
            except Exception as e:  # xgrammar raises RuntimeError/ValueError subclasses for bad schemas
                raise UserError(f"json_schema: xgrammar cannot compile it: {str(e).splitlines()[0]}") from None
        return self._grammars[key]

    def _generate_rows(self, prompts: list[list[int]], params: SamplingParams,
                       generators: list[torch.Generator]) -> list[Completion]:
        """Sample one completion per row of one batch; rows with the same prompt (consecutive in
        ``prompts``) share one prefill, and a finished row leaves the batch (its KV cache rows are
        dropped), so the remaining rows step alone."""
        rows = RowState.start(prompts, params.max_tokens, self.config.max_model_len)
        steps = max(rows.room)
        if steps <= 0:
            return self._completions(rows.tokens, rows.logprobs, rows.finish, rows.stop_text, params)
        # row i's uniforms for all its steps, from its own generator: batch-independent draws
        uniforms = torch.stack([torch.rand(params.max_tokens, generator=g) for g in generators]).to(self.device)
        matchers, bitmask = self._matchers(params, len(prompts))
        past, logits, mask = self._prefill(prompts)
        positions = mask.sum(-1, keepdim=True) - 1  # (B, 1) position of each row's last token
        active = [row for row in range(len(prompts)) if rows.finish[row] is None]  # batch slot s is row active[s]
        if len(active) < len(prompts):
            keep = torch.tensor(active, device=self.device)
            select_rows(past, keep)
            mask, logits, positions, uniforms = mask[keep], logits[keep], positions[keep], uniforms[keep]
        for step in range(steps):
            if not active:
                break
            if matchers is not None:
                logits = constrain(logits, [matchers[row] for row in active], bitmask)
            next_ids, next_logprobs = sample(logits, params, uniforms[:, step], params.logprobs)
            chosen = next_ids.tolist()  # the step's one device -> host sync (two with log-probs)
            chosen_logprobs = next_logprobs.tolist() if next_logprobs is not None else None
            for slot, row in enumerate(active):
                self._take(rows, row, chosen[slot], None if chosen_logprobs is None else chosen_logprobs[slot],
                           params, None if matchers is None else matchers[row])
            still = [slot for slot, row in enumerate(active) if rows.finish[row] is None]
            if not still:
                break
            if len(still) < len(active):  # finished rows stop stepping
                keep = torch.tensor(still, device=self.device)
                select_rows(past, keep)
                mask, positions, next_ids, uniforms = mask[keep], positions[keep], next_ids[keep], uniforms[keep]
                active = [active[slot] for slot in still]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            positions = positions + 1
            out = self._forward(next_ids.unsqueeze(-1), mask, past, positions)
            past, logits = out.past_key_values, out.logits[:, -1, :]
        return self._completions(rows.tokens, rows.logprobs, rows.finish, rows.stop_text, params)

    def _matchers(self, params: SamplingParams, batch: int) -> tuple[list[Any] | None, Any]:
        """One xgrammar matcher per row and their shared token bitmask, for ``json_schema``; else None."""
        if params.json_schema is None:
            return None, None
        import xgrammar

        grammar = self._grammar(params.json_schema)
        matchers = [xgrammar.GrammarMatcher(grammar) for _ in range(batch)]
        return matchers, xgrammar.allocate_token_bitmask(batch, grammar.tokenizer_info.vocab_size)

    def _take(self, rows: RowState, row: int, token: int, logprob: float | None, params: SamplingParams,
              matcher: Any) -> None:
        """Append the sampled token to ``row``; it finishes on EOS, a stop string or its token budget."""
        rows.tokens[row].append(token)
        if logprob is not None:
            rows.logprobs[row].append(logprob)
        if matcher is not None:
            matcher.accept_token(token)
        if token in self.eos_ids:
            rows.finish[row] = "stop"
        elif params.stop:
            text = self.tokenizer.decode(rows.tokens[row], skip_special_tokens=True)
            cut = min((text.find(stop) for stop in params.stop if stop in text), default=-1)
            if cut >= 0:
                rows.finish[row], rows.stop_text[row] = "stop", text[:cut]
        if rows.finish[row] is None and len(rows.tokens[row]) >= rows.room[row]:
            rows.finish[row] = "length"

    def _prefill(self, prompts: list[list[int]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """KV cache, last-position logits (B, V) and attention mask of left-padded ``prompts``,
        with one forward row per run of equal consecutive prompts (the n samples of a prompt)."""
        firsts = [i for i in range(len(prompts)) if i == 0 or prompts[i] != prompts[i - 1]]
        ids, mask = _left_pad([prompts[i] for i in firsts], self.pad_id, self.device)
        out = self._forward(ids, mask)
        past, logits = out.past_key_values, out.logits[:, -1, :]
        if len(firsts) < len(prompts):  # copy each prompt's cache row to its samples
            starts = set(firsts)
            owner = torch.tensor(list(itertools.accumulate(int(i in starts) for i in range(len(prompts)))),
                                 device=self.device) - 1
            select_rows(past, owner)
            mask, logits = mask[owner], logits[owner]
        return past, logits, mask

    def _completions(self, tokens: list[list[int]], logprobs: list[list[float]], finish: list[str | None],
                     stop_text: list[str | None], params: SamplingParams) -> list[Completion]:
        comps = []
        for i, toks in enumerate(tokens):
            body = toks[:-1] if toks and toks[-1] in self.eos_ids else toks
            text = stop_text[i] if stop_text[i] is not None else self.tokenizer.decode(body, skip_special_tokens=True)
            comps.append(Completion(text=text, num_tokens=len(toks), finish_reason=finish[i] or "length",
                                    token_ids=toks, logprobs=logprobs[i] if params.logprobs else None))
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
        if params.json_schema is not None:
            self._grammar(params.json_schema)  # a bad schema fails before any sampling
        # one row per (prompt, sample); row r = prompt r // n, sample r % n; a prompt's rows stay
        # consecutive after the (stable) sort by length, so they share a prefill
        samples = params.n
        rows = [(prompt_index, sample) for prompt_index in range(len(prompts)) for sample in range(samples)]
        results: list[Completion | None] = [None] * len(rows)
        with tqdm(total=len(rows), desc="hf generate", unit="sample", disable=not progress) as bar:
            for batch in self._batches(len(rows), [len(prompts[prompt_index]) for prompt_index, _ in rows]):
                gens: list[torch.Generator] = []
                for row_index in batch:
                    prompt_index, sample = rows[row_index]
                    seed = seeds[prompt_index] if seeds is not None else params.seed
                    seed = random.getrandbits(62) if seed is None else mix_seed(seed)
                    gens.append(torch.Generator().manual_seed(seed + sample))
                comps = self._generate_rows([list(prompts[rows[row_index][0]]) for row_index in batch], params,
                                            gens)
                for row_index, comp in zip(batch, comps):
                    results[row_index] = comp
                bar.update(len(batch))
        return [Generation(completions=[results[index * samples + sample]  # type: ignore[misc]
                                        for sample in range(samples)],
                           prompt_tokens=len(prompts[index])) for index in range(len(prompts))]

    def response_logprobs(self, conversations: Sequence[Conversation], responses: Sequence[str],
                          progress: bool = True) -> list[list[float]]:
        """log p(reply token | everything before it) for each reply token (split by
        `rlaif.backends.turns.reply_token_ids`): one prefill per pair, rows padded on the right
        (positions 0.. as unpadded), logits only over the span where replies sit."""
        if len(responses) != len(conversations):
            raise ValueError(f"{len(responses)} responses for {len(conversations)} conversations")
        splits = [reply_token_ids(self.tokenizer, c, r) for c, r in zip(conversations, responses)]
        results: list[list[float]] = [[] for _ in splits]
        with tqdm(total=len(splits), desc="hf response logprobs", unit="pair", disable=not progress) as bar:
            for batch in self._batches(len(splits), [len(p) + len(r) for p, r in splits]):
                rows = [splits[i][0] + splits[i][1] for i in batch]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for slot, row_ids in enumerate(rows):
                    ids[slot, :len(row_ids)], mask[slot, :len(row_ids)] = torch.tensor(row_ids), 1
                # logits at position t predict token t + 1: keep the span from the first reply's predictor
                first = min(len(splits[i][0]) for i in batch) - 1
                span = torch.arange(first, width - 1, device=self.device)
                positions = torch.arange(width, device=self.device).expand(len(rows), width)
                logits = self._forward(ids.to(self.device), mask.to(self.device), positions=positions,
                                       logits_to_keep=span).logits  # (B, len(span), V), the model's dtype
                for slot, i in enumerate(batch):
                    prompt, reply = splits[i]
                    at = len(prompt) - 1 - first  # the row's first reply token is predicted at span[at]
                    row = logits[slot, at:at + len(reply)].float()  # (len(reply), V); one row in float at a time
                    target = torch.tensor(reply, device=self.device).unsqueeze(-1)
                    results[i] = (row.gather(-1, target).squeeze(-1) - row.logsumexp(-1)).tolist()
                bar.update(len(batch))
        return results

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        ids_by_choice = choice_token_ids(self.tokenizer, choices)
        wanted = sorted({token_id for ids in ids_by_choice.values() for token_id in ids})
        prompts = [self._encode(c, assistant_prefix) for c in conversations]
        results: list[dict[str, float]] = [{} for _ in prompts]
        with tqdm(total=len(prompts), desc="hf choice logprobs", unit="prompt", disable=not progress) as bar:
            for batch in self._batches(len(prompts), [len(p) for p in prompts]):
                ids, mask = _left_pad([prompts[i] for i in batch], self.pad_id, self.device)
                logits = self._forward(ids, mask).logits[:, -1, :].float()  # (B, V): one forward, last position only
                logp = (logits[:, wanted] - logits.logsumexp(-1, keepdim=True)).cpu()  # (B, len(wanted))
                for row, i in enumerate(batch):
                    results[i] = combine(dict(zip(wanted, logp[row].tolist())), ids_by_choice)
                bar.update(len(batch))
        return results

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
