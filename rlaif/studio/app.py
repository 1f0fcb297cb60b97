"""The rubric studio's web app (Starlette): one static page and a small JSON API.

Every request passes `rlaif.webgate.WebGate`: the session token (``?token=``, the ``X-Studio-Token``
header, or the cookie the page sets from it), the served Host/Origin, and for a POST the token in the
header and a JSON body; else 403/415. The API:

==========================  ===================================================================
GET  /api/state             folder, rubric files, judge (engine, model, loaded), cache counts,
                            the judge methods (name, needs_judge, pairwise, view)
GET  /api/file?name=        {text, draft}: a rubric file's text and its draft's, if any
POST /api/lint              {name, text} -> lint findings of the unsaved text, its examples
POST /api/preview           {name, text, example | prompt, response, response_b} -> the exact
                            judge inputs, the verdict row and `rubric preview`'s text
POST /api/calibrate         {name, text} -> a background job judging the rubric's examples
GET  /api/jobs/{id}         the job's progress, then its calibration report
POST /api/jobs/{id}/cancel  stop it between two engine chunks
POST /api/save              {name, text, draft} -> written atomically if lint passes; with
                            ``draft`` true, a failing rubric goes to NAME.draft.yaml
==========================  ===================================================================

Bad input answers 4xx with ``{"error": one line}``; nothing is written unless a save succeeds.

A ``NAME.criteria.json`` file (``judge:auto``'s per-prompt criteria in a run's ``OUT/rubrics/``) is
listed, read, linted (`rlaif.judging.criteria_lint`) and saved the same way; a save marks it
``"edited_by": "person"`` so the trainer never rewrites it. It has no preview nor calibration.
"""

from __future__ import annotations

import json
import secrets
import sys
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlaif.backends.base import BackendConfig
from rlaif.errors import UserError
from rlaif.io.records import as_messages
from rlaif.judging.calibrate import calibrate, format_report
from rlaif.judging.judge import JudgeItem, judge_items, requests_for
from rlaif.judging.methods import METHODS
from rlaif.judging.preview import format_preview
from rlaif.judging.rubrics import Rubric
from rlaif.studio.engine import CachedJudge, Job, run_job
from rlaif.studio.files import CRITERIA_SUFFIX, RubricFolder, StudioInputError
from rlaif.webgate import WebGate, common_files, served_hosts

STATIC = Path(__file__).parent / "static"
COOKIE = "rlaif_studio_token"
HEADER = "x-studio-token"


