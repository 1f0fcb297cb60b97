"""`rlaif review`: people check a sample of the judge's pairs in the browser.

    rlaif review DIR [--sample N] [--strategy margin|random|flagged] [--seed S] [--reviewer NAME]
                     [--port P] [--host H] [--allow-remote] [--resample]
    rlaif review report DIR [--json]   # the agreement figures in the terminal (rlaif.review.report)
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from rlaif.errors import UserError
from rlaif.webgate import LOOPBACK

USAGE = ("rlaif review DIR [--sample N] [--strategy margin|random|flagged] [--seed S] [--reviewer NAME] "
         "[--port P] [--host H] [--allow-remote] [--resample]\n       rlaif review report DIR [--json]")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    review = sub.add_parser(
        "review", usage=USAGE, help="check a sample of the judge's pairs in the browser; `review report DIR`: figures",
        description="Serve a local page where a person answers, for a seeded sample of a run's judged pairs, which "
        "response is better (A, B, tie, both bad, skip; keyboard a/b/t/x/s). The judge's scores, reasons and flags "
        "show only after each answer. Answers are appended to DIR/review/labels.jsonl; reopening continues with "
        "the first unanswered item. `rlaif review report DIR` prints the agreement figures instead.")
    review.add_argument("target", nargs="+", metavar="DIR",
                        help="the run folder (written by `rlaif run` / `rlaif build`); `report DIR` for the figures")
    review.add_argument("--sample", type=int, default=None, metavar="N",
                        help="items to sample on first start (default 50; all pairs if fewer)")
    review.add_argument("--strategy", choices=("margin", "random", "flagged"), default=None,
                        help="margin (default): stratified by the judge's margin, near-noise pairs over-sampled and "
                        "re-weighted in the figures; random; flagged: only pairs cut off, inside the noise margin "
                        "or position-inconsistent")
    review.add_argument("--seed", type=int, default=None, help="sampling seed (default 0): same seed, same sample")
    review.add_argument("--resample", action="store_true",
                        help="draw a new sample although DIR/review/items.jsonl exists (labels are kept; the old "
                        "sample is kept as items.prev.jsonl)")
    review.add_argument("--reviewer", default=None,
                        help="name recorded with each answer (default: your login name); several people may "
                        "review the same items")
    review.add_argument("--port", type=int, default=8766, help="port (default 8766; 0: any free port)")
    review.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only); another needs "
                        "--allow-remote")
    review.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than 127.0.0.1/localhost/::1 (anyone who can reach it and has "
                        "the URL can label)")
    review.add_argument("--json", action="store_true", help="with `report`: the figures as JSON instead of text")
    review.set_defaults(func=run_review)


def _report(dirs: list[str], as_json: bool) -> int:
    if len(dirs) != 1:
        raise UserError("usage: rlaif review report DIR (one run folder)")
    from rlaif.review.report import format_report, report_json

    if as_json:
        print(json.dumps(report_json(Path(dirs[0])), indent=2, sort_keys=True, default=str))
    else:
        print(format_report(Path(dirs[0])))
    return 0


def run_review(args: argparse.Namespace) -> int:
    target: list[str] = args.target
    if target[0] == "report" and (len(target) > 1 or not Path("report").is_dir()):
        return _report(target[1:], args.json)
    if len(target) != 1:
        raise UserError(f"rlaif review takes one run folder, got {' '.join(target)}")
    run = Path(target[0])
    if not run.is_dir():
        raise UserError(f"{run}: no such folder: give a run folder written by `rlaif run`")
    if args.sample is not None and args.sample < 1:
        raise UserError(f"--sample {args.sample}: expected at least 1")
    if args.host not in LOOPBACK and not args.allow_remote:
        raise UserError(f"--host {args.host}: not this machine only; add --allow-remote to serve the review there "
                        f"(anyone who can reach it and has the URL can label)")
    reviewer = (args.reviewer if args.reviewer is not None else _login()).strip()
    if not reviewer:
        raise UserError("--reviewer: give a name")
    return serve(run, args, reviewer)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "reviewer"


def serve(run: Path, args: argparse.Namespace, reviewer: str) -> int:
    import uvicorn

    from rlaif.review.app import Review, build_app
    from rlaif.review.items import load_or_sample
    from rlaif.webgate import listen, shown_url

    items, new = load_or_sample(run, size=args.sample, strategy=args.strategy, seed=args.seed,
                                resample=args.resample)
    sock = listen(args.host, args.port)
    review = Review(run, items, reviewer)
    state = review.state()
    print(f"rlaif review: {shown_url(sock, review.token)}", flush=True)
    sample = items[0]["sample"]
    print(f"  {len(items)} items ({'new ' if new else ''}sample: {sample['strategy']}, seed {sample['seed']}) in "
          f"{run / 'review' / 'items.jsonl'}; {reviewer} answered {state['summary']['answered']}; Ctrl-C to stop",
          flush=True)
    if args.host not in LOOPBACK:
        print(f"  warning: listening on {args.host}: anyone who can reach it and has the URL can label",
              file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(build_app(review, args.host, sock.getsockname()[1]), log_level="warning"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    print("rlaif review: stopped", file=sys.stderr)
    return 0
