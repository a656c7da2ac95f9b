"""The console's pages (Starlette + Jinja2; htmx polls the live parts).

    GET  /                        the overview: rates, lag per partition with a chart, members
    GET  /overview/live           its live part, polled by htmx every CONSOLE_REFRESH_S
    GET  /api/overview            the same numbers as JSON
    GET  /dead-letters            dead letters, filtered, a page at a time (?after= the cursor)
    GET  /dead-letters/{p}/{o}    one dead letter: headers and body
    POST /dead-letters/preview    re-drive dry run of the filtered set (or one letter: at=P:O)
    POST /dead-letters/redrive    the re-drive itself, after the preview
    GET/POST /login, POST /logout the token that allows actions
    GET  /healthz                 200 while the console runs (whatever the broker does)
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console_service import access
from console_service.actions import Busy, DeadLetters
from console_service.filters import BadFilter, Filters, format_cursor, parse_cursor, parse_filters
from console_service.rates import lag_series, member_rows, rates
from console_service.sampler import Sampler, Status
from console_service.settings import ConsoleSettings
from jobpipe.errors import ServiceError
from jobpipe.kafka_clients import kafka_reason
from jobpipe.logs import event
from topic_admin_service.errors import Refused
from topic_admin_service.output import dead_letter_detail, dead_letter_summary
from topic_admin_service.redrive import Tally, Verdict

HERE = Path(__file__).parent
SESSION_HOURS = 8
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Headers that keep the pages in their own frame and their scripts to the console's own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _reason(error: Exception) -> str:
    return kafka_reason(error) if isinstance(error, KafkaException) else str(error)


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def overview_model(status: Status, settings: ConsoleSettings, now: datetime) -> dict[str, Any]:
    """Everything the overview shows, from the sampler's status (pure)."""
    latest = status.latest
    found = rates(status.history)
    series = lag_series(status.history)
    members = member_rows(latest, status.progress) if latest else []
    partitions = [{"partition": p.partition, "start": p.start, "end": p.end, "committed": p.committed,
                   "lag": p.lag, "last_progress": _ago(status.progress.get(p.partition), now)}
                  for p in (latest.jobs if latest else ())]
    return {
        "group": settings.consumer_group, "jobs_topic": settings.jobs_topic, "dlq_topic": settings.dlq_topic,
        "share": settings.consumer_mode == "share",
        "sampled_at": latest.wall.strftime("%H:%M:%S UTC") if latest else None,
        "broker_error": status.broker_error,
        "failing_since": status.failing_since.strftime("%H:%M:%S UTC") if status.failing_since else None,
        "missing": list(status.missing),
        "rates": {"seconds": round(found.seconds, 1), "produced": _rate(found.produced),
                  "processed": _rate(found.processed), "dead_lettered": _rate(found.dead_lettered)},
        "raw_rates": asdict(found),
        "total_lag": latest.lag if latest else None,
        "produced_total": latest.produced if latest else None,
        "dead_letters_total": latest.dlq_end if latest else None,
        "group_state": latest.group_state if latest else "unknown",
        "partitions": partitions,
        "members": [{"client_id": m.client_id, "host": m.host, "member_id": m.member_id,
                     "partitions": ", ".join(map(str, m.partitions)) or "-", "lag": m.lag,
                     "last_progress": ("caught up" if m.caught_up and m.last_progress is None
                                       else _ago(m.last_progress, now)),
                     "caught_up": m.caught_up} for m in members],
        "chart": {"times": series.times, "partitions": series.partitions, "lags": series.lags},
    }


def tally_rows(tally: Tally) -> list[tuple[str, int]]:
    names = {Verdict.MOVE: "would move" if tally.dry_run else "moved",
             Verdict.FILTERED: "skipped by the filters", Verdict.ALREADY: "already re-driven",
             Verdict.MAX_REDRIVES: "left (max re-drives)"}
    return [("scanned", tally.scanned), *((names[v], tally.counts[v]) for v in Verdict)]