class Studio:
    """The session's state: the folder, the warm judge, the running calibration."""

    def __init__(self, folder: Path, judge: BackendConfig, *, start: str | None = None, seed: int = 0,
                 verdict_retries: int = 2, token: str | None = None, judge_impl: CachedJudge | None = None) -> None:
        self.folder = RubricFolder(folder)
        self.judge = judge_impl or CachedJudge(judge)
        self.seed, self.verdict_retries = seed, verdict_retries
        self.token = token or secrets.token_urlsafe(24)
        names = self.folder.rubric_names()
        self.start = start or (names[0] if names else "new_rubric.yaml")
        self.jobs: dict[str, Job] = {}

    # -- the work behind the endpoints (plain functions: tests call them too) --------------------
    def state(self) -> dict[str, Any]:
        cfg = self.judge.config
        return {"folder": str(self.folder.root), "files": self.folder.rubric_names(), "start": self.start,
                "judge": {"engine": cfg.engine, "model": cfg.model, "loaded": self.judge.loaded,
                          "engine_requests": self.judge.engine_requests},
                "methods": [method.facts() for method in METHODS.values()]}

    def lint(self, name: str, text: str) -> dict[str, Any]:
        findings = self.folder.lint(name, text)
        out: dict[str, Any] = {
            "findings": [{"file": self._shown(f.path), "line": f.line, "level": f.level, "message": f.message}
                         for f in findings],
            "errors": sum(f.level == "error" for f in findings),
            "warnings": sum(f.level == "warning" for f in findings), "examples": [], "method": None,
            "previewable": not name.endswith(CRITERIA_SUFFIX)}
        if name.endswith(CRITERIA_SUFFIX):
            out["method"] = "criteria"  # judge:auto's per-prompt criteria: lint only
        elif not out["errors"]:
            rubric = self.folder.load(name, text)
            out["method"] = rubric.method
            out["examples"] = [{"index": k, "id": ex.id, "prompt": ex.prompt, "better": ex.better, "note": ex.note}
                               for k, ex in enumerate(rubric.examples)]
        return out

    def _shown(self, path: Path) -> str:
        p = Path(path).resolve()
        return self.folder.display(p) if p.is_relative_to(self.folder.root) else str(path)

    def _item(self, rubric: Rubric, spec: dict[str, Any]) -> JudgeItem:
        example = spec.get("example")
        if example is not None:
            if not isinstance(example, int) or not 0 <= example < len(rubric.examples):
                raise StudioInputError(f"example {example!r}: the rubric has {len(rubric.examples)} examples "
                                       f"(0-{len(rubric.examples) - 1})")
            ex = rubric.examples[example]
            return JudgeItem(ex.id or f"example-{example}", as_messages(ex.prompt), [ex.response_a, ex.response_b])
        prompt, response, response_b = spec.get("prompt"), spec.get("response"), spec.get("response_b")
        if not isinstance(prompt, str) or not isinstance(response, str) or not prompt.strip():
            raise StudioInputError("give an example number, or a prompt and a response")
        if response_b is not None and not isinstance(response_b, str):
            raise StudioInputError("'response_b' must be a string")
        responses = [response] + ([response_b] if response_b else [])
        if rubric.judge_method.pairwise and len(responses) < 2:
            raise StudioInputError(f"rubric '{rubric.name}' is pairwise: give response B too")
        return JudgeItem("studio", as_messages(prompt), responses)

    def preview(self, name: str, text: str, spec: dict[str, Any]) -> dict[str, Any]:
        rubric = self.folder.load(name, text)
        item = self._item(rubric, spec)
        requests = requests_for(rubric, item, 0, self.seed)  # renders: template errors before any engine
        before = self.judge.engine_requests
        if rubric.needs_judge:
            inputs = rubric.judge_method.judge_inputs(self.judge, rubric, requests)
            row = judge_items(self.judge, rubric, [item], seed=self.seed, verdict_retries=self.verdict_retries,
                              progress=False)[0]
        else:
            inputs, row = [], judge_items(None, rubric, [item], progress=False)[0]
        return {"method": rubric.method, "inputs": [{"title": t, "text": x} for t, x in inputs], "row": row,
                "text": format_preview(rubric, row, inputs), "responses": item.responses,
                "judged": self.judge.engine_requests - before, "requests": len(inputs)}

    def start_calibration(self, name: str, text: str) -> Job:
        rubric = self.folder.load(name, text)
        if not rubric.examples:
            raise StudioInputError(f"rubric '{rubric.name}' has no labelled examples to calibrate on", 422)
        for job in self.jobs.values():  # a newer text replaces the running calibration
            if job.kind == "calibrate" and job.status == "running":
                job.cancel.set()
        job = Job("calibrate")
        self.jobs = {k: j for k, j in self.jobs.items() if j.status == "running"} | {job.id: job}

        def work() -> dict[str, Any]:
            report = calibrate(self.judge if rubric.needs_judge else None, rubric, rubric.examples, seed=self.seed,
                               verdict_retries=self.verdict_retries, progress=False)
            worst = sorted((o for o in report.outcomes if not o.agrees),
                           key=lambda o: float("-inf") if o.margin is None else o.margin)[:3]
            return {"rubric": report.rubric, "method": report.method, "judge": report.judge, "n": report.n,
                    "agreement": report.agreement, "position_consistency": report.position_consistency,
                    "first_order_agreement": report.first_order_agreement, "failures": report.failures,
                    "length_pearson": report.length_pearson, "length_spearman": report.length_spearman,
                    "judge_prefers_longer": report.judge_prefers_longer,
                    "labels_prefer_longer": report.labels_prefer_longer,
                    "worst": [{"id": o.example.id, "prompt": o.example.prompt, "better": o.example.better,
                               "score_a": o.score_a, "score_b": o.score_b, "margin": o.margin} for o in worst],
                    "text": format_report(report, worst=3)}

        run_job(job, self.judge if rubric.needs_judge else None, work)
        return job

    def save(self, name: str, text: str, draft: bool) -> tuple[int, dict[str, Any]]:
        lint = self.lint(name, text)
        if lint["errors"] and not draft:
            return 422, {"error": f"not saved: the rubric fails lint ({lint['errors']} error(s)); fix them, or "
                                  f"use 'Save draft' to keep it as a draft beside the file", **lint}
        if name.endswith(CRITERIA_SUFFIX) and not lint["errors"]:  # a person's edit: never rewritten by the judge
            text = json.dumps({**json.loads(text), "edited_by": "person"}, indent=2, ensure_ascii=False) + "\n"
        saved = self.folder.save(name, text, draft=bool(lint["errors"]))
        return 200, {"text": text, "saved": self.folder.display(saved.path), "draft": saved.draft,
                     "previous": self.folder.display(saved.previous) if saved.previous else None, **lint}


