"""report.html (stats and plots, PNGs embedded) and the README.md dataset card of a run.

Both are pure functions of the run's rows, seen once in order and summed up in `ReportStats` (so
memory does not grow with the rows), and of the manifest (timings are left out): a resumed run
writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rlaif.dataset.labels import review_line
from rlaif.io.store import atomic_write_text
from rlaif.models import is_embedded


def weak_judge_note(manifest: dict[str, Any]) -> str | None:
    """A warning when the run's judge (manifest ``models.judge``) is rlaif's embedded default model."""
    judge = str(manifest.get("models", {}).get("judge") or "")
    # model ids are "engine:model"
    if not any(is_embedded(judge_id.split(":", 1)[-1]) for judge_id in judge.split("+")):
        return None
    return (f"The judge of this run, {judge}, is rlaif's small embedded default model, a weak judge: on hand-made "
            "pairs with an obviously better answer its pairwise verdicts were almost never position-consistent and "
            "its 1-5 scores were near chance. Treat this dataset as a demonstration of the pipeline; for real data "
            "use a stronger judge (vLLM on a GPU, or an OpenAI-compatible endpoint) and check it with "
            "`rlaif rubric calibrate`.")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BINS = 20  # histogram bins of scores and margins
MAX_SCATTER = 20_000  # points per rubric in the score-vs-length plot; beyond it a seeded uniform sample


class Histogram:
    """BINS counts over ``[lo, hi]`` (values outside are left out, as ``ax.hist`` does), counted in
    batches of values."""

    def __init__(self, lo: float, hi: float) -> None:
        import numpy as np

        self.range = (lo, hi)
        self.counts = np.zeros(BINS, dtype=np.int64)
        self.pending: list[float] = []

    def add(self, values: list) -> None:
        self.pending.extend(values)
        if len(self.pending) >= 65536:
            self.flush()

    def flush(self) -> Any:
        import numpy as np

        if self.pending:
            self.counts += np.histogram(self.pending, bins=BINS, range=self.range)[0]
            self.pending = []
        return self.counts


@dataclass
class RubricStats:
    """What the report plots of one rubric's judgements, accumulated row by row."""

    method: str
    scale: tuple[float, float]
    scores: "Histogram"
    points: list[tuple] = field(default_factory=list)  # (n-th point, candidate id, response index, score)
    seen: int = 0  # score-vs-length points offered (points keeps at most MAX_SCATTER of them)


@dataclass
class ReportStats:
    """Running statistics of a run's rows for report.html and the card (memory flat in the rows):
    counts, per-rubric score histograms, a bounded sample of (length, score) points, the pairwise
    consistency and failure counts, the margin histogram and the first pairs as examples."""

    noise: float | None = None  # the judge's noise margin (pairs below it are counted)
    prompts: int = 0
    responses: int = 0
    judgements: int = 0
    rubrics: dict[str, RubricStats] = field(default_factory=dict)
    consistency: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: Counter = field(default_factory=Counter)
    train: int = 0
    test: int = 0
    margins: Histogram = field(default_factory=lambda: Histogram(0, 1))  # of kept pairs' margins
    pairs_inside_noise: int = 0
    judged_pairs: int = 0  # pairs the judge decided (not a person: ``label_source``)
    judged_inside_noise: int = 0
    examples: list[dict] = field(default_factory=list)  # the first train pairs

    def add_candidate(self, cand: dict) -> None:
        self.prompts += 1
        self.responses += len(cand["responses"])

    def add_judgement(self, row: dict) -> None:
        """One judgement row (its responses' lengths come later, from `add_lengths`)."""
        self.judgements += 1
        stats = self.rubrics.get(row["rubric"])
        if stats is None:
            scale = tuple(row["scale"])
            stats = self.rubrics[row["rubric"]] = RubricStats(row["method"], scale, Histogram(*scale))  # type: ignore[arg-type]
        stats.scores.add([score for score in row["scores"] if score is not None])
        for index, score in enumerate(row["scores"]):
            if score is not None:
                _reservoir(stats, (row["id"], index, score))
        if row["method"] == "pairwise":
            c = self.consistency.setdefault(row["rubric"], {"consistent": 0, "inconsistent": 0, "failed": 0})
            for comp in row["comparisons"]:
                key = "failed" if comp.get("p") is None or comp.get("consistent") is None else (
                    "consistent" if comp["consistent"] else "inconsistent")
                c[key] += 1
        self.failures[f"{row['rubric']}: failed scores"] += sum(s is None for s in row["scores"])
        self.failures[f"{row['rubric']}: judge failures"] += row["failures"]

    def wants_lengths(self) -> set[str]:
        """The candidate ids whose response lengths the score-vs-length points need."""
        return {point[1] for rubric in self.rubrics.values() for point in rubric.points}

    def add_lengths(self, lengths: Mapping[str, list[int]]) -> None:
        """Points get their response's tokens; a point whose candidate or response is unknown is dropped."""
        for rubric in self.rubrics.values():
            rubric.points = [(seen, lengths[pid][index], score) for seen, pid, index, score in rubric.points
                             if pid in lengths and index < len(lengths[pid])]

    def add_pair(self, pair: dict, test: bool, n_examples: int = 5) -> None:
        self.margins.add([pair["margin"]])
        self.pairs_inside_noise += self.noise is not None and pair["margin"] < self.noise
        if "label_source" not in pair:
            self.judged_pairs += 1
            self.judged_inside_noise += self.noise is not None and pair["margin"] < self.noise
        if test:
            self.test += 1
        else:
            self.train += 1
            if len(self.examples) < n_examples:
                self.examples.append(pair)

    @property
    def pairs(self) -> int:
        return self.train + self.test


