"""Verbs ``rubric lint | preview | calibrate``: fast, honest feedback while editing a rubric.

    rlaif rubric lint [FILES...] [--tokens]                       # default: every rubrics/*.yaml
    rlaif rubric preview RUBRIC --prompt TEXT --response TEXT [--response-b TEXT]
    rlaif rubric preview RUBRIC --from candidates.jsonl --row N
    rlaif rubric calibrate RUBRIC [--examples FILE] [--min-agreement 0.8]   # FILE: e.g. bench/data/judge_pairs.jsonl
    rlaif rubric studio [RUBRIC] [--port 8765] [--host 127.0.0.1]   # edit in the browser (rlaif.studio)

The judge is ``judge.*`` (engine "auto" = vLLM if installed, else transformers; model: the
embedded SmolLM2-135M-Instruct, a weak judge); change it with key=value or --config.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from rlaif.backends.base import BackendConfig
from rlaif.config import add_config_arguments, load_config, option
from rlaif.errors import UserError
from rlaif.io.records import as_messages
from rlaif.io.store import atomic_write_text


@dataclass
class RubricCommandConfig:
    """Options of the ``rubric`` verbs."""

    judge: BackendConfig = option(BackendConfig, "the judge engine and model (judge.engine, judge.model, ...)")
    seed: int = option(0, "seed for principle sampling and verdict generation")
    verdict_retries: int = option(2, "verdict rubrics: re-asks of an invalid verdict before it is recorded as "
                                     "failed (HTTP retries: judge.http_retries)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    rubric = sub.add_parser("rubric", help="lint, preview and calibrate rubrics",
                            description="Edit a rubric and see at once what the judge does with it.")
    verbs = rubric.add_subparsers(dest="rubric_verb", metavar="lint|preview|calibrate|studio")

    lint = verbs.add_parser("lint", help="check rubric files (schema, template, variables, scale, rendering)",
                            description="Check rubric files; errors print as file:line: message; exit 1 on "
                                        "any error (warnings do not fail).")
    lint.add_argument("files", nargs="*", metavar="FILE", help="rubric YAML files, names or folders "
                      "(default: every rubrics/*.yaml)")
    lint.add_argument("--tokens", action="store_true",
                      help="also check that every score/choice is one token in judge.model's tokenizer")
    add_config_arguments(lint, RubricCommandConfig)
    lint.set_defaults(func=run_lint)

    preview = verbs.add_parser("preview", help="show the exact judge input and the judge's verdict for one example")
    preview.add_argument("rubric", metavar="RUBRIC", help="rubric name or YAML path")
    preview.add_argument("--prompt", help="the user's prompt")
    preview.add_argument("--response", help="the response to judge (pairwise: response A)")
    preview.add_argument("--response-b", help="pairwise: the second response")
    preview.add_argument("--from", dest="from_file", metavar="FILE",
                         help="candidates/JSONL file with prompt|messages and responses (or response_a/response_b)")
    preview.add_argument("--row", type=int, default=1, metavar="N", help="line number in --from (1-based; default 1)")
    add_config_arguments(preview, RubricCommandConfig)
    preview.set_defaults(func=run_preview)

    cal = verbs.add_parser("calibrate", help="agreement with labelled pairs, position consistency, verbosity bias")
    cal.add_argument("rubric", metavar="RUBRIC", help="rubric name or YAML path")
    cal.add_argument("--examples", metavar="FILE", help="labelled pairs, YAML list or JSONL: rows of prompt, "
                     "response_a, response_b, better: a|b, or of prompt, better, worse (texts); an optional 'fault' "
                     "on every row adds a per-fault-kind table (e.g. bench/data/judge_pairs.jsonl); default: "
                     "the rubric's own examples")
    cal.add_argument("--min-agreement", type=float, metavar="X", help="exit 1 when agreement is below X (0-1)")
    cal.add_argument("--worst", type=int, default=3, metavar="K", help="how many disagreements to show")
    cal.add_argument("--json", metavar="FILE", help="also write the judgements and metrics as JSON")
    add_config_arguments(cal, RubricCommandConfig)
    cal.set_defaults(func=run_calibrate)

    _add_studio_parser(verbs)
    rubric.set_defaults(func=lambda args: rubric.print_help() or 2)


def _add_studio_parser(verbs: argparse._SubParsersAction) -> None:
    studio = verbs.add_parser("studio", help="edit a rubric in the browser: lint, judge input, verdict and "
                              "calibration refresh as you type",
                              description="Serve a local page that edits the rubrics in RUBRIC's folder (default: "
                              "./rubrics) with a warm judge. The URL printed at start carries a random token; "
                              "requests without it are refused.")
    studio.add_argument("rubric", nargs="?", metavar="RUBRIC", help="rubric name or YAML path to open first; its "
                        "folder is the one the studio may write; or a folder (e.g. a run's OUT/rubrics, judge:auto's "
                        "criteria files)")
    studio.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    studio.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                        "machine only)")
    add_config_arguments(studio, RubricCommandConfig)
    studio.set_defaults(func=run_studio)


def _config(args: argparse.Namespace, overrides: list[str] | None = None) -> RubricCommandConfig:
    cfg = load_config(RubricCommandConfig, args.config, args.overrides if overrides is None else overrides)
    if cfg.verdict_retries < 0:
        raise UserError(f"option 'verdict_retries': must be >= 0, got {cfg.verdict_retries}")
    return cfg


# ---------------------------------------------------------------------------------------------
# lint

def _rubric_files(folder: Path) -> list[Path]:
    """A folder's rubrics: its *.yaml files but the studio's drafts (NAME.draft.yaml, which fail lint by design)."""
    return sorted(p for p in folder.glob("*.yaml") if not p.name.endswith(".draft.yaml"))


def _lint_targets(files: list[str]) -> list[Path]:
    from rlaif.judging.rubrics import find_rubric, rubric_dirs

    if not files:
        folder = next((d for d in rubric_dirs() if d.is_dir()), None)
        if folder is None:
            raise UserError("no rubrics/ folder here; name the rubric files to lint")
        return _rubric_files(folder)
    out: list[Path] = []
    for f in files:
        p = Path(f)
        out += _rubric_files(p) if p.is_dir() else [find_rubric(f)]
    return out


def run_lint(args: argparse.Namespace) -> int:
    from rlaif.judging.lint import lint_file

    # FILE and key=value share the positional slot: split them (an existing file always wins)
    files = [f for f in args.files if Path(f).exists() or not re.match(r"^[A-Za-z_][\w.-]*=", f)]
    overrides = [f for f in args.files if f not in files] + list(args.overrides or [])
    cfg = _config(args, overrides)
    tokenizer = None
    if args.tokens:
        from transformers import AutoTokenizer

        from rlaif.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.judge.model))
    targets = _lint_targets(files)
    errors = warnings = 0
    for path in targets:
        for finding in lint_file(path, tokenizer):
            print(finding)
            errors += finding.level == "error"
            warnings += finding.level == "warning"
    print(f"{len(targets)} rubric(s): {errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if errors else 0


# ---------------------------------------------------------------------------------------------
# preview

def run_preview(args: argparse.Namespace) -> int:
    from rlaif.backends import load_backend
    from rlaif.io.candidate_rows import candidate_row
    from rlaif.judging.judge import JudgeItem, judge_items, requests_for
    from rlaif.judging.preview import format_preview
    from rlaif.judging.rubrics import load_rubric

    cfg = _config(args)
    rubric = load_rubric(args.rubric)
    if args.from_file:
        row = candidate_row(Path(args.from_file), args.row)
        item = JudgeItem(row.id, row.messages, row.responses, row.finish_reasons, row.num_tokens)
    else:
        if args.prompt is None or args.response is None:
            raise UserError("preview needs --prompt and --response (or --from FILE --row N)")
        responses = [args.response] + ([args.response_b] if args.response_b is not None else [])
        item = JudgeItem("preview", as_messages(args.prompt), responses)
    if rubric.judge_method.pairwise and len(item.responses) < 2:
        raise UserError(f"rubric '{rubric.name}' is pairwise: give --response-b (or a row with 2+ responses)")
    requests = requests_for(rubric, item, 0, cfg.seed)  # renders now: template errors before loading a model
    if not rubric.needs_judge:  # rules: no model
        print(format_preview(rubric, judge_items(None, rubric, [item], progress=False)[0], []))
        return 0
    backend = load_backend(cfg.judge)
    try:
        inputs = rubric.judge_method.judge_inputs(backend, rubric, requests)
        judgement = judge_items(backend, rubric, [item], seed=cfg.seed, verdict_retries=cfg.verdict_retries,
                                progress=False)[0]
    finally:
        backend.close()
    print(format_preview(rubric, judgement, inputs))
    return 0


# ---------------------------------------------------------------------------------------------
# calibrate

def run_calibrate(args: argparse.Namespace) -> int:
    from rlaif.backends import load_backend
    from rlaif.judging.calibrate import calibrate, format_report, read_examples
    from rlaif.judging.rubrics import load_rubric

    cfg = _config(args)
    rubric = load_rubric(args.rubric)
    examples = read_examples(args.examples) if args.examples else rubric.examples
    if not examples:
        raise UserError(f"rubric '{rubric.name}' has no calibration examples; pass --examples FILE")
    if args.min_agreement is not None and not 0 <= args.min_agreement <= 1:
        raise UserError(f"--min-agreement {args.min_agreement}: expected a fraction between 0 and 1")
    backend = load_backend(cfg.judge) if rubric.needs_judge else None  # rules: no model to load
    try:
        report = calibrate(backend, rubric, examples, seed=cfg.seed, verdict_retries=cfg.verdict_retries)
    finally:
        if backend is not None:
            backend.close()
    print(format_report(report, worst=args.worst))
    if args.json:
        atomic_write_text(args.json, json.dumps({
            "rubric": report.rubric, "judge": report.judge, **report.metrics(),
            "length_pearson": report.length_pearson, "length_spearman": report.length_spearman,
            "judgements": [o.judgement for o in report.outcomes]}, indent=1) + "\n")
    if args.min_agreement is not None and report.agreement < args.min_agreement:
        print(f"agreement {report.agreement:.2f} is below --min-agreement {args.min_agreement}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# studio

def run_studio(args: argparse.Namespace) -> int:
    import uvicorn

    from rlaif.judging.rubrics import find_rubric, rubric_dirs
    from rlaif.studio.app import Studio, build_app
    from rlaif.webgate import listen, shown_url

    # RUBRIC and key=value share the positional slot: a key=value there is an override
    if args.rubric is not None and not Path(args.rubric).exists() and re.match(r"^[A-Za-z_][\w.-]*=", args.rubric):
        args.overrides, args.rubric = [args.rubric] + list(args.overrides or []), None
    cfg = _config(args)
    if args.rubric is not None and Path(args.rubric).is_dir():  # e.g. a run's OUT/rubrics (judge:auto criteria)
        folder, start = Path(args.rubric), None
    elif args.rubric is not None:
        path = find_rubric(args.rubric)
        folder, start = path.parent, path.name
    else:
        folder = next((d for d in rubric_dirs() if d.is_dir()), None)
        if folder is None:
            raise UserError("no rubrics/ folder here; name a rubric (rlaif rubric studio RUBRIC)")
        start = None
    sock = listen(args.host, args.port)
    studio = Studio(folder, cfg.judge, start=start, seed=cfg.seed, verdict_retries=cfg.verdict_retries)
    print(f"rubric studio: {shown_url(sock, studio.token)}", flush=True)
    print(f"  editing {studio.folder.root} (opens {studio.start}); judge {cfg.judge.engine} {cfg.judge.model}, "
          f"loaded on the first judge call and kept warm; Ctrl-C to stop", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  warning: listening on {args.host}: anyone who can reach it and has the URL can edit and save "
              f"rubrics", file=sys.stderr)
    app = build_app(studio, args.host, sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    try:
        server.run(sockets=[sock])  # Ctrl-C / SIGTERM: uvicorn shuts down (the judge engine closes), then re-raises
    except KeyboardInterrupt:
        pass
    print("rubric studio: stopped", file=sys.stderr)
    return 0
