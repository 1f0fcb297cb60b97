"""`rlaif review`'s web app (Starlette): one static page and a small JSON API over DIR/review/.

Every request passes `rlaif.webgate.WebGate` (token, Host/Origin, and for a POST the token header
and a JSON body). The API:

======================  ==========================================================================
GET  /api/state         run, reviewer, number of items, answered, the next unanswered item, summary
GET  /api/item?index=k  item k (``?next``: the first this reviewer has not answered): prompt and
                        the two responses in shown order; the judge's view only once answered
POST /api/label         {item, answer, note, shown} -> appended to labels.jsonl; answers the
                        judge's view and whether the person agreed
======================  ==========================================================================

Bad requests answer one-line JSON errors and write nothing: unknown item 404, a stale item (its
shown order is not the one given) 409, a malformed body 400. Only DIR/review/labels.jsonl is written.
"""

from __future__ import annotations

import secrets
import sys
import threading
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlaif.errors import UserError
from rlaif.io.review_files import ANSWERS, DECIDED, append_label, latest_labels, read_labels
from rlaif.review.items import public
from rlaif.review.stats import review_stats
from rlaif.webgate import WebGate, common_files, served_hosts

STATIC = Path(__file__).parent / "static"
COOKIE = "rlaif_review_token"
HEADER = "x-review-token"


class ReviewInputError(Exception):
    """A bad request: its message is the one-line error, ``status`` the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def agrees(item: dict, label: dict) -> bool | None:
    """Whether the person's A/B answer names the judge's preferred candidate (None: not comparable)."""
    preferred = item["judge"].get("preferred")
    return None if label["answer"] not in DECIDED or preferred is None else label["preferred"] == preferred


class Review:
    """One reviewer's session over a run's sample: the items, the labels file, the token."""

    def __init__(self, run: Path, items: list[dict], reviewer: str, token: str | None = None) -> None:
        self.run, self.items, self.reviewer = run, items, reviewer
        self.labels_path = run / "review" / "labels.jsonl"
        self.by_id = {item["item"]: k for k, item in enumerate(items)}
        self.token = token or secrets.token_urlsafe(24)
        self.lock = threading.Lock()

    def mine(self) -> dict[str, dict]:
        """This reviewer's latest answer per item."""
        latest = latest_labels(read_labels(self.labels_path))
        return {item: row for (reviewer, item), row in latest.items() if reviewer == self.reviewer}

    def next_index(self, mine: dict[str, dict]) -> int | None:
        return next((k for k, item in enumerate(self.items) if item["item"] not in mine), None)

    def summary(self, mine: dict[str, dict]) -> dict[str, Any]:
        """Answered, and agreement with the judge on this reviewer's A/B answers (plain counts); the
        full figures (all reviewers, weighted, 95% interval) from `rlaif.review.stats`."""
        verdicts = [agrees(self.items[self.by_id[i]], row) for i, row in mine.items() if i in self.by_id]
        decided = [v for v in verdicts if v is not None]
        out: dict[str, Any] = {"answered": len(verdicts), "items": len(self.items), "compared": len(decided),
                               "agreed": sum(decided), "agreement": sum(decided) / len(decided) if decided else None}
        try:
            out["stats"] = review_stats(self.items, read_labels(self.labels_path))
        except Exception as exc:  # the summary panel never breaks labelling
            out["stats_error"] = f"{type(exc).__name__}: {exc}"
        return out

    def state(self) -> dict[str, Any]:
        mine = self.mine()
        return {"run": str(self.run), "reviewer": self.reviewer, "items": len(self.items),
                "next": self.next_index(mine), "summary": self.summary(mine),
                "sample": self.items[0]["sample"] if self.items else None}

    def _view(self, k: int, mine: dict[str, dict]) -> dict[str, Any]:
        item = self.items[k]
        label = mine.get(item["item"])
        out = {"index": k, "items": len(self.items), "item": public(item), "label": label}
        if label is not None:  # the judge's view only after the person answered
            out |= {"judge": item["judge"], "in_dataset": item.get("in_dataset"), "stratum": item.get("stratum"),
                    "weight": item.get("weight"), "candidates": item["candidates"], "agrees": agrees(item, label)}
        return out

    def item(self, index: str | None) -> dict[str, Any]:
        mine = self.mine()
        if index is None:
            k = self.next_index(mine)
            if k is None:
                return {"index": None, "items": len(self.items), "done": True}
        else:
            try:
                k = int(index)
            except ValueError:
                raise ReviewInputError(f"index {index!r}: expected a whole number") from None
            if not 0 <= k < len(self.items):
                raise ReviewInputError(f"index {k}: the sample has {len(self.items)} items (0-{len(self.items) - 1})",
                                       404)
        return self._view(k, mine)

    def label(self, body: Any) -> dict[str, Any]:
        """Validate an answer and append it (one row); the item's full view back."""
        if not isinstance(body, dict):
            raise ReviewInputError("the request body must be a JSON object {item, answer, note, shown}")
        item_id, answer, note, shown = body.get("item"), body.get("answer"), body.get("note", ""), body.get("shown")
        if not isinstance(item_id, str):
            raise ReviewInputError("'item' must be the item's id (a string)")
        if answer not in ANSWERS:
            raise ReviewInputError(f"'answer' must be one of {', '.join(ANSWERS)}, got {answer!r}")
        if note is None:
            note = ""
        if not isinstance(note, str) or len(note) > 10_000:
            raise ReviewInputError("'note' must be a string of at most 10000 characters")
        if not (isinstance(shown, list) and len(shown) == 2 and all(type(v) is int for v in shown)):
            raise ReviewInputError("'shown' must be the two candidate indices in the order shown, e.g. [1, 0]")
        if item_id not in self.by_id:
            raise ReviewInputError(f"no item {item_id!r} in this review's sample", 404)
        item = self.items[self.by_id[item_id]]
        if shown != item["show"]:
            raise ReviewInputError(f"item {item_id!r} is shown as {item['show']}, not {shown}: reload the page", 409)
        row = {"item": item_id, "reviewer": self.reviewer,
               "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "shown": shown, "answer": answer,
               "preferred": shown[DECIDED.index(answer)] if answer in DECIDED else None, "note": note.strip()}
        with self.lock:  # one writer at a time (the repair-then-append in append_label is not atomic)
            append_label(self.labels_path, row)
            mine = self.mine()
        return self._view(self.by_id[item_id], mine) | {"next": self.next_index(mine), "summary": self.summary(mine)}