def _reservoir(stats: RubricStats, point: tuple) -> None:
    """Keep every point up to MAX_SCATTER, then a uniform sample of that many (Vitter's algorithm R,
    seeded: the same rows give the same plot)."""
    import random

    stats.seen += 1
    if len(stats.points) < MAX_SCATTER:
        stats.points.append((stats.seen, *point))
        return
    rng = random.Random(stats.seen)
    slot = rng.randrange(stats.seen)
    if slot < MAX_SCATTER:
        stats.points[slot] = (stats.seen, *point)


def _hist(ax: Any, counts: Any, lo: float, hi: float, color: str) -> None:
    """``ax.hist`` of already-counted bins: each bin's centre weighted by its count (same bars)."""
    import numpy as np

    edges = np.histogram_bin_edges([], bins=BINS, range=(lo, hi))
    ax.hist((edges[:-1] + edges[1:]) / 2, bins=BINS, range=(lo, hi), weights=counts, color=color)


def plot_histograms(stats: ReportStats) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = stats.rubrics
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(3.6 * max(1, len(groups)), 2.8), squeeze=False)
    for ax, (name, rubric) in zip(axes[0], groups.items()):
        _hist(ax, rubric.scores.flush(), *rubric.scale, color="#4c72b0")
        ax.set_title(f"{name} ({rubric.method})", fontsize=9)
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("responses")
    fig.tight_layout()
    return _png(fig)


def plot_score_vs_length(stats: ReportStats) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = stats.rubrics
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(3.6 * max(1, len(groups)), 2.8), squeeze=False)
    for ax, (name, rubric) in zip(axes[0], groups.items()):
        points = sorted(rubric.points, key=lambda point: point[0])  # in row order, also when sampled
        ax.scatter([n for _, n, _ in points], [s for _, _, s in points], s=6, alpha=0.5, color="#dd8452")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("response tokens")
    axes[0][0].set_ylabel("score")
    fig.tight_layout()
    return _png(fig)


def plot_counts(counts: dict[str, int], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.35 * max(3, len(counts)) + 0.8))
    names = list(counts)
    ax.barh(names, [counts[name] for name in names], color="#55a868")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _png(fig)


