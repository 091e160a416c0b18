"""The node's read-only status page (issue 9): a small Starlette app served by uvicorn in a
thread of ``lungnode run`` when ``status_page.enabled`` is true.

Pages (GET only; anything else is 405):
    /                       queue, deliveries with their errors, recent studies with their
                            scores, throughput and latency charts, the latest patient course
    /course/{study_uid}     the course of the patient of that study (chart and table)
    /charts/throughput.png, /charts/latency.png, /charts/course/{study_uid}.png
    /status.json            the same data as ``lungnode status --json``

Who may look: bound to 127.0.0.1 by default. With ``status_page.token`` set, every request
needs it, as ``Authorization: Bearer <token>`` or as the password of HTTP basic auth (any
user name; browsers prompt for it); the config refuses a non-loopback host without one.
The page shows UIDs, states, scores and dates; never patient names or IDs (a patient's
course is reached through one of their study UIDs).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from node.config import Settings
from node.course import course_scan
from node.status import collect_status
from node.status_charts import course_chart, latency_chart, throughput_chart
from node.store import DELIVERY_DONE, JOB_DONE, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, StateStore
from quant.course import Course, build_course

LOG = logging.getLogger(__name__)
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
DAY_S = 86400.0


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def _fmt_time(epoch: float | None) -> str:
    return "-" if not epoch else _utc(epoch).strftime("%Y-%m-%d %H:%M:%S UTC")


TEMPLATES.env.filters["utc"] = _fmt_time
TEMPLATES.env.filters["num"] = lambda v, fmt="{:.1f}": "-" if v is None else fmt.format(v)


class TokenGuard:
    """ASGI middleware: every HTTP request must carry the token (Bearer or basic password)."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    def _allowed(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            offered = value.strip().encode("utf-8")
        elif scheme.lower() == "basic":
            try:
                offered = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        return hmac.compare_digest(offered, self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if not self._allowed(headers.get("authorization", "")):
                response = PlainTextResponse(
                    "lungnode status page: authentication required", status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="lungnode status", charset="UTF-8"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def patient_course(store: StateStore, study_uid: str) -> Course | None:
    """The course of the patient of ``study_uid`` as of now (that study as the current one)."""
    patient = store.patient_of_study(study_uid)
    if patient is None:
        return None
    scans = [course_scan(r) for r in store.patient_scans(*patient)]
    current = [s for s in scans if s.study_uid == study_uid]
    if not current:
        return None
    return build_course(current[-1], scans)


def _recent_studies(store: StateStore, limit: int = 20) -> list[dict]:
    rows = []
    for result in store.recent_results(limit):
        doc = json.loads(result.measurements_json)
        course = doc.get("course") or {}
        rows.append({
            "study_uid": doc.get("study_instance_uid"), "series_uid": result.series_uid,
            "revision": result.revision, "analysed_at": result.created_at,
            "lesion_pct": doc.get("lesion_pct"), "ggo_pct": doc.get("ggo_pct"),
            "consolidation_pct": doc.get("consolidation_pct"), "ct_score": doc.get("ct_score"),
            "lesion_volume_ml": doc.get("lesion_volume_ml"), "engine": doc.get("engine"),
            "trend": course.get("trend"), "scans_in_course": len(course.get("scans", [])),
            "summary": course.get("summary") or course.get("note"),
        })
    return rows


def _course_rows(course: Course) -> list[dict]:
    rows = []
    for i, scan in enumerate(course.scans):
        row = {"date": scan.acquired_at.strftime("%Y-%m-%d %H:%M UTC"), "study_uid": scan.study_uid,
               "current": i == course.current_index}
        for key in ("lesion_volume_ml", "ggo_volume_ml", "consolidation_volume_ml", "lesion_pct",
                    "ct_score"):
            row[key] = course.measure(key).points[i]
        rows.append(row)
    return rows


def build_app(settings: Settings, store: StateStore) -> Starlette:
    def page(request: Request):
        report = collect_status(settings)
        queue = store.jobs_in_state(JOB_QUEUED, JOB_RUNNING)
        studies = _recent_studies(store)
        course_study = next((s["study_uid"] for s in studies if s["scans_in_course"] > 1), None)
        course = patient_course(store, course_study) if course_study else None
        return TEMPLATES.TemplateResponse(request, "status.html", {
            "report": report, "queue": queue, "studies": studies, "course": course,
            "course_study": course_study, "course_rows": _course_rows(course) if course else [],
            "now": time.time(), "ae_title": settings.network.ae_title,
            "destinations": [str(d) for d in settings.destinations],
        })

    def course_page(request: Request):
        study_uid = request.path_params["study_uid"]
        course = patient_course(store, study_uid)
        if course is None:
            return PlainTextResponse(f"no analysed study {study_uid} with a patient course",
                                     status_code=404)
        return TEMPLATES.TemplateResponse(request, "course.html", {
            "course": course, "course_study": study_uid, "course_rows": _course_rows(course)})

    def activity():
        now = time.time()
        jobs, deliveries = store.activity_since(now - DAY_S)
        return _utc(now), jobs, deliveries

    def throughput_png(request: Request):
        now, jobs, deliveries = activity()
        png = throughput_chart(
            [_utc(j.finished_at) for j in jobs if j.state == JOB_DONE],
            [_utc(j.finished_at) for j in jobs if j.state == JOB_FAILED],
            [_utc(d.done_at) for d in deliveries if d.state == DELIVERY_DONE and d.done_at],
            now)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    def latency_png(request: Request):
        now, jobs, _ = activity()
        points = [(_utc(j.finished_at), j.finished_at - j.created_at,
                   j.finished_at - (j.started_at or j.created_at))
                  for j in jobs if j.state == JOB_DONE]
        return Response(latency_chart(points, now), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    def course_png(request: Request):
        study_uid = request.path_params["study_uid"]
        course = patient_course(store, study_uid)
        if course is None:
            return PlainTextResponse("no such course", status_code=404)
        values = {name: [p.value for p in course.measure(key).points] for name, key in (
            ("lesions", "lesion_volume_ml"), ("GGO", "ggo_volume_ml"),
            ("consolidation", "consolidation_volume_ml"))}
        png = course_chart([s.acquired_at for s in course.scans], values,
                           current=course.current_index,
                           title=f"Course over {len(course.scans)} scans: {course.trend or 'no prior'}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    def status_json(request: Request):
        return JSONResponse(json.loads(json.dumps(collect_status(settings), default=str)))

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/course/{study_uid}", course_page, methods=["GET"]),
        Route("/charts/throughput.png", throughput_png, methods=["GET"]),
        Route("/charts/latency.png", latency_png, methods=["GET"]),
        Route("/charts/course/{study_uid}.png", course_png, methods=["GET"]),
        Route("/status.json", status_json, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    if settings.status_page.token:
        app.add_middleware(TokenGuard, token=settings.status_page.token)
    return app


class StatusPageServer:
    """uvicorn serving build_app() in a daemon thread; ``port`` is known after start()."""

    def __init__(self, settings: Settings, store: StateStore) -> None:
        cfg = settings.status_page
        self.host = cfg.host
        self._server = uvicorn.Server(uvicorn.Config(
            build_app(settings, store), host=cfg.host, port=cfg.port, log_level="warning",
            lifespan="off", access_log=False))
        self._thread = threading.Thread(target=self._server.run, name="status-page", daemon=True)
        self.port: int | None = None

    def start(self, timeout_s: float = 30) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(
                    f"status page: cannot listen on {self.host}: see the log above "
                    "(status_page.host / status_page.port)")
            if time.monotonic() > deadline:
                raise RuntimeError("status page: did not start within "
                                   f"{timedelta(seconds=timeout_s).seconds} s")
            time.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        LOG.info("status page on http://%s:%d/", self.host, self.port)

    def stop(self, timeout_s: float = 10) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