async def _error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ReviewInputError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    if isinstance(exc, UserError):  # e.g. a labels file with a bad row: name it, change nothing
        return JSONResponse({"error": str(exc)}, status_code=500)
    traceback.print_exception(exc, file=sys.stderr)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def build_app(review: Review, host: str, port: int) -> Starlette:
    """The ASGI app for one review session served at ``host:port``."""
    from starlette.concurrency import run_in_threadpool

    async def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        response.set_cookie(COOKIE, review.token, httponly=True, samesite="strict")
        return response

    async def state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(review.state))

    async def item(request: Request) -> Response:
        params = request.query_params
        index = None if "next" in params or "index" not in params else params["index"]
        return JSONResponse(await run_in_threadpool(review.item, index))

    async def label(request: Request) -> Response:
        try:
            body = await request.json()
        except Exception:
            raise ReviewInputError("the request body must be a JSON object {item, answer, note, shown}") from None
        return JSONResponse(await run_in_threadpool(review.label, body))

    routes = [Route("/", index), Route("/api/state", state), Route("/api/item", item),
              Route("/api/label", label, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static"), common_files()]
    app = Starlette(routes=routes, exception_handlers={ReviewInputError: _error, UserError: _error, Exception: _error})
    app.add_middleware(WebGate, token=review.token, header=HEADER, cookie=COOKIE, hosts=served_hosts(host, port),
                       what="`rlaif review`")
    return app
