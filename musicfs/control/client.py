"""The client the CLI (and tests) use to talk to a running mount, over its Unix socket.

``ControlClient.for_mount`` finds the daemon of a mountpoint (or the only
one running) from the pid files and connects to the socket its pid file
names. Every failure is a :class:`ControlError` with a one-line message a
CLI can print as it is: no daemon, a daemon that does not answer, a refused
request (with the API's own ``detail``).

HTTP is :mod:`musicfs.control.transport` (the standard library's): the
commands built on this client start in a fraction of the time an HTTP
library's import alone would take (CLI-1).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .locate import ControlError, find_mount, mounts_of_index
from .transport import TIMEOUT, Reply, TransportError, UnixHTTP

__all__ = ["ControlClient", "ControlError", "Refused", "find_mount", "mounts_of_index"]


class Refused(ControlError):
    """The daemon answered with an error status; ``detail`` is its own words (a CLI that shows
    the same refusal whether it asked a daemon or read the index itself prints just those)."""

    def __init__(self, message: str, status: int, detail: str | None):
        super().__init__(message)
        self.status = status
        self.detail = detail


class ControlClient:
    def __init__(self, socket: Path, *, timeout: float = TIMEOUT):
        self.socket = Path(socket)
        self._http = UnixHTTP(self.socket, timeout=timeout)

    @classmethod
    def for_mount(cls, state_dir: Path, mountpoint: Path | None = None) -> ControlClient:
        info = find_mount(state_dir, mountpoint)
        return cls(Path(info["socket"]))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **params: Any) -> Any:
        return self._json(self._request("GET", path, params=params))

    def post(self, path: str, body: dict | None = None) -> Any:
        return self._json(self._request("POST", path, json_body=body))

    def delete(self, path: str) -> Any:
        return self._json(self._request("DELETE", path))

    def text(self, path: str) -> str:
        return self._request("GET", path).text

    # -- search (GET /v1/search, /v1/search/stream, /v1/collections) ------------------
    def search(self, query: str, *, limit: int | None = None, offset: int | None = None,
               fields: Sequence[str] = (), origin: str | None = None) -> dict:
        """One page: ``results`` (virtual_path, tags, score, highlights), ``total``, ``query_time_ms``."""
        return self.get("/v1/search", **_search_params(query, fields, origin, limit=limit, offset=offset))

    def search_stream(self, query: str, *, fields: Sequence[str] = (), origin: str | None = None
                      ) -> Iterator[dict]:
        """Every hit as it arrives, then the summary (``{"done": ...}``) as the last document."""
        return self.stream("GET", "/v1/search/stream", params=_search_params(query, fields, origin))

    def collections(self) -> list[dict]:
        return self.get("/v1/collections")

    def add_collection(self, name: str, query: str) -> dict:
        return self.post("/v1/collections", {"name": name, "query": query})

    def remove_collection(self, name: str) -> dict:
        return self.delete(f"/v1/collections/{quote(name, safe='')}")

    def stream(self, method: str, path: str, *, body: dict | None = None,
               params: dict | None = None) -> Iterator[dict]:
        """The NDJSON documents of a streamed answer, as they arrive (each line waited for as long as it takes)."""
        try:
            with self._http.stream(method, path, params=params, json_body=body) as answer:
                if answer.status >= 400:
                    raise self._refused(answer.read())
                for line in answer.lines():
                    if line.strip():
                        yield json.loads(line)
        except TransportError as exc:
            raise ControlError(self._unreachable(exc)) from None

    def _request(self, method: str, path: str, **kwargs: Any) -> Reply:
        try:
            reply = self._http.request(method, path, **kwargs)
        except TransportError as exc:
            raise ControlError(self._unreachable(exc)) from None
        if reply.status >= 400:
            raise self._refused(reply)
        return reply

    @staticmethod
    def _json(reply: Reply) -> Any:
        try:
            return reply.json()
        except ValueError:
            raise ControlError(f"the daemon answered {_shown(reply.path)} with something that "
                               f"is not JSON") from None

    def _unreachable(self, exc: TransportError) -> str:
        return f"the musicfs daemon on {self.socket} does not answer ({exc})"

    @staticmethod
    def _refused(reply: Reply) -> Refused:
        try:
            detail = reply.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, list):  # a validation error: the fields and what is wrong with them
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" for d in detail)
        detail = str(detail) if detail else None
        return Refused(f"{reply.method} {_shown(reply.path)}: HTTP {reply.status}"
                       + (f": {detail}" if detail else ""), reply.status, detail)


def _shown(path: str) -> str:
    """A request's path as messages name it: without its query, decoded (``a%2Fb`` is ``a/b``)."""
    return unquote(urlsplit(path).path)


def _search_params(query: str, fields: Sequence[str], origin: str | None, **numbers: int | None) -> dict:
    params: dict[str, Any] = {"q": query, **{k: v for k, v in numbers.items() if v is not None}}
    if fields:
        params["fields"] = list(fields)
    if origin is not None:
        params["origin"] = origin
    return params