def plot_margins(counts: Any, lines: dict[str, float]) -> str:
    """Histogram (BINS ``counts``) of kept pairs' margins on [0, 1], with vertical lines (e.g. min_margin, judge noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    _hist(ax, counts, 0, 1, color="#4c72b0")
    for (label, x), color in zip(lines.items(), ("#c44e52", "#8172b2")):
        ax.axvline(x, color=color, linestyle="--", label=f"{label} {x:g}")
    if lines:
        ax.legend(fontsize=8)
    ax.set_xlabel("margin (combined score, [0, 1])")
    ax.set_ylabel("pairs")
    fig.tight_layout()
    return _png(fig)


def truncation_summary(build: dict[str, Any]) -> str:
    """One sentence: how many candidates were cut off at max_tokens and what the build did with them."""
    counts = build.get("counts", {})
    mode = build.get("config", {}).get("truncated", "keep")
    total, cut, unknown = counts.get("responses", 0), counts.get("responses_truncated", 0), \
        counts.get("responses_finish_unknown", 0)
    text = f"{cut} of {total} candidates ({cut / max(total, 1):.0%}) were cut off at max_tokens"
    text += {"reject_only": f" (truncated=reject_only: never chosen; {counts.get('kept_rejected_truncated', 0)} kept "
                            "pairs reject one)",
             "drop": f" (truncated=drop: {counts.get('responses_truncated_dropped', 0)} dropped before pairing)",
             "keep": f" (truncated=keep: ranked like any other; {counts.get('kept_chosen_truncated', 0)} kept pairs "
                     "choose one)"}.get(mode, "")
    if unknown:
        text += f"; {unknown} have no known finish reason (user candidates) and count as complete"
    return text + "."


def noise_summary(build: dict[str, Any], inside: int, pairs: int) -> str:
    """One sentence: how many of the ``pairs`` kept have a margin inside the judge's noise (``inside``),
    and what that noise is."""
    noise = build.get("noise_margin") or {}
    value, source = noise.get("value"), noise.get("source", "unknown")
    if value is None:
        return f"Judge noise: {source}."
    return (f"{inside} of {pairs} kept pairs ({inside / max(pairs, 1):.0%}) have a margin below "
            f"{value:g}, the judge's noise ({source}): below it the judge's preference was no better than chance "
            f"(min_margin={build.get('min_margin')}).")


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(str(value))}</td></tr>"
                   for key, value in rows)
    return f"<table>{body}</table>"


def _example(pair: dict) -> str:
    prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in pair["prompt"])
    score = lambda s: "unscored" if s is None else f"{s:.3f}"  # noqa: E731 (a person's pair may be unscored)
    person = " (chosen by a person)" if pair.get("label_source") == "person" else ""
    return (f"<div class='ex'><p><b>{html.escape(pair['id'])}</b> margin {pair['margin']:.3f}{person}</p>"
            f"<pre>{html.escape(prompt)}</pre><div class='cols'>"
            f"<div><h4>chosen ({score(pair['score_chosen'])})</h4>"
            f"<pre>{html.escape(pair['chosen'][0]['content'])}</pre></div>"
            f"<div><h4>rejected ({score(pair['score_rejected'])})</h4>"
            f"<pre>{html.escape(pair['rejected'][0]['content'])}</pre></div>"
            "</div></div>")


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse}"
       "td{border:1px solid #ccc;padding:2px 8px;font-size:13px}pre{white-space:pre-wrap;background:#f6f6f6;"
       "padding:6px;font-size:12px}.cols{display:flex;gap:1em}.cols>div{flex:1}.ex{border-top:1px solid #ddd}"
       ".note{background:#fff4d6;padding:8px}")


def write_report(path: str | Path, stats: ReportStats, manifest: dict[str, Any]) -> None:
    """Write the self-contained report.html of a run."""
    stages = manifest.get("stages", {})
    build_counts = stages.get("build", {}).get("counts", {})
    parts = [f"<html><head><meta charset='utf-8'><title>rlaif report</title><style>{CSS}</style></head><body>",
             "<h1>rlaif preference dataset report</h1>"]
    if note := weak_judge_note(manifest):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("<h2>Summary</h2>" + _table([
        ("policy", manifest["models"].get("policy")), ("judge", manifest["models"].get("judge")),
        ("prompts", stats.prompts), ("candidates", stats.responses),
        ("judgements", stats.judgements), ("train pairs", stats.train), ("test pairs", stats.test),
        ("rubrics", ", ".join(stats.rubrics))]))
    if stats.judgements:
        parts.append("<h2>Scores per rubric</h2>" + f"<img src='{plot_histograms(stats)}'>")
        parts.append("<h2>Score vs response length</h2>"
                     "<p>A judge that rewards length shows a slope here.</p>"
                     f"<img src='{plot_score_vs_length(stats)}'>")
    consistency = stats.consistency
    parts.append("<h2>Position consistency (pairwise rubrics)</h2>")
    if consistency:
        flat = {f"{r}: {key}": value for r, c in consistency.items() for key, value in c.items()}
        parts.append("<p>Each pair was judged in both orders; consistent = both orders preferred the same "
                     f"response.</p><img src='{plot_counts(flat, 'pairwise comparisons')}'>")
    else:
        parts.append("<p>No pairwise rubric in this run.</p>")
    failures = dict(stats.failures)
    parts.append("<h2>Failures and dropped pairs</h2>")
    if failures:
        parts.append(f"<img src='{plot_counts(failures, 'judge failures per rubric')}'>")
        parts.append(_table(list(failures.items())))
    parts.append("<h3>Pair building</h3>" + _table(sorted(build_counts.items())))
    build = stages.get("build", {})
    parts.append(f"<h2>Truncated candidates</h2><p>{html.escape(truncation_summary(build))}</p>")
    lines = {"min_margin": build.get("min_margin") or 0.0}
    if (build.get("noise_margin") or {}).get("value") is not None:
        lines["judge noise"] = build["noise_margin"]["value"]
    parts.append(f"<h2>Margins of the kept pairs</h2><p>{html.escape(noise_summary(build, stats.pairs_inside_noise, stats.pairs))}</p>")
    if stats.pairs:
        parts.append(f"<img src='{plot_margins(stats.margins.flush(), lines)}'>")
    parts.append("<h2>Chosen / rejected examples</h2>")
    parts.extend(_example(p) for p in stats.examples)
    if not stats.train:
        parts.append("<p>No pairs.</p>")
    settings = json.dumps({stage: info.get("config") for stage, info in stages.items()}, indent=1, sort_keys=True)
    parts.append("<h2>Settings</h2><pre>" + html.escape(settings) + "</pre></body></html>\n")
    atomic_write_text(path, "\n".join(parts))


CARD_FRONT_MATTER = [
    "---",
    "configs:",
    "- config_name: default",
    "  data_files:",
    "  - split: train",
    "    path: preferences/train.jsonl",
    "  - split: test",
    "    path: preferences/test.jsonl",
    "tags: [rlaif, preference, dpo, synthetic]",
    "---",
    "",
]
CARD_FORMAT = [
    "## Format", "", "TRL conversational preference format, one pair per line:", "", "```json",
    '{"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}], '
    '"rejected": [{"role": "assistant", "content": "..."}], "id": "...", "score_chosen": 0.8, '
    '"score_rejected": 0.3, "margin": 0.5, "rubric": "...", "judge": "...", "policy": "..."}', "```", "",
    "Train on it with `rlaif train dpo --data DIR` (or TRL's `DPOTrainer` directly).", "",
]


def _card_summary(stats: ReportStats, manifest: dict[str, Any]) -> list[str]:
    """The card's opening: what the data is and how it was made (models, sampling, pairing)."""
    stages = manifest.get("stages", {})
    gen_cfg = stages.get("generate", {}).get("config", {})
    build = stages.get("build", {})
    lines = [
        "# Synthetic preference dataset (rlaif)",
        "",
        "Responses sampled from a policy model and ranked by a judge model against rubrics "
        "(reinforcement learning from AI feedback). Made with `rlaif run`.",
        "",
        f"- policy: `{manifest['models'].get('policy')}`",
        f"- judge: `{manifest['models'].get('judge')}`",
        f"- pairs: {stats.train} train, {stats.test} test (split by prompt, seed {build.get('config', {}).get('seed')})",
    ]
    if gen_cfg:
        lines.append(f"- sampling: n={gen_cfg.get('n')}, temperature={gen_cfg.get('temperature')}, "
                     f"top_p={gen_cfg.get('top_p')}, max_tokens={gen_cfg.get('max_tokens')}, "
                     f"seed={gen_cfg.get('seed')}")
    lines.append(f"- pair strategy: {build.get('config', {}).get('strategy')}, "
                 f"min_margin={build.get('min_margin')}, "
                 f"truncated={build.get('config', {}).get('truncated')}")
    lines.append(f"- {truncation_summary(build)}")
    counts = build.get("counts", {})
    if "sft_kept" in counts or "sft_train" in counts:
        lines.append(f"- best-of-n (`sft/`, for `rlaif train sft`): {counts.get('sft_kept', 0)} prompts with a best "
                     f"response >= {build.get('config', {}).get('best_min_score')} ({counts.get('sft_train', 0)} "
                     f"train, {counts.get('sft_test', 0)} test; complete candidates only)")
    lines.append(f"- {noise_summary(build, stats.judged_inside_noise, stats.judged_pairs)}")  # a person's pair is no noise
    if build.get("review"):
        lines.append(f"- {review_line(build['review'])} (pairs marked `\"label_source\": \"person\"`)")
    return lines


