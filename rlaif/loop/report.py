"""What a loop did, round by round: the win-rate table printed at the end, and DIR/report.html.

Per round K: the win rate of pi_K over pi_0 and over pi_{K-1} with its 95% interval, the
length-controlled (LC) win rate, pi_K's mean eval score and mean length, and KL(pi_K || pi_0) on
the eval prompts when eval measured it. `length_warnings` flags the reward-hacking pattern
AlpacaEval's LC win rate exists for (Dubois et al. 2024): the policy writes at least
`LENGTH_GROWTH` longer than the policy it is compared with, while its LC win rate over it is not
above 0.5. With the guard on (`rlaif.loop.guard`), each row also has pi_K's benchmark accuracy
with its 95% Wilson interval and its mean benchmark response length, and the report says whether
the guard stopped the loop.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rlaif.io.store import atomic_write_text

LENGTH_GROWTH = 0.10  # relative growth of the mean length that counts as "longer"
COMPARISONS = ("vs-initial", "vs-previous")


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _wr(ev: dict[str, Any] | None) -> str:
    if not ev or ev.get("win_rate") is None:
        return "-"
    ci = ev.get("win_rate_ci") or [None, None]
    return f"{ev['win_rate']:.2f} [{_num(ci[0])}, {_num(ci[1])}]"


def round_row(record: dict[str, Any]) -> dict[str, str]:
    """The printable figures of one round (``-`` where there is nothing)."""
    ev = record.get("eval", {})
    first = ev.get("vs-initial") or {}
    return {"round": str(record["round"]), "pairs": _num((record.get("data") or {}).get("train_pairs"), "{}"),
            "vs initial [95% CI]": _wr(first), "LC vs initial": _num(first.get("lc_win_rate")),
            "vs previous [95% CI]": _wr(ev.get("vs-previous")),
            "LC vs previous": _num((ev.get("vs-previous") or {}).get("lc_win_rate")),
            "mean score": _num(first.get("mean_score_a"), "{:.3f}"),
            "mean length": _num(first.get("mean_length_a"), "{:.1f}"),
            "KL vs initial": _num(record.get("kl"), "{:.3f}")}


def start_row(records: list[dict[str, Any]]) -> dict[str, str] | None:
    """Row "0": the starting policy's mean score and length (side B of round 1's eval against it)."""
    first = ((records[0].get("eval") or {}).get("vs-initial") or {}) if records else {}
    if not first:
        return None
    row = {key: "-" for key in round_row(records[0])}
    row.update({"round": "0 (start)", "mean score": _num(first.get("mean_score_b"), "{:.3f}"),
                "mean length": _num(first.get("mean_length_b"), "{:.1f}"), "KL vs initial": "0"})
    return row


def _benchmark_cells(bench: dict[str, Any] | None) -> dict[str, str]:
    if not bench:
        return {"benchmark acc [95% CI]": "-", "benchmark length": "-"}
    low, high = bench.get("accuracy_ci") or [None, None]
    return {"benchmark acc [95% CI]": f"{bench['accuracy']:.2f} [{_num(low)}, {_num(high)}]",
            "benchmark length": _num(bench.get("mean_length"), "{:.1f}")}


def table_rows(records: list[dict[str, Any]], start_benchmark: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """One row per round, after the starting policy's; the guard's benchmark columns when it ran."""
    start = start_row(records)
    if start is None and start_benchmark:
        start = {key: "-" for key in round_row({"round": 0})} | {"round": "0 (start)", "KL vs initial": "0"}
    rows = ([start] if start else []) + [round_row(r) for r in records]
    if start_benchmark or any(r.get("benchmark") for r in records):
        benches = ([start_benchmark] if start else []) + [r.get("benchmark") for r in records]
        rows = [row | _benchmark_cells(bench) for row, bench in zip(rows, benches)]
    return rows


def win_rate_table(records: list[dict[str, Any]], start_benchmark: dict[str, Any] | None = None) -> str:
    """A plain-text table, one line per round (and the starting policy), plus any length warnings."""
    rows = table_rows(records, start_benchmark)
    if not rows:
        return "no rounds"
    heads = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in heads]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    lines += ["  ".join(r[h].ljust(w) for h, w in zip(heads, widths)).rstrip() for r in rows]
    unit = next((ev.get("length_unit") for r in records for ev in r.get("eval", {}).values() if ev), None)
    if unit:
        lines.append(f"(length in {unit}; win rates count ties as half; LC = length-controlled)")
    lines += [f"WARNING: {w}" for w in length_warnings(records)]
    return "\n".join(lines)


def length_warnings(records: list[dict[str, Any]]) -> list[str]:
    """One plain sentence per comparison where length grew while the LC win rate did not."""
    out = []
    for r in records:
        for name in COMPARISONS:
            ev = (r.get("eval") or {}).get(name)
            if not ev:
                continue
            la, lb, lc = ev.get("mean_length_a"), ev.get("mean_length_b"), ev.get("lc_win_rate")
            if None in (la, lb, lc) or lb <= 0:
                continue
            if la >= (1 + LENGTH_GROWTH) * lb and lc <= 0.5:
                other = "the starting policy" if name == "vs-initial" else "the previous round's policy"
                out.append(f"round {r['round']}: responses are {la / lb - 1:.0%} longer than {other}'s "
                           f"({la:.1f} vs {lb:.1f}) but the length-controlled win rate is {lc:.2f}: the gain may be "
                           f"length, not quality (reward hacking)")
    return out


def _svg(records: list[dict[str, Any]], name: str) -> str:
    """Win rate of ``name`` per round with its interval, as a small inline SVG (0.5 dashed)."""
    pts = [(r["round"], (r.get("eval") or {}).get(name)) for r in records]
    pts = [(k, ev) for k, ev in pts if ev and ev.get("win_rate") is not None]
    if not pts:
        return "<p>no data</p>"
    w, h, pad = 360, 180, 30
    n = max(k for k, _ in pts)

    def x(k: int) -> float:
        return pad + (w - 2 * pad) * (k - 0.5) / n

    def y(v: float) -> float:
        return h - pad - (h - 2 * pad) * v

    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{pad}" y1="{y(0.5)}" x2="{w - pad}" y2="{y(0.5)}" stroke="#999" stroke-dasharray="4"/>',
             f'<line x1="{pad}" y1="{y(0)}" x2="{w - pad}" y2="{y(0)}" stroke="#333"/>',
             f'<text x="2" y="{y(1) + 4}" font-size="10">1.0</text>',
             f'<text x="2" y="{y(0.5) + 4}" font-size="10">0.5</text>',
             f'<text x="2" y="{y(0) + 4}" font-size="10">0.0</text>']
    for k, ev in pts:
        lo, hi = ev.get("win_rate_ci") or [ev["win_rate"], ev["win_rate"]]
        parts.append(f'<line x1="{x(k)}" y1="{y(lo)}" x2="{x(k)}" y2="{y(hi)}" stroke="#36c" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(k)}" cy="{y(ev["win_rate"])}" r="4" fill="#36c"/>')
        if ev.get("lc_win_rate") is not None:
            parts.append(f'<rect x="{x(k) - 3}" y="{y(ev["lc_win_rate"]) - 3}" width="6" height="6" fill="#c63"/>')
        parts.append(f'<text x="{x(k) - 4}" y="{h - 8}" font-size="10">{k}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_report(path: Path, manifest: dict[str, Any]) -> None:
    """DIR/report.html: the table, a plot per comparison, warnings, and each round's training summary."""
    records = manifest.get("rounds", [])
    rows = table_rows(records, manifest.get("benchmark_start"))
    esc = html.escape
    table = ""
    if rows:
        table = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in rows[0]) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
                 + "</table>")
    warnings = "".join(f'<p class="warn">WARNING: {esc(w)}</p>' for w in length_warnings(records)) or \
        "<p>No round grew its responses by 10% or more without a length-controlled win rate above 0.5.</p>"
    cfg = manifest.get("config", {})
    if manifest.get("stopped"):
        warnings = f'<p class="warn">STOPPED: {esc(manifest["stopped"]["reason"])}</p>' + warnings
    train = "".join(f"<li>round {r['round']}: {esc(str(r.get('train')))}</li>" for r in records)
    plots = "".join(f"<div><h3>{name}</h3>{_svg(records, name)}</div>" for name in COMPARISONS)
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>rlaif loop report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} .warn{{color:#b00;font-weight:bold}}
.plots{{display:flex;gap:2em}}</style></head><body>
<h1>rlaif loop: {len(records)} round(s)</h1>
<p>trainer <b>{esc(str(cfg.get('trainer')))}</b>, starting policy <b>{esc(str(cfg.get('policy', {}).get('model')))}</b>,
reference <b>{esc(str(cfg.get('reference')))}</b>, {esc(str(manifest.get('prompts', {})))}.
Win rates count ties as half; intervals are 95%; LC = length-controlled win rate (AlpacaEval 2), the squares in
the plots; the dashed line is 0.5 (no better than the other policy).</p>
{table}
<h2>Warnings</h2>{warnings}
<h2>Win rate per round</h2><div class="plots">{plots}</div>
<h2>Training</h2><ul>{train}</ul>
</body></html>
"""
    atomic_write_text(path, text)
