"""The dashboard's pages: server-rendered HTML (Jinja2), plain links and forms, no JavaScript.

==============================================  ==============================================
``GET /``                                       each subsystem's streams and groups: length,
                                                lag, pending, oldest pending, delayed, dead
``GET /streams/{subsystem}/{kind}``             the newest records of a stream
``GET /records/{subsystem}/{kind}/{id}``        a record and its handling history per concern
``GET /dead-letters/{subsystem}``               dead letters, with Retry and Archive buttons
``GET /failed/{subsystem}/{kind}/{concern}``    records Failed for a concern, with buttons
``GET /views/{subsystem}?id=ID``                a view's latest JSON
``GET /asyncapi.json``                          the app's AsyncAPI 3 document
``GET /health``                                 200 when the server answers
==============================================  ==============================================

A button is a form that POSTs to its own URL and is redirected back to the list (303) with a
line saying what was done. A POST whose ``Origin`` is another site is refused (403), so a
page elsewhere cannot make an operator's browser retry or archive anything. The dashboard
has no login of its own: it listens on loopback unless told otherwise; put it behind the
proxy that authenticates your operators before you open it wider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from redis.exceptions import RedisError

from streamcqrs.bots.dashboard.pages import Pages
from streamcqrs.domain.errors import StreamCQRSError
from streamcqrs.handlers.asyncapi import asyncapi_document
from streamcqrs.handlers.registry import App
from streamcqrs.streams.cli import CommandError
from streamcqrs.streams.cli._deadletters import origin
from streamcqrs.streams.connection import Settings
from streamcqrs.streams.keys import Kind
from streamcqrs.streams.server import redact

ACTIONS = ("retry", "archive")


def templates() -> Jinja2Templates:
    """The page templates, shipped in this package, HTML-escaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("streamcqrs.bots.dashboard", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["partition"] = lambda key: _where(key)[0]
    env.filters["kind"] = lambda key: _where(key)[1]
    return Jinja2Templates(env=env)


def _where(stream_key: str) -> tuple[str, str]:
    """(partition, kind) of a stream key, as text for links; empty for a key of another form."""
    try:
        part, kind = origin(stream_key)
    except CommandError:
        return "", ""
    return str(part.partition), kind.value


def _kind(text: str) -> Kind:
    try:
        return Kind(text)
    except ValueError:
        known = ", ".join(k.value for k in Kind)
        raise HTTPException(404, f"no stream kind {text!r}; one of: {known}") from None


def _same_site(request: Request) -> None:
    """403 for a POST another site's page made the browser send (its Origin is not ours)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise HTTPException(403, "cross-site request refused")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "cross-site request refused")


def create_dashboard(app: App, url: str, *, title: str | None = None) -> FastAPI:
    """The dashboard of ``app``'s streams on the server at ``url``."""
    pages_of: dict[str, Pages] = {}

    @asynccontextmanager
    async def lifespan(web: FastAPI) -> AsyncIterator[None]:
        client = Settings(url=url, retries=1).client()
        pages_of["pages"] = Pages(app, client)
        try:
            yield
        finally:
            client.close()

    web = FastAPI(title=title or f"{app.name} dashboard", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    html = templates()
    shown = {"app": app.name, "server": redact(url)}

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        note = request.query_params.get("note", "")
        return html.TemplateResponse(request, name, {**shown, "note": note, **context})

    def pages() -> Pages:
        return pages_of["pages"]

    @web.exception_handler(RedisError)
    async def unavailable(request: Request, exc: RedisError) -> Response:
        return HTMLResponse(f"<h1>server unavailable</h1><p>{exc}</p>", status_code=503)

    @web.exception_handler(StreamCQRSError)
    async def refused(request: Request, exc: StreamCQRSError) -> Response:
        if request.method == "POST":  # a button: back to its list, saying why not
            listing = request.url.path.rsplit("/", 2)[0]
            return RedirectResponse(_with_note(listing, f"error: {exc}"), status_code=303)
        return html.TemplateResponse(
            request, "error.html", {**shown, "note": "", "error": str(exc)}, status_code=400
        )

    @web.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        return page(request, "overview.html", subsystems=pages().overview())

    @web.get("/streams/{subsystem}/{kind}", response_class=HTMLResponse)
    def stream(request: Request, subsystem: str, kind: str) -> HTMLResponse:
        records = pages().newest(subsystem, _kind(kind))
        return page(request, "stream.html", subsystem=subsystem, kind=kind,
                    records=list(reversed(records)))  # fmt: skip

    @web.get("/records/{subsystem}/{kind}/{ident}", response_class=HTMLResponse)
    def record(
        request: Request, subsystem: str, kind: str, ident: str, partition: int | None = None
    ) -> HTMLResponse:
        found = pages().record(subsystem, _kind(kind), ident, partition)
        if found is None:
            raise HTTPException(404, f"no record {ident!r} in {subsystem}/{kind}")
        return page(request, "record.html", subsystem=subsystem, kind=kind, record=found)

    @web.get("/dead-letters/{subsystem}", response_class=HTMLResponse)
    def dead_letters(request: Request, subsystem: str) -> HTMLResponse:
        found, notes = pages().dead_letters(subsystem)
        return page(request, "dead_letters.html", subsystem=subsystem, letters=found,
                    notes=notes)  # fmt: skip

    @web.post("/dead-letters/{subsystem}/{ident}/{act}")
    def act_on_dead_letter(request: Request, subsystem: str, ident: str, act: str) -> Response:
        _same_site(request)
        if act not in ACTIONS:
            raise HTTPException(404, f"no action {act!r}; one of {', '.join(ACTIONS)}")
        done = pages().act_on_dead_letter(subsystem, ident, act)
        return RedirectResponse(_with_note(f"/dead-letters/{subsystem}", done), status_code=303)

    @web.get("/failed/{subsystem}/{kind}/{concern}", response_class=HTMLResponse)
    def failed(request: Request, subsystem: str, kind: str, concern: str) -> HTMLResponse:
        records = pages().failed(subsystem, _kind(kind), concern)
        return page(request, "failed.html", subsystem=subsystem, kind=kind, concern=concern,
                    records=records)  # fmt: skip

    @web.post("/failed/{subsystem}/{kind}/{concern}/{ident}/{act}")
    def act_on_failed(
        request: Request, *, subsystem: str, kind: str, concern: str, ident: str, act: str
    ) -> Response:
        _same_site(request)
        if act not in ACTIONS:
            raise HTTPException(404, f"no action {act!r}; one of {', '.join(ACTIONS)}")
        done = pages().act_on_failed(subsystem, _kind(kind), concern, ident, act)
        back = f"/failed/{subsystem}/{kind}/{concern}"
        return RedirectResponse(_with_note(back, done), status_code=303)

    @web.get("/views/{subsystem}", response_class=HTMLResponse)
    def view(
        request: Request, subsystem: str, ident: str = Query("", alias="id")
    ) -> HTMLResponse:
        found = pages().view(subsystem, ident) if ident else None
        return page(request, "view.html", subsystem=subsystem, ident=ident, view=found)

    @web.get("/asyncapi.json")
    def asyncapi() -> JSONResponse:
        return JSONResponse(asyncapi_document(app))

    @web.get("/health")
    def health() -> Response:
        pages().client.ping()
        return Response("ok\n", media_type="text/plain")

    return web


def _with_note(path: str, note: str) -> str:
    """``path`` with ``?note=...`` for the page to show (replacing an older note)."""
    parts = urlsplit(path)
    return f"{parts.path}?note={quote(note)}"


__all__ = ["create_dashboard", "templates"]