class Console:
    """The pages, over a sampler (the overview) and topic-admin's Redriver (dead letters)."""

    def __init__(self, settings: ConsoleSettings, sampler: Sampler, stop: threading.Event) -> None:
        self.settings = settings
        self.sampler = sampler
        self.letters = DeadLetters(settings, stop)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["refresh_s"] = settings.console_refresh_s

    def app(self) -> Starlette:
        routes = [
            Route("/", self.overview), Route("/overview/live", self.overview_live),
            Route("/api/overview", self.overview_json),
            Route("/dead-letters", self.dead_letters),
            Route("/dead-letters/preview", self.preview, methods=["POST"]),
            Route("/dead-letters/redrive", self.redrive, methods=["POST"]),
            Route("/dead-letters/{partition:int}/{offset:int}", self.dead_letter),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/healthz", lambda _request: PlainTextResponse("ok\n")),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        middleware = [
            Middleware(SecurityHeaders),
            # A key made here and kept only in memory: a restart signs everyone out.
            Middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32),
                       session_cookie="console_session", max_age=SESSION_HOURS * 3600, same_site="strict",
                       https_only=False),
        ]
        return Starlette(routes=routes, middleware=middleware)

    # ---- helpers ------------------------------------------------------------------------

    def _page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        token_set = self.settings.token() is not None
        context = {"csrf_token": access.csrf_token(request), "signed_in": access.signed_in(request),
                   "token_set": token_set, "group": self.settings.consumer_group,
                   "jobs_topic": self.settings.jobs_topic, "dlq_topic": self.settings.dlq_topic,
                   "status": self.sampler.status(), **context}
        return self.templates.TemplateResponse(request, template, context, status_code=status_code)

    def _refused(self, request: Request, reason: str, status_code: int = 403) -> Response:
        event("console.refused", f"{request.method} {request.url.path} refused: {reason}", level="WARNING",
              path=request.url.path, reason=reason)
        return self._page(request, "refused.html", status_code=status_code, reason=reason)

    async def _action_form(self, request: Request) -> tuple[dict[str, str], Response | None]:
        """The form of an action, or the refusal: read-only, then CSRF, then signed in."""
        form = await request.form()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        if self.settings.token() is None:
            return fields, self._refused(request, "the console is read-only: no CONSOLE_TOKEN or "
                                                  "CONSOLE_TOKEN_FILE is set")
        if not access.csrf_ok(request, fields.get(access.CSRF_FIELD)):
            return fields, self._refused(request, "the form's CSRF token is missing or stale: "
                                                  "reload the page and try again")
        if not access.signed_in(request):
            return fields, self._refused(request, "actions need the console's token: sign in first",
                                         status_code=401)
        return fields, None

    # ---- overview ---------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        model = overview_model(self.sampler.status(), self.settings, datetime.now(UTC))
        return self._page(request, "overview.html", o=model)

    async def overview_live(self, request: Request) -> Response:
        model = overview_model(self.sampler.status(), self.settings, datetime.now(UTC))
        return self._page(request, "_live.html", o=model)

    async def overview_json(self, _request: Request) -> Response:
        model = overview_model(self.sampler.status(), self.settings, datetime.now(UTC))
        return JSONResponse(json.loads(json.dumps(model, default=str)))

    # ---- dead letters -----------------------------------------------------------------------

    def _filters(self, params: Any) -> Filters:
        return parse_filters(params, datetime.now(UTC))

    async def dead_letters(self, request: Request) -> Response:
        try:
            filters = self._filters(request.query_params)
            after = parse_cursor(request.query_params.get("after"))
        except BadFilter as error:
            return self._page(request, "dead_letters.html", status_code=400, filters=None, texts=dict(
                request.query_params), problem=_reason(error), rows=[], next_query=None)
        status = self.sampler.status()
        if status.broker_error is not None:
            return self._page(request, "dead_letters.html", status_code=503, filters=filters,
                              texts=filters.texts, problem=None, rows=[], next_query=None, unavailable=True)
        try:
            page = await run_in_threadpool(self.letters.page, filters.selection,
                                           self.settings.console_page_size, after)
        except (ServiceError, KafkaException) as error:
            return self._page(request, "dead_letters.html", status_code=503, filters=filters,
                              texts=filters.texts, problem=_reason(error), rows=[], next_query=None)
        rows = [dead_letter_summary(letter, redriven) for letter, redriven in page.letters]
        next_query = filters.query(after=format_cursor(page.after)) if page.more else None
        return self._page(request, "dead_letters.html", filters=filters, texts=filters.texts, problem=None,
                          rows=rows, next_query=next_query, first_page=not after)

    async def dead_letter(self, request: Request) -> Response:
        partition, offset = request.path_params["partition"], request.path_params["offset"]
        filters = self._filters({"at": f"{partition}:{offset}"})
        try:
            page = await run_in_threadpool(self.letters.page, filters.selection, 1)
        except Refused:  # no such offset in the DLQ
            return self._page(request, "dead_letter.html", status_code=404, letter=None,
                              problem="no dead letter there", at=f"{partition}:{offset}")
        except (ServiceError, KafkaException) as error:
            return self._page(request, "dead_letter.html", status_code=503, letter=None,
                              problem=_reason(error), at=f"{partition}:{offset}")
        if not page.letters:
            return self._page(request, "dead_letter.html", status_code=404, letter=None,
                              problem="no dead letter there", at=f"{partition}:{offset}")
        letter, redriven = page.letters[0]
        detail = dead_letter_detail(letter, redriven)
        body = detail["body"]
        shown = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
        return self._page(request, "dead_letter.html", letter=detail, at=f"{partition}:{offset}", body=shown)

    async def preview(self, request: Request) -> Response:
        return await self._redrive(request, dry_run=True)

    async def redrive(self, request: Request) -> Response:
        return await self._redrive(request, dry_run=False)

    async def _redrive(self, request: Request, *, dry_run: bool) -> Response:
        fields, refused = await self._action_form(request)
        if refused is not None:
            return refused
        try:
            filters = self._filters(fields)
        except BadFilter as error:
            return self._refused(request, str(error), status_code=400)
        who = request.client.host if request.client else "unknown"
        try:
            tally = await run_in_threadpool(self.letters.redrive, filters.selection, dry_run=dry_run, who=who)
        except Busy as error:
            return self._refused(request, str(error), status_code=409)
        except (ServiceError, KafkaException) as error:
            return self._refused(request, f"the re-drive failed: {_reason(error)}", status_code=503)
        return self._page(request, "redrive.html", tally=tally, rows=tally_rows(tally), dry_run=dry_run,
                          filters=filters, texts=filters.texts)

    # ---- access -----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._page(request, "login.html", problem=None)
        form = await request.form()
        if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
            return self._refused(request, "the form's CSRF token is missing or stale: reload the page")
        if not access.token_ok(self.settings.token(), form.get("token")):
            event("console.sign_in_refused", "a sign-in with a wrong token was refused", level="WARNING",
                  client=request.client.host if request.client else "unknown")
            return self._page(request, "login.html", status_code=401, problem="that is not the token")
        access.sign_in(request)
        event("console.signed_in", "signed in to the console",
              client=request.client.host if request.client else "unknown")
        return RedirectResponse("/dead-letters", status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not access.csrf_ok(request, form.get(access.CSRF_FIELD)):
            return self._refused(request, "the form's CSRF token is missing or stale: reload the page")
        access.sign_out(request)
        return RedirectResponse("/", status_code=303)
