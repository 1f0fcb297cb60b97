"""What `rubric preview` and the rubric studio show: the exact judge input after the engine's chat
template, and a verdict row as text (score distributions, both pairwise orders, likelihood and
rules details).
"""

from __future__ import annotations

import json
from typing import Any


def chat_text(backend: Any, conversation: list[dict[str, str]], assistant_prefix: str) -> str:
    """What the engine feeds the model: its tokenizer's chat template + prefix, where it has one."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "apply_chat_template"):
        from rlaif.backends.choices import render_prompt

        return render_prompt(tokenizer, conversation, assistant_prefix)
    text = "\n".join(f"[{m['role']}]\n{m['content']}" for m in conversation)
    return f"{text}\n[assistant]\n{assistant_prefix}\n(messages as sent; the engine applies its chat template)"


def scored_text(backend: Any, conversation: list[dict[str, str]], reply: str) -> str:
    """likelihood: the exact scored input, the scored reply tokens between >>> and <<<."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "apply_chat_template"):
        from rlaif.backends.turns import reply_token_ids

        prompt, ids = reply_token_ids(tokenizer, conversation, reply)
        return (f"{tokenizer.decode(prompt)}>>>{tokenizer.decode(ids)}<<<\n"
                f"(scored: the {len(ids)} tokens between >>> and <<<, {tokenizer.convert_ids_to_tokens(ids)})")
    return chat_text(backend, conversation, "") + f"\n>>>{reply}<<< (scored, with the end-of-turn marker)"


def _bar(p: float, width: int = 30) -> str:
    return "#" * round(p * width)


def format_preview(rubric: Any, item: Any, row: dict[str, Any], inputs: list[tuple[str, str]]) -> str:
    out = []
    for title, text in inputs:
        out += [f"=== judge input: {title} ===", text, ""]
    out.append(f"=== verdict ({rubric.method}, judge {row['judge']}) ===")
    if rubric.method == "likelihood":
        for i, (score, det) in enumerate(zip(row["scores"], row["details"])):
            if score is None:
                out.append(f"response {i}: failed: {det.get('error')}")
                continue
            line = (f"response {i}: score {score:.4f}  mean log-prob {det['mean_logprob']:.3f} over "
                    f"{det['tokens']} tokens")
            if "pmi" in det:
                line += (f"; neutral {det['mean_logprob_neutral']:.3f}, PMI {det['pmi']:+.3f} per token; "
                         f"score = sigmoid(PMI)")
            else:
                line += " (score = exp(mean log-prob), the per-token geometric-mean probability)"
            out.append(line)
    elif rubric.method == "rules":
        for i, (score, det) in enumerate(zip(row["scores"], row["details"])):
            total = sum(c["weight"] for c in det["checks"] if c["passed"] is not None)
            out.append(f"response {i}: score " + ("FAILED: " + det["error"] if score is None else
                                                  f"{score:.3f} (passed weight / evaluated weight {total:g})"))
            width = max(len(c["check"]) for c in det["checks"])
            for c in det["checks"]:
                mark = {True: "pass", False: "FAIL", None: "skip"}[c["passed"]]
                out.append(f"  {mark}  {c['check']:<{width}}  w={c['weight']:g}  {c['why']}")
    elif rubric.method == "logprob":
        for i, (score, det) in enumerate(zip(row["scores"], row["details"])):
            if score is None:
                out.append(f"response {i}: failed: {det.get('error')}")
                continue
            out.append(f"response {i}: expected score {score:.2f} on [{row['scale'][0]}, {row['scale'][1]}]"
                       f"  (probability mass on the scale tokens: {det['mass']:.2f})")
            for s, p in (det.get("distribution") or {}).items():
                out.append(f"  {s}: {p:.3f} {_bar(p)}")
    elif rubric.method == "verdict":
        for i, (score, det) in enumerate(zip(row["scores"], row["details"])):
            out.append(f"response {i}: score {score if score is not None else 'FAILED'} after {det['attempts']} "
                       f"attempt(s)" + (f"; error: {det['error']}" if det["error"] else ""))
            out.append(f"  rationale: {det['rationale']}")
            out.append(f"  verdict:   {json.dumps(det['verdict'])}")
            if det["error"]:
                out.append(f"  raw reply: {det['raw']!r}")
    else:
        for c in row["comparisons"]:
            i, j = c["i"], c["j"]
            if c["p"] is None:
                out.append(f"responses {i} vs {j}: failed ({c.get('error')})")
                continue
            out.append(f"responses {i} vs {j}:")
            out.append(f"  order 1 (A={i}, B={j}): P({i} better) = {c['p_i_first']:.3f}  raw {c['raw'][0]}")
            out.append(f"  order 2 (A={j}, B={i}): P({i} better) = {c['p_i_second']:.3f}  raw {c['raw'][1]}")
            out.append(f"  averaged: P({i} better) = {c['p']:.3f}; position-consistent: "
                       f"{'yes' if c['consistent'] else 'no (the orders disagree: position bias)'}")
        out.append("scores (mean preference vs the others): " +
                   ", ".join("failed" if s is None else f"{s:.3f}" for s in row["scores"]))
    return "\n".join(out)


def judge_inputs(backend: Any, rubric: Any, requests: list[Any]) -> list[tuple[str, str]]:
    """(title, exact judge input) for each request of `rlaif.judging.judge.requests_for`."""
    inputs = []
    for r in requests:
        title = f"response {r.i}" if r.j is None else f"A = response {r.i}, B = response {r.j}"
        if rubric.method == "likelihood":
            inputs.append((title, scored_text(backend, r.conversation, r.reply)))
            if r.neutral is not None:
                inputs.append((f"{title}, neutral (contrast)", scored_text(backend, r.neutral, r.reply)))
            continue
        inputs.append((title, chat_text(backend, r.conversation, rubric.assistant_prefix)))
    return inputs
