"""report.html of ``rlaif eval --benchmark`` and the table it prints."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rlaif.eval.report import STYLE, _table
from rlaif.io.store import atomic_write_text

MAX_ROWS = 200
MAX_CHARS = 400


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _interval(ci: list[float] | None) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "n/a"


def verdict_line(s: dict[str, Any]) -> str:
    """One sentence on the paired difference (two models), or A's accuracy (one)."""
    paired = s.get("paired")
    if not paired:
        a = s["sides"]["a"]
        return f"A answers {a['correct']}/{a['n']} right: accuracy {_pct(a['accuracy'])} {_interval(a['accuracy_ci'])}."
    ci = paired.get("difference_ci")
    diff = f"A - B = {100 * (paired['difference'] or 0):+.1f} points, 95% interval " + (
        f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "n/a")
    if ci and ci[0] > 0:
        return f"A is more accurate than B: {diff}."
    if ci and ci[1] < 0:
        return f"B is more accurate than A: {diff}."
    return f"Not distinguishable at 95%: {diff}."


def format_table(s: dict[str, Any]) -> str:
    """The short table printed at the end of ``rlaif eval --benchmark``."""
    lines = [f"benchmark: {s['benchmark']} ({s['n']} items)",
             f"{'side':<5} {'right':>7} {'accuracy':>9} {'95% interval':>17} {'mean length':>12}  model"]
    for name, side in s["sides"].items():
        lines.append(f"{name.upper():<5} {side['correct']:>3}/{side['n']:<3} {_pct(side['accuracy']):>9} "
                     f"{_interval(side['accuracy_ci']):>17} {side['mean_length']:>8.1f} {side['length_unit'][:3]}  "
                     f"{side['spec']}")
    if s.get("paired"):
        p = s["paired"]
        lines.append(f"paired: A right / B wrong {p['a_only']}, B right / A wrong {p['b_only']}")
    lines.append(verdict_line(s))
    return "\n".join(lines)


def render(s: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    e = html.escape
    sides = list(s["sides"])
    head = _table(["side", "model", "right", "accuracy", "95% interval (Wilson)", "mean length"],
                  [[name.upper(), e(str(v["spec"])), f"{v['correct']}/{v['n']}", _pct(v["accuracy"]),
                    _interval(v["accuracy_ci"]), f"{v['mean_length']:.1f} {e(v['length_unit'])}"]
                   for name, v in s["sides"].items()])
    checks = _table(["checker", "items", *[f"accuracy {name.upper()}" for name in sides]],
                    [[e(check), str(v["n"]), *[_pct(v[f"correct_{name}"] / v["n"]) for name in sides]]
                     for check, v in s["by_check"].items()])
    item_rows = [[e(str(r["id"])), f"<div class='resp'>{e(r['prompt'][:MAX_CHARS])}</div>", e(str(r["answer"])),
                  e(r["check"]),
                  *[f"<div class='resp {'A' if r[f'correct_{n}'] else 'B'}'>{e(r[f'response_{n}'][:MAX_CHARS])}</div>"
                    for n in sides]] for r in rows[:MAX_ROWS]]
    how = ("<p>Accuracy: share of items whose response the row's checker accepts; 95% Wilson score interval. "
           "Exact match is after SQuAD normalisation (case, punctuation, articles a/an/the, whitespace). Paired "
           "difference: mean of the per-item differences (A right - B right) with its normal 95% interval.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>rlaif eval --benchmark</title>"
            f"<style>{STYLE}</style></head><body><h1>rlaif eval: {e(str(s['benchmark']))}</h1>"
            f"<p><b>{e(verdict_line(s))}</b></p>{head}<h2>By checker</h2>{checks}{how}<h2>Items</h2>"
            + _table(["id", "prompt", "answer", "check", *[f"response {n.upper()}" for n in sides]], item_rows)
            + "</body></html>\n")


def write_report(path: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, render(summary, rows))
