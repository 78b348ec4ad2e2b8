"""The control API: HTTP/JSON routes over the mount's services (FastAPI; OpenAPI at /openapi.json).

Routes translate and delegate, as ``Operations`` does for FUSE: every answer
comes from a service's method, blocking ones (SQLite, disk) in a worker
thread so the filesystem never waits on the API. Long operations (a rescan)
and the event feed stream NDJSON: one JSON document per line.

Errors are JSON with a ``detail`` saying what was wrong: 404 for an unknown
route or id, 400 for a value the service refuses (an unknown event type: with
the known ones), 422 for a request that does not fit its schema, 413 for a
body over ``MAX_BODY``, 408 for one that does not arrive within
``BODY_TIMEOUT``. A failure inside a route is a 500 for that request, logged
with its traceback; the daemon serves on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from functools import partial
from typing import Any

import trio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..events import FEED_DEFAULT, Dropped, Event, Subscription, event_types
from .services import ControlServices

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes: every request this API takes is a few small fields
BODY_TIMEOUT = 10.0  # seconds a request's body may take to arrive (a half-sent request is answered 408)
NDJSON = "application/x-ndjson"
_TOO_LARGE = f"request body over {MAX_BODY} bytes"
TIERS = ("chunks",)  # the cache tiers that exist (headers and metadata come with their features)


class ShutdownBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False
    drain_timeout_ms: int = Field(5000, ge=0, le=600_000)


class ClearBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    origin: str | None = Field(None, max_length=200)
    tier: str | None = Field(None, max_length=50)
    dry_run: bool = False


def _limit_body(app):
    """ASGI middleware: refuse bodies over MAX_BODY (declared or streamed) with 413, and bodies that
    stall (a client that sends half a request and waits) with 408 after BODY_TIMEOUT.

    A stream already answering (its route never read the body) is ended instead: the
    client sees it stop, the daemon logs nothing.
    """
    async def limited(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return await _too_large(send)
        seen = 0
        complete = responded = False

        async def answering(message):
            nonlocal responded
            responded = True
            await send(message)

        async def counting():
            nonlocal seen, complete
            if complete:  # the body is in; what follows is the wait for a disconnect (streams)
                return await receive()
            problem: Exception | None = None
            with trio.move_on_after(BODY_TIMEOUT) as waited:
                message = await receive()
            if waited.cancelled_caught:
                problem = HTTPException(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s")
            elif message["type"] == "http.request":
                seen += len(message.get("body", b""))
                problem = HTTPException(413, _TOO_LARGE) if seen > MAX_BODY else None
                complete = not message.get("more_body", False)
            else:
                complete = True
            if problem is not None:
                if responded:
                    return {"type": "http.disconnect"}
                raise problem
            return message

        await app(scope, counting, answering)
    return limited


async def _too_large(send) -> None:
    """Answer 413 and let the connection go (its unread body makes it unusable).

    The answer races hypercorn closing that connection: a client still sending
    a body nobody reads may find the connection closing under the answer. That
    costs the hostile client its 413, nothing else, and is not logged as a failure.
    """
    body = json.dumps({"detail": _TOO_LARGE}).encode()
    try:
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
    except (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("a client sending a body over the limit went away before its 413")


def build_app(services: ControlServices):
    """The ASGI app (FastAPI behind a body limit) over ``services``."""
    app = FastAPI(title="musicfs control API", version="1",
                  description="Drive and watch a running musicfs mount. Served on the mount's Unix socket.")

    async def blocking(func, *args):
        return await trio.to_thread.run_sync(partial(func, *args), limiter=services.limiter)

    def known_origin(origin_id: str) -> None:
        if origin_id not in services.status.health.health:
            raise HTTPException(404, f"no origin {origin_id!r} (known: "
                                     f"{', '.join(sorted(services.status.health.health)) or 'none'})")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.error("control API: %s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/v1/status", summary="Version, uptime, state, handles, FUSE ops, index counts, components")
    async def status() -> dict[str, Any]:
        return await blocking(services.status.status)

    @app.post("/v1/shutdown", status_code=202, summary="Unmount: requests in flight finish first unless forced")
    async def shutdown(body: ShutdownBody | None = None) -> dict[str, Any]:
        body = body or ShutdownBody()
        request = services.lifecycle.request_shutdown(force=body.force,
                                                      drain_timeout=body.drain_timeout_ms / 1000, reason="api")
        return {"state": services.lifecycle.state, "force": request.force,
                "drain_timeout_ms": round(request.drain_timeout * 1000)}

    @app.get("/v1/cache", summary="Hits, misses, hit rate, chunks, dedup, bytes and limit, evictions, per tier")
    async def cache() -> dict[str, Any]:
        stats = await blocking(services.cache.statistics)
        return {**stats, "tiers": {"chunks": stats}}

    @app.post("/v1/cache/clear", summary="Clear one origin's cached files, or all; never those being read")
    async def clear(body: ClearBody | None = None) -> dict[str, Any]:
        body = body or ClearBody()
        if body.tier is not None and body.tier not in TIERS:
            raise HTTPException(400, f"no cache tier {body.tier!r} (tiers: {', '.join(TIERS)})")
        if body.origin is not None:
            known_origin(body.origin)
        result = await blocking(partial(services.cache.clear_selected, body.origin, dry_run=body.dry_run))
        return {**result, "tier": body.tier or "chunks", "entries": result["manifests"] + result["chunks"],
                "bytes_freed": 0 if body.dry_run else result["bytes"]}

    @app.get("/v1/origins", summary="Every origin: kind, location, health, files, bytes, last sync")
    async def origins() -> list[dict[str, Any]]:
        return await blocking(services.status.origins)

    @app.get("/v1/origins/{origin_id}", summary="One origin")
    async def origin(origin_id: str) -> dict[str, Any]:
        known_origin(origin_id)
        return next(o for o in await blocking(services.status.origins) if o["id"] == origin_id)

    @app.post("/v1/origins/{origin_id}/rescan", summary="Rescan an origin; progress streams as NDJSON",
              response_class=StreamingResponse)
    async def rescan(origin_id: str) -> StreamingResponse:
        known_origin(origin_id)
        if services.sync is None:
            raise HTTPException(503, "this mount cannot rescan")
        return StreamingResponse(_ndjson(services.sync.rescan(origin_id)), media_type=NDJSON)

    @app.get("/v1/events", summary="A live NDJSON feed of events, filtered by type and origin",
             description="One JSON document per line, each with `type` and `at` (unix time). Without "
                         "`type`, the design's events: " + ", ".join(FEED_DEFAULT) + ". A reader that "
                         "falls behind loses events; a line `{\"type\": \"dropped\", \"count\": n}` "
                         "says how many, where they were lost. The feed ends when the mount stops.",
             response_class=StreamingResponse)
    async def events(type: list[str] = Query(default=[], max_length=50),  # noqa: A002 - the query name
                     origin: str | None = Query(default=None, max_length=200)) -> StreamingResponse:
        kinds = _event_kinds(type)
        if origin is not None:
            known_origin(origin)

        def wanted(event: Event) -> bool:
            return event.kind in kinds and (origin is None or getattr(event, "origin_id", None) == origin)

        # subscribed now, before the answer starts: an event right after the client sees it is kept
        feed = services.bus.subscribe(wants=wanted)
        return _ClosingStream(_ndjson(_event_feed(feed)), on_close=feed.close, media_type=NDJSON)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        if services.metrics is None:
            raise HTTPException(503, "metrics are not collected by this mount")
        body, content_type = await blocking(services.metrics.render)
        return Response(body, media_type=content_type)

    return _limit_body(app)


async def _ndjson(documents: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for document in documents:
        yield (json.dumps(document, default=str) + "\n").encode()


def _event_kinds(names: list[str]) -> set[str]:
    """The event kinds named (several per parameter, comma-separated, any case), or the default set.

    An unknown name is a 400 that lists the known ones: a typo must not be a feed that stays silent.
    """
    known = event_types()
    by_folded = {_fold(name): name for name in known}
    asked = [part.strip() for name in names for part in name.split(",") if part.strip()]
    unknown = [name for name in asked if _fold(name) not in by_folded]
    if unknown:
        raise HTTPException(400, f"unknown event type{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(repr(n[:60]) for n in unknown[:5])} (known: {', '.join(known)})")
    return {by_folded[_fold(name)] for name in asked} or set(FEED_DEFAULT)


def _fold(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


class _ClosingStream(StreamingResponse):
    """A streamed answer whose source is closed however the stream ends: finished, client gone
    (hypercorn reports the disconnect and the stream is cancelled), or the daemon stopping.

    Without this, a feed would be closed only when its generator is collected, and its
    subscription would linger on the bus until then.
    """

    def __init__(self, content: AsyncGenerator[bytes, None], *, on_close: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._source = content
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            with trio.CancelScope(shield=True):
                await self._source.aclose()


async def _event_feed(feed: Subscription) -> AsyncIterator[dict[str, Any]]:
    """The subscription's events as documents; where it lost some, a ``dropped`` line says how many."""
    async for item in feed:
        if isinstance(item, Dropped):
            yield {"type": "dropped", "count": item.count}
        else:
            document = item.to_dict()
            document.pop("kind", None)
            yield {"type": item.kind, **document}