def write_dataset_card(path: str | Path, stats: ReportStats, manifest: dict[str, Any]) -> None:
    """README.md dataset card (Hugging Face style front matter + how the data was made)."""
    stages = manifest.get("stages", {})
    build = stages.get("build", {})
    rubrics = (stages.get("judge", {}).get("rubrics")
               or [{"name": name, "method": "?"} for name in build.get("rubrics", [])])
    weights = build.get("config", {}).get("rubric_weights", {})
    lines = CARD_FRONT_MATTER + _card_summary(stats, manifest)
    lines += ["", "## Rubrics", "", "| rubric | method | weight |", "|---|---|---|"]
    lines += [f"| {rubric['name']} | {rubric['method']} | {weights.get(rubric['name'], 1.0)} |" for rubric in rubrics]
    lines += ["", "Scores: each rubric's score is normalised to [0, 1] by its scale and the rubrics are "
              "combined by a weighted mean; `score_chosen`, `score_rejected` and `margin` are on that [0, 1] "
              "scale. Responses with a failed judgement are never paired; ties give no pair.", "",
              "## Counts", "", "| what | count |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in sorted(build.get("counts", {}).items())]
    lines += ["", *CARD_FORMAT, "## Limitations", ""]
    if note := weak_judge_note(manifest):
        lines.append(note)
    else:
        lines.append("AI-judged labels carry the judge's biases (length, position, self-preference). Check the "
                     "judge against human labels (`rlaif rubric calibrate`) before training on it.")
    lines += ["", "See `report.html` for score distributions and `manifest.json` for the full configuration.", ""]
    atomic_write_text(path, "\n".join(lines))
