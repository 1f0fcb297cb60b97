"""What `rubric preview` and the rubric studio show: the exact judge input after the engine's chat
template, and a verdict row as text (each method's `preview_lines`: score distributions, both
pairwise orders, likelihood and rules details).
"""

from __future__ import annotations

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


def format_preview(rubric: Any, row: dict[str, Any], inputs: list[tuple[str, str]]) -> str:
    """The judge inputs, then the verdict row as the rubric's method shows it."""
    out = []
    for title, text in inputs:
        out += [f"=== judge input: {title} ===", text, ""]
    out.append(f"=== verdict ({rubric.method}, judge {row['judge']}) ===")
    return "\n".join(out + rubric.judge_method.preview_lines(row))
