"""``rlaif eval --benchmark FILE``: accuracy of one model (or two, paired) on prompts with reference answers.

Each model side generates one response per benchmark prompt with the pipeline's generation code
(greedy by default; resumable, as `rlaif eval`'s sides), a candidates file side gives its first
response. Each response is scored right or wrong by its row's checker (`rlaif.eval.benchmark_check`);
accuracy has its 95% Wilson interval and, with two models, the paired difference A - B has the normal
interval on the mean per-item difference (`rlaif.eval.benchmark_stats`).

Outputs in ``DIR``: ``benchmark.json`` (summary), ``benchmark.jsonl`` (one row per item: the responses
and whether each is right), ``report.html`` and, for model sides, ``candidates_a.jsonl`` /
``candidates_b.jsonl``. A checker that raises stops the command after generation: the candidates stay,
and a rerun with a fixed checker scores them without generating again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from rlaif.backends import Backend, BackendConfig, load_backend
from rlaif.errors import UserError
from rlaif.eval.benchmark_check import Checkers, Item, read_benchmark
from rlaif.eval.benchmark_options import BenchmarkConfig, check_benchmark_options
from rlaif.eval.benchmark_stats import paired_difference, wilson
from rlaif.eval.evaluate import prepare_out
from rlaif.eval.options import EvalConfig
from rlaif.eval.plan import Plan, _given_candidates, _prompt_tokens, resolve_side
from rlaif.eval.sampling import generate_side
from rlaif.io.store import atomic_write_text, refuse_out_overlap, write_jsonl

OUTPUTS = ["candidates_a.jsonl", "candidates_b.jsonl", "benchmark.json", "benchmark.jsonl", "report.html"]
STAGES = ["generate_a", "generate_b"]


def _as_eval_config(cfg: BenchmarkConfig) -> EvalConfig:
    """The generation settings as `rlaif eval`'s config, to share its side generation."""
    return EvalConfig(a=cfg.a, b=cfg.b, prompts=cfg.benchmark, out=cfg.out, n_per_prompt=1, max_tokens=cfg.max_tokens,
                      temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, policy=cfg.policy,
                      chunk_size=cfg.chunk_size, chunk_tokens=cfg.chunk_tokens, overwrite=cfg.overwrite,
                      progress=cfg.progress)


def _side_result(items: list[Item], rows: list[dict], checkers: Checkers) -> dict[str, Any]:
    by_id = {row["id"]: row for row in rows}
    responses = [by_id[item.prompt.id]["responses"][0] for item in items]
    engine = all(by_id[item.prompt.id].get("policy") != "user" for item in items)
    lengths = ([by_id[item.prompt.id]["num_tokens"][0] for item in items] if engine
               else [len(text.split()) for text in responses])
    correct = [checkers(item, text) for item, text in zip(items, responses)]
    return {"responses": responses, "correct": correct, "lengths": lengths, "unit": "tokens" if engine else "words"}


def summarise(cfg: BenchmarkConfig, items: list[Item], results: dict[str, dict], model_ids: dict[str, str]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(benchmark.json dict, benchmark.jsonl rows)``."""
    from rlaif.judging.templates import last_user_message

    n = len(items)
    sides: dict[str, Any] = {}
    for name, result in results.items():
        k = sum(result["correct"])
        sides[name] = {"spec": getattr(cfg, name), "model": model_ids.get(name), "correct": k, "n": n,
                       "accuracy": k / n, "accuracy_ci": list(wilson(k, n) or []),
                       "mean_length": sum(result["lengths"]) / n, "length_unit": result["unit"],
                       "item_correct": [int(x) for x in result["correct"]]}  # 0/1 per item, benchmark order
    by_check: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(items):
        entry = by_check.setdefault(item.check, {"n": 0, **{f"correct_{name}": 0 for name in results}})
        entry["n"] += 1
        for name, result in results.items():
            entry[f"correct_{name}"] += int(result["correct"][index])
    summary: dict[str, Any] = {"benchmark": cfg.benchmark, "n": n, "sides": sides, "by_check": by_check,
                               "settings": {"temperature": cfg.temperature, "top_p": cfg.top_p,
                                            "max_tokens": cfg.max_tokens, "seed": cfg.seed, "check": cfg.check}}
    if "b" in results:
        summary["paired"] = paired_difference(results["a"]["correct"], results["b"]["correct"])
    rows = []
    for index, item in enumerate(items):
        row: dict[str, Any] = {"id": item.prompt.id, "prompt": last_user_message(item.prompt.messages),
                               "answer": item.raw["answer"], "check": item.check}
        for name, result in results.items():
            row |= {f"response_{name}": result["responses"][index], f"correct_{name}": result["correct"][index],
                    f"length_{name}": result["lengths"][index]}
        rows.append(row)
    return summary, rows


def run_benchmark(cfg: BenchmarkConfig, factory: Callable[[BackendConfig], Backend] | None = None) -> dict[str, Any]:
    """Generate (model sides), check every response, write ``benchmark.json`` / ``benchmark.jsonl`` /
    ``report.html`` in ``cfg.out``; returns the ``benchmark.json`` dict."""
    from rlaif.eval.benchmark_report import write_report

    factory = factory or load_backend
    check_benchmark_options(cfg)
    refuse_out_overlap(cfg.out, {"--a": cfg.a, "--b": cfg.b or None, "--benchmark": cfg.benchmark}, OUTPUTS)
    items = read_benchmark(cfg.benchmark, cfg.check, cfg.tolerance)
    checkers = Checkers(items)  # imports python: checkers before any model loads
    cfg = dataclasses.replace(cfg, benchmark=items[0].source.rsplit(":", 1)[0])
    ecfg = _as_eval_config(cfg)
    sides = [resolve_side(name, getattr(cfg, name)) for name in ("a", "b") if getattr(cfg, name)]
    prompts = [item.prompt for item in items]
    prompts, given = _given_candidates(ecfg, sides, prompts)
    if len(prompts) < len(items):
        raise UserError(f"option 'a'/'b': a candidates file lacks {len(items) - len(prompts)} of the benchmark's "
                        f"{len(items)} prompts; score the whole benchmark")
    models = [side for side in sides if side.candidates is None]
    plan = Plan(sides, prompts, {p.id: p.source for p in prompts}, given, _prompt_tokens(ecfg, models, prompts),
                [], [], None)
    state = prepare_out(ecfg, OUTPUTS, STAGES)
    out = Path(cfg.out)
    rows: dict[str, list[dict]] = dict(given)
    model_ids: dict[str, str] = {}
    for side in sides:
        if side.candidates is None:
            rows[side.name] = generate_side(ecfg, plan, side, state, factory)
            model_ids[side.name] = state.stage(f"generate_{side.name}").get("model_id", side.spec)
        else:
            model_ids[side.name] = side.spec
    results = {side.name: _side_result(items, rows[side.name], checkers) for side in sides}
    summary, item_rows = summarise(cfg, items, results, model_ids)
    write_jsonl(out / "benchmark.jsonl", item_rows)
    atomic_write_text(out / "benchmark.json", json.dumps(summary, indent=2) + "\n")
    write_report(out / "report.html", summary, item_rows)
    return summary