# ---------------------------------------------------------------------------------------------
# HTTP

async def _body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except Exception:
        raise StudioInputError("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise StudioInputError("the request body must be a JSON object")
    return body


def _name_text(body: dict[str, Any]) -> tuple[str, str]:
    name, text = body.get("name"), body.get("text")
    if not isinstance(name, str) or not isinstance(text, str):
        raise StudioInputError("give 'name' (a rubric file in the folder) and 'text' (its YAML) as strings")
    return name, text


async def _studio_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StudioInputError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    if isinstance(exc, UserError):  # RubricError: file:line: message
        return JSONResponse({"error": str(exc)}, status_code=422)
    traceback.print_exception(exc, file=sys.stderr)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


class _Handlers:
    """The page and the JSON API of one studio session (routes in `build_app`)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    async def index(self, request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        response.set_cookie(COOKIE, self.studio.token, httponly=True, samesite="strict")
        return response

    async def state(self, request: Request) -> Response:
        return JSONResponse(self.studio.state())

    async def read_file(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        text, draft = await run_in_threadpool(self.studio.folder.read, name)
        return JSONResponse({"name": name, "text": text, "draft": draft})

    async def lint(self, request: Request) -> Response:
        name, text = _name_text(await _body(request))
        return JSONResponse(await run_in_threadpool(self.studio.lint, name, text))

    async def preview(self, request: Request) -> Response:
        body = await _body(request)
        name, text = _name_text(body)
        return JSONResponse(await run_in_threadpool(self.studio.preview, name, text, body))

    async def start_calibration(self, request: Request) -> Response:
        name, text = _name_text(await _body(request))
        job = await run_in_threadpool(self.studio.start_calibration, name, text)
        return JSONResponse(job.public(), status_code=202)

    def _job(self, request: Request) -> Job:
        job = self.studio.jobs.get(request.path_params["job"])
        if job is None:
            raise StudioInputError("no such job (finished jobs are replaced by newer ones)", 404)
        return job

    async def job_state(self, request: Request) -> Response:
        return JSONResponse(self._job(request).public())

    async def cancel(self, request: Request) -> Response:
        job = self._job(request)
        job.cancel.set()
        return JSONResponse(job.public())

    async def save(self, request: Request) -> Response:
        body = await _body(request)
        name, text = _name_text(body)
        status, out = await run_in_threadpool(self.studio.save, name, text, body.get("draft") is True)
        return JSONResponse(out, status_code=status)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        for job in self.studio.jobs.values():
            job.cancel.set()
        self.studio.judge.close()


def build_app(studio: Studio, host: str, port: int) -> Starlette:
    """The ASGI app for one studio session served at ``host:port`` (the gate checks Host/Origin against it)."""
    handlers = _Handlers(studio)
    routes = [
        Route("/", handlers.index), Route("/api/state", handlers.state), Route("/api/file", handlers.read_file),
        Route("/api/lint", handlers.lint, methods=["POST"]), Route("/api/preview", handlers.preview, methods=["POST"]),
        Route("/api/calibrate", handlers.start_calibration, methods=["POST"]),
        Route("/api/jobs/{job}", handlers.job_state), Route("/api/jobs/{job}/cancel", handlers.cancel, methods=["POST"]),
        Route("/api/save", handlers.save, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        common_files(),
    ]
    app = Starlette(routes=routes, lifespan=handlers.lifespan,
                    exception_handlers={StudioInputError: _studio_error, UserError: _studio_error,
                                        Exception: _studio_error})
    app.add_middleware(WebGate, token=studio.token, header=HEADER, cookie=COOKIE, hosts=served_hosts(host, port),
                       what="`rlaif rubric studio`")
    return app
