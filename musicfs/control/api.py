"""The control API: HTTP/JSON routes over the mount's services (FastAPI; OpenAPI at /openapi.json).

Routes translate and delegate, as ``Operations`` does for FUSE: every answer
comes from a service's method, blocking ones (SQLite, disk) in a worker
thread so the filesystem never waits on the API. Long operations (a rescan)
and the event feed stream NDJSON: one JSON document per line.

Errors are JSON with a ``detail`` saying what was wrong: 404 for an unknown
route or id, 400 for a value the service refuses, 422 for a request that
does not fit its schema, 413 for a body over ``MAX_BODY``. A failure inside a
route is a 500 for that request, logged with its traceback; the daemon
serves on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import trio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..events import Event
from .services import ControlServices

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes: every request this API takes is a few small fields
NDJSON = "application/x-ndjson"
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
    """ASGI middleware: refuse bodies over MAX_BODY (declared or streamed) with 413."""
    async def limited(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return await _too_large(send)
        seen = 0

        async def counting():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY:
                    raise _TooLarge()
            return message

        try:
            await app(scope, counting, send)
        except _TooLarge:
            await _too_large(send)
    return limited


class _TooLarge(Exception):
    pass


async def _too_large(send) -> None:
    body = json.dumps({"detail": f"request body over {MAX_BODY} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
             response_class=StreamingResponse)
    async def events(type: list[str] = Query(default=[], max_length=50),  # noqa: A002 - the query name
                     origin: str | None = Query(default=None, max_length=200)) -> StreamingResponse:
        kinds = set(type)
        return StreamingResponse(_ndjson(_event_feed(services, kinds, origin)), media_type=NDJSON)

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


async def _event_feed(services: ControlServices, kinds: set[str], origin: str | None
                      ) -> AsyncIterator[dict[str, Any]]:
    """Events as they are published, those of ``kinds`` (all if empty) and ``origin`` (all if None)."""
    def wanted(event: Event) -> bool:
        return ((not kinds or event.kind in kinds)
                and (origin is None or getattr(event, "origin_id", None) == origin))

    with services.bus.subscribe() as feed:
        async for event in feed:
            if wanted(event):
                yield {"type": event.kind, **event.to_dict()}

