"""The control API: HTTP/JSON routes over the mount's services (FastAPI; OpenAPI at /openapi.json).

Routes translate and delegate, as ``Operations`` does for FUSE: every answer
comes from a service's method, blocking ones (SQLite, disk) in a worker
thread so the filesystem never waits on the API. Long operations (a rescan),
the event feed and a search's every hit stream NDJSON: one JSON document per line.

Errors are JSON with a ``detail`` saying what was wrong: 404 for an unknown
route or id, 400 for a value the service refuses (an unknown event type: with
the known ones), 422 for a request that does not fit its schema, 413 for a
body over ``MAX_BODY``, 408 for one that does not arrive within
``BODY_TIMEOUT``. A search query the language refuses is a 400 whose
``detail`` is the parser's message (which names the problem), never SQLite's
words and never a 500: a user's typing is not a daemon fault. A failure inside a route is a 500 for that request, logged
with its traceback; the daemon serves on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import trio
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import NoRoom, NotADirectory, NotFound, QueryError, QueryTimeout, Uncacheable
from ..events import FEED_DEFAULT, Dropped, Event, Subscription, event_types
from ..search.engine import DEFAULT_LIMIT, MAX_LIMIT
from ..search.query import MAX_QUERY_CHARS, check_fields
from ..vfs.prefetch import MAX_FILES as MAX_PREFETCH  # files one prefetch request may name
from .services import CatalogService, ControlServices

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes: every request this API takes is a few small fields
BODY_TIMEOUT = 10.0  # seconds a request's body may take to arrive (a half-sent request is answered 408)
NDJSON = "application/x-ndjson"
_TOO_LARGE = f"request body over {MAX_BODY} bytes"

T = TypeVar("T")

TIERS = ("chunks", "headers")  # the cache tiers that exist (the metadata tier comes with its feature)


class ShutdownBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False
    drain_timeout_ms: int = Field(5000, ge=0, le=600_000)


class ClearBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    origin: str | None = Field(None, max_length=200)
    tier: str | None = Field(None, max_length=50)
    dry_run: bool = False


class PrefetchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=1000)
    query: str | None = Field(None, max_length=4 * MAX_QUERY_CHARS)
    strategy: Literal["metadata", "headers", "full"] = "full"


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=1000)
    query: str | None = Field(None, max_length=4 * MAX_QUERY_CHARS)


class CollectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # bounds generous enough that the store's own checks (255 bytes, the parser's length) answer, in words
    name: str = Field(..., max_length=1024)
    query: str = Field(..., max_length=4 * MAX_QUERY_CHARS)


def _offered(service: T | None, what: str) -> T:
    """A service of the mount, or 503 saying what this mount cannot do without it."""
    if service is None:
        raise HTTPException(503, f"this mount cannot {what}")
    return service


def _finite(value: Any) -> Any:
    """``value`` with every float that JSON cannot carry (inf, nan) written as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _limit_body(app):
    """ASGI middleware: the whole request body is read before the route runs. A body over MAX_BODY
    (declared or streamed) is answered 413, one that stalls (a client that sends half a request and
    waits) 408 after BODY_TIMEOUT; the route then gets the body in one message.

    Why first: hypercorn closes a connection whose request body is still arriving when the
    answer ends, without saying so in the answer. A route that never reads its body (a GET
    sent with one, a 404) would answer early, and a client already sending its next request
    on that kept-alive connection would get a reset instead of an answer. With the body in
    before any answer, every exchange is complete and the connection stays usable. Bodies
    here are a few small fields, so holding one costs nothing.
    """
    async def limited(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return await _refuse(send, 413, _TOO_LARGE)
        parts: list[bytes] = []
        seen = 0
        with trio.move_on_after(BODY_TIMEOUT) as waited:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away before its request was in: nobody to answer
                part = message.get("body", b"")
                seen += len(part)
                if seen > MAX_BODY:
                    return await _refuse(send, 413, _TOO_LARGE)
                parts.append(part)
                if not message.get("more_body", False):
                    break
        if waited.cancelled_caught:
            return await _refuse(send, 408, f"the request body did not arrive within {BODY_TIMEOUT:g} s")
        body: bytes | None = b"".join(parts)

        async def replayed():
            nonlocal body
            if body is None:  # the body was given; what follows is the wait for a disconnect (streams)
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await app(scope, replayed, send)
    return limited


async def _refuse(send, status: int, detail: str) -> None:
    """Answer ``status`` with ``detail`` and let the connection go (its unread body makes it unusable).

    The answer races hypercorn closing that connection: a client still sending
    a body nobody reads may find the connection closing under the answer. That
    costs the hostile client its answer, nothing else, and is not logged as a failure.
    """
    payload = json.dumps({"detail": detail}).encode()
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
    except (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("a client whose request was refused (%d) went away before the answer", status)


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

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 with what was wrong. A JSON body may hold numbers a JSON answer cannot (``Infinity``,
        ``NaN``): echoed as they are, they turned a bad request into a 500."""
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

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
        tiers = {"chunks": stats}
        if services.headers is not None:
            tiers["headers"] = await blocking(services.headers.statistics)
        if services.artwork is not None:  # kept while the index shows them: not cleared, not evicted
            tiers["artwork"] = await blocking(services.artwork.statistics)
        return {**stats, "tiers": tiers}

    @app.post("/v1/cache/clear", summary="Clear one origin's cached files, or all; never those being read")
    async def clear(body: ClearBody | None = None) -> dict[str, Any]:
        body = body or ClearBody()
        if body.tier is not None and body.tier not in TIERS:
            raise HTTPException(400, f"no cache tier {body.tier!r} (tiers: {', '.join(TIERS)})")
        if body.origin is not None:
            known_origin(body.origin)
        if body.tier == "headers":
            if services.headers is None:
                raise HTTPException(400, "this mount keeps no headers")
            result = await blocking(partial(services.headers.clear, body.origin, dry_run=body.dry_run))
        else:
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

    async def named_files(paths: list[str], query: str | None) -> list[tuple[int, str]]:
        """(track id, virtual path) of the files ``paths`` name (files, or every file below a
        folder) or ``query`` finds: one of them; 400/404 in words otherwise."""
        _offered(services.prefetch, "fetch files on request")
        if bool(paths) == bool(query):
            raise HTTPException(400, "name the files: paths or a query, one of them")
        if query:
            files: list[tuple[int, str]] = []
            with _refused():
                async with aclosing(_offered(services.search, "search").stream(query)) as batches:
                    async for batch in batches:
                        files += [(hit.track_id, hit.virtual_path) for hit in batch]
                        if len(files) > MAX_PREFETCH:
                            raise HTTPException(400, f"the query matches more than {MAX_PREFETCH} tracks")
            return files
        try:
            return services.prefetch.files_under(paths)
        except (NotFound, NotADirectory) as exc:
            raise HTTPException(404, f"not in the mount: {exc}") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.post("/v1/pins", summary="Pin files, folders or a search's hits: fetched whole, never evicted",
              description="`paths` (virtual paths: files or folders) or `query`. All or nothing: when the "
                          "pinned files would hold more than the room pins may use (`[cache] pins_size`), the "
                          "answer is 507 and nothing is pinned, fetched or dropped. Otherwise each file is "
                          "fetched in full, with progress as NDJSON as for `/v1/prefetch`; the summary says "
                          "how many were newly `pinned` and the `pinned_bytes` of room they took. A fetch "
                          "that fails is retried by the daemon (after a rescan, when its origin is back).")
    async def pin(body: PinBody) -> StreamingResponse:
        pins = _offered(services.pins, "pin")
        files = await named_files(body.paths, body.query)
        try:
            progress = await pins.pin(files)
        except NoRoom as exc:
            raise HTTPException(507, str(exc)) from None
        except Uncacheable as exc:
            raise HTTPException(400, str(exc)) from None
        return StreamingResponse(_ndjson(progress), media_type=NDJSON)

    def catalog() -> CatalogService:
        if services.catalog is None:  # a 404: the resource does not exist on this mount
            raise HTTPException(404, "this mount is not mounted from a published catalog ([catalog] mount)")
        return services.catalog

    @app.get("/v1/catalog", summary="The published catalog this mount serves, and its looks at the latest",
             description="`in_use` (hash, tracks, when published and installed), `polls`, `updates`, "
                         "`rejected`, `unreachable`, and the `last_result`. 404 on a mount that scans.")
    async def catalog_status() -> dict:
        return catalog().statistics()

    @app.post("/v1/catalog/poll", summary="Look at the catalog's pointer now, and take a new catalog",
              description="What the schedule does every `[catalog] poll` seconds, now; answers the "
                          "`result` in words with the state after it.")
    async def catalog_poll() -> dict:
        follower = catalog()
        result = await follower.poll()
        return {"result": result, **follower.statistics()}

    @app.post("/v1/pins/remove", summary="Unpin files, folders or a search's hits",
              description="`paths` or `query`, as for pinning. Their chunks stay cached until evicted like "
                          "any other. Answers how many of the files named were pinned.")
    async def unpin(body: PinBody) -> dict:
        return await _offered(services.pins, "pin").unpin(await named_files(body.paths, body.query))

    @app.get("/v1/pins", summary="Every pin: where the mount shows it, its size, how much is cached",
             description="`state`: `cached` (every byte of the library's version is in the cache), "
                         "`fetching`, `waiting` (fetched when its origin can serve it) or `missing` (the "
                         "library does not hold it now; pinned again if it comes back).")
    async def pin_list() -> dict:
        pins = _offered(services.pins, "pin")
        listing = await pins.listing()
        return {"room": pins.room, "size": sum(p.size for p in listing), "pins": [p.as_dict() for p in listing]}

    @app.post("/v1/prefetch", summary="Fetch files, folders or a search's hits into the cache; progress as NDJSON",
              description="`paths` (virtual paths in the mount: files or folders) or `query` (the search "
                          "language), and `strategy`: `metadata` (nothing fetched: the index holds the tags), "
                          "`headers` (each file's head) or `full`. One document per file as its bytes come "
                          "(`cached`, `fetched`, `total`, `complete`, `error`), then a summary with `done`. "
                          "A client that hangs up does not stop it.")
    async def prefetch(body: PrefetchBody) -> StreamingResponse:
        files = await named_files(body.paths, body.query)
        return StreamingResponse(_ndjson(services.prefetch.request(files, body.strategy)), media_type=NDJSON)

    @app.get("/v1/search", summary="One page of tracks matching a query, best first",
             description="`q` is the query language of `musicfs search` (README, \"Search\"). Each result "
                         "has the file's `virtual_path` in the mount, its tags, `score` (higher is better) "
                         "and `highlights`: [start, end) character spans per field. `total` counts every "
                         "match, `query_time_ms` is the search's own time. `fields` (comma-separated or "
                         "repeated) restricts plain words to those columns; `origin` keeps one origin's "
                         "tracks. A malformed query is a 400 naming the problem.")
    async def search(q: str = Query(..., max_length=_QUERY_PARAM_CHARS),
                     limit: int = Query(DEFAULT_LIMIT, ge=0, le=MAX_LIMIT),
                     offset: int = Query(0, ge=0, le=10**9),
                     fields: list[str] = Query(default=[], max_length=50),
                     origin: str | None = Query(default=None, max_length=200)) -> dict[str, Any]:
        service = _offered(services.search, "search")
        if origin is not None:
            known_origin(origin)
        with _refused():
            page = await service.search(q, limit=limit, offset=offset, fields=_columns(fields), origin=origin)
        return page.as_dict()

    @app.get("/v1/search/stream", summary="Every track matching a query, as NDJSON, best first",
             description="One result per line (as in /v1/search), then a last line "
                         "`{\"done\": true, \"total\": n, \"query_time_ms\": t, ...}`; a search stopped "
                         "on the way ends with `{\"done\": false, \"error\": ...}` instead. The query is "
                         "checked before the answer starts: a malformed one is a 400.",
             response_class=StreamingResponse)
    async def search_stream(q: str = Query(..., max_length=_QUERY_PARAM_CHARS),
                            fields: list[str] = Query(default=[], max_length=50),
                            origin: str | None = Query(default=None, max_length=200)) -> StreamingResponse:
        service = _offered(services.search, "search")
        if origin is not None:
            known_origin(origin)
        with _refused():  # refused now, while the answer can still be a 400
            query = service.parse(q)
            columns = check_fields(_columns(fields))
        stream = _ndjson(_search_lines(service, query, columns, origin))
        return _ClosingStream(stream, on_close=lambda: None, media_type=NDJSON)

    @app.get("/v1/collections", summary="The saved searches shown under /.collections, by name")
    async def collections() -> list[dict[str, Any]]:
        return [c.as_dict() for c in await _offered(services.search, "search").collections()]

    @app.post("/v1/collections", status_code=201, summary="Save a query as a collection (/.collections/NAME)")
    async def add_collection(body: CollectionBody) -> dict[str, Any]:
        with _refused():
            return (await _offered(services.search, "search").add_collection(body.name, body.query)).as_dict()

    @app.delete("/v1/collections/{name}", summary="Remove a saved collection (one from the config stays)")
    async def remove_collection(name: str) -> dict[str, Any]:
        service = _offered(services.search, "search")
        if await service.collection(name) is None:
            raise HTTPException(404, f"no collection named {name!r}")
        with _refused():
            return (await service.remove_collection(name)).as_dict()

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        if services.metrics is None:
            raise HTTPException(503, "metrics are not collected by this mount")
        body, content_type = await blocking(services.metrics.render)
        return Response(body, media_type=content_type)

    return _limit_body(app)


_QUERY_PARAM_CHARS = 16 * MAX_QUERY_CHARS  # longer than the parser takes: its own message says why


class _refused:
    """A query or collection the search refuses becomes a 400 with the refusal as ``detail``;
    a search stopped at its deadline, a 504. Anything else is a fault (500, logged)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if isinstance(exc, QueryError):
            raise HTTPException(400, str(exc)) from None
        if isinstance(exc, QueryTimeout):
            raise HTTPException(504, str(exc)) from None


def _columns(fields: list[str]) -> tuple[str, ...]:
    """``fields=title,artist`` and ``fields=title&fields=artist`` alike."""
    return tuple(part.strip() for value in fields for part in value.split(",") if part.strip())


async def _search_lines(service, query, columns: tuple[str, ...], origin: str | None) -> AsyncIterator[dict]:
    """Every hit, then a summary line; each batch is fetched in a worker thread only when the
    client has taken the last (a slow reader holds no more than one batch in the daemon)."""
    started = time.perf_counter()
    sent = 0
    try:
        async with aclosing(service.stream(query, fields=columns, origin=origin)) as batches:
            async for batch in batches:
                for hit in batch:
                    yield hit.as_dict()
                    sent += 1
    except (QueryError, QueryTimeout) as exc:  # the answer has begun: its last line says why it stopped
        yield {"done": False, "error": str(exc), "total": sent,
               "query_time_ms": round((time.perf_counter() - started) * 1000, 2)}
        return
    yield {"done": True, "query": query.text, "total": sent, "notes": list(query.notes),
           "query_time_ms": round((time.perf_counter() - started) * 1000, 2)}


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
