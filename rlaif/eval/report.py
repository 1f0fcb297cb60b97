"""report.html of `rlaif eval` (the summary, one line per judging source, the pairs; plain HTML) and the
short table `rlaif eval` prints."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rlaif.io.store import atomic_write_text

MAX_ROWS = 200  # pairs shown in the report (eval.jsonl has all)
MAX_CHARS = 600  # of each response shown

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
         "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
         ".note{background:#fff4d6;padding:8px;border-left:4px solid #e0a800}.resp{white-space:pre-wrap;"
         "font-size:90%;max-width:420px}.A{background:#e3f4e3}.B{background:#fbe3e3}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def verdict_line(s: dict[str, Any]) -> str:
    """One sentence: is A better, worse, or not distinguishable from B at 95%?"""
    ci = s.get("win_rate_ci")
    if not ci:
        return "No pair could be judged."
    lo, hi = ci
    if lo > 0.5:
        return f"A beats B: the 95% interval of the win rate [{_pct(lo)}, {_pct(hi)}] lies above 50%."
    if hi < 0.5:
        return f"B beats A: the 95% interval of the win rate [{_pct(lo)}, {_pct(hi)}] lies below 50%."
    return f"Not distinguishable at 95%: the interval [{_pct(lo)}, {_pct(hi)}] contains 50%."


def notes(s: dict[str, Any]) -> list[str]:
    """Plain warnings: a weak embedded judge, a length-driven win, an inconsistent judge."""
    from rlaif.models import is_embedded

    out = []
    judge = str(s.get("judge") or "")
    if judge and is_embedded(judge.split(":", 1)[-1]):  # model ids are "engine:model"
        out.append(f"The judge, {judge}, is rlaif's small embedded default model, a weak judge: on hand-made pairs "
                   "with an obviously better answer its pairwise verdicts were almost never position-consistent and "
                   "its 1-5 scores were near chance, so its verdicts here say little about A and B. Use a stronger "
                   "judge (vLLM on a GPU, or an OpenAI-compatible endpoint; check it with `rlaif rubric calibrate`) "
                   "or a verifiable reward (--reward python:FILE.py:FUNC).")
    wr, lc = s.get("win_rate"), s.get("lc_win_rate")
    if wr is not None and lc is not None and abs(wr - lc) >= 0.1:
        out.append(f"The length-controlled win rate ({_pct(lc)}) differs from the raw one ({_pct(wr)}) by "
                   f"{100 * abs(wr - lc):.0f} points: much of the raw result follows the length difference "
                   f"(mean length A {_num(s.get('mean_length_a'))}, B {_num(s.get('mean_length_b'))} "
                   f"{s.get('length_unit')}).")
    pc = s.get("position_consistency")
    if pc is not None and pc < 0.6:
        out.append(f"The judge agreed with itself across the two orders on only {_pct(pc)} of the pairs; "
                   "inconsistent pairs count as ties, so the win rate is pulled towards 50%.")
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(s: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    e = html.escape
    ci = s.get("win_rate_ci") or [None, None]
    summary = _table(["", "A", "B"], [
        ["side", e(str(s.get("a"))), e(str(s.get("b")))],
        ["model", e(str(s.get("models", {}).get("a"))), e(str(s.get("models", {}).get("b")))],
        [f"mean length ({e(str(s.get('length_unit')))})", _num(s.get("mean_length_a")), _num(s.get("mean_length_b"))],
        ["EOS rate", _pct(s.get("eos_rate_a")), _pct(s.get("eos_rate_b"))],
        [f"mean score ({e(str(s.get('score_source')))})", _num(s.get("mean_score_a")), _num(s.get("mean_score_b"))],
    ])
    headline = _table(["pairs", "wins", "losses", "ties", "failed", "win rate", "95% interval", "LC win rate",
                       "position consistency"],
                      [[str(s.get("n")), str(s.get("wins")), str(s.get("losses")), str(s.get("ties")),
                        str(s.get("failed")), _pct(s.get("win_rate")), f"[{_pct(ci[0])}, {_pct(ci[1])}]",
                        _pct(s.get("lc_win_rate")), _pct(s.get("position_consistency"))]])
    sources = _table(["source", "kind", "pairs", "W/L/T", "win rate", "95% interval", "LC win rate", "failed",
                      "mean score A", "mean score B"],
                     [[e(name), e(v["kind"]), str(v["n"]), f"{v['wins']}/{v['losses']}/{v['ties']}",
                       _pct(v["win_rate"]), "[{}, {}]".format(*map(_pct, v["win_rate_ci"] or [None, None])),
                       _pct(v["lc_win_rate"]), str(v["failed"]), _num(v["mean_score_a"]), _num(v["mean_score_b"])]
                      for name, v in s.get("by_source", {}).items()])
    pair_rows = []
    for r in rows[:MAX_ROWS]:
        cls = {"A": "A", "B": "B"}.get(str(r["winner"]), "")
        pair_rows.append([e(f"{r['id']}" + (f" #{r['k']}" if r["k"] else "")),
                          f"<div class='resp'>{e(r['prompt'][:MAX_CHARS])}</div>",
                          f"<div class='resp'>{e(r['response_a'][:MAX_CHARS])}</div>",
                          f"<div class='resp'>{e(r['response_b'][:MAX_CHARS])}</div>",
                          f"<span class='{cls}'>{e(str(r['winner']))}</span>"])
    more = (f"<p>First {MAX_ROWS} of {len(rows)} pairs; eval.jsonl has every pair with each source's vote.</p>"
            if len(rows) > MAX_ROWS else "<p>eval.jsonl has each source's vote per pair.</p>")
    warn = "".join(f"<p class='note'>{e(note)}</p>" for note in notes(s))
    how = ("<p>Win rate = (wins + ties/2) / pairs; the 95% interval is Agresti-Coull generalised to outcomes in "
           "{0, 1/2, 1}, over prompts. LC win rate: AlpacaEval 2's length-controlled win rate (a logistic fit of "
           "the verdict on tanh of the scaled length difference, read at zero difference). Pairwise rubrics are "
           "judged in both orders; a pair the two orders disagree on is a tie.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>rlaif eval</title><style>{STYLE}</style>"
            f"</head><body><h1>rlaif eval: A against B</h1><p><b>{e(verdict_line(s))}</b></p>{warn}{headline}"
            f"{summary}<h2>By source</h2>{sources}{how}<h2>Pairs</h2>{more}"
            + _table(["id", "prompt", "A", "B", "winner"], pair_rows) + "</body></html>\n")


def write_report(path: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, render(summary, rows))


def short_name(source: str) -> str:
    """``python:/long/path/f.py:fn`` -> ``python:f.py:fn``; ``rm:/path/dir`` -> ``rm:dir`` (for the table)."""
    scheme, sep, target = source.partition(":")
    if not sep or scheme not in ("python", "rm"):
        return source
    file, colon, func = target.rpartition(":") if scheme == "python" else (target, "", "")
    return f"{scheme}:{Path(file).name}{colon}{func}"


def format_table(s: dict[str, Any]) -> str:
    """The short table printed at the end of ``rlaif eval``."""
    unit = s.get("length_unit")
    lines = [f"A: {s['a']}", f"B: {s['b']}",
             f"{'source':<34} {'pairs':>5} {'W/L/T':>11} {'win rate':>9} {'95% interval':>17} {'LC':>7}"]
    rows = list(s.get("by_source", {}).items())
    if len(rows) > 1:
        rows.append(("all (majority)", s))
    for name, entry in rows:
        low, high = entry.get("win_rate_ci") or [None, None]
        wins_losses_ties = f"{entry['wins']}/{entry['losses']}/{entry['ties']}"
        interval = f"[{_pct(low)}, {_pct(high)}]"
        lines.append(f"{short_name(name)[:34]:<34} {entry['n']:>5} {wins_losses_ties:>11} {_pct(entry['win_rate']):>9} "
                     f"{interval:>17} {_pct(entry['lc_win_rate']):>7}")
    lines.append(f"position consistency {_pct(s.get('position_consistency'))}   failed pairs {s.get('failed')}")
    lines.append(f"mean length A {s['mean_length_a'] or 0:.1f} / B {s['mean_length_b'] or 0:.1f} {unit}   "
                 f"EOS rate A {_pct(s.get('eos_rate_a'))} / B {_pct(s.get('eos_rate_b'))}")
    if s.get("mean_score_a") is not None:
        lines.append(f"mean score ({short_name(s['score_source'])}) A {s['mean_score_a']:.3g} / "
                     f"B {s['mean_score_b']:.3g}")
    lines.append(verdict_line(s))
    return "\n".join(lines)
