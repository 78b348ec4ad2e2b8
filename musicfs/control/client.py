"""The client the CLI (and tests) use to talk to a running mount: httpx over its Unix socket.

``ControlClient.for_mount`` finds the daemon of a mountpoint (or the only
one running) from the pid files and connects to the socket its pid file
names. Every failure is a :class:`ControlError` with a one-line message a
CLI can print as it is: no daemon, a daemon that does not answer, a refused
request (with the API's own ``detail``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .locate import ControlError, find_mount, mounts_of_index
from .sockets import reachable

__all__ = ["ControlClient", "ControlError", "Refused", "find_mount", "mounts_of_index"]

TIMEOUT = 10.0  # seconds for an answer (streams wait for their next line forever)
CONNECT_RETRIES = 3


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
        self._stack = contextlib.ExitStack()
        where = self._stack.enter_context(reachable(self.socket))
        # a connect that fails is tried again (after 0, 0.5 and 1 s): while a burst of connections
        # fills the socket's backlog, a Unix socket refuses at once (EAGAIN) instead of waiting
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=where, retries=CONNECT_RETRIES),
                                  base_url="http://musicfs", timeout=timeout)

    @classmethod
    def for_mount(cls, state_dir: Path, mountpoint: Path | None = None) -> ControlClient:
        info = find_mount(state_dir, mountpoint)
        return cls(Path(info["socket"]))

    def close(self) -> None:
        self._http.close()
        self._stack.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **params: Any) -> Any:
        return self._json(self._request("GET", path, params=params))

    def post(self, path: str, body: dict | None = None) -> Any:
        return self._json(self._request("POST", path, json=body))

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
        """The NDJSON documents of a streamed answer, as they arrive."""
        try:
            with self._http.stream(method, path, json=body, params=params,
                                   timeout=httpx.Timeout(TIMEOUT, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._refused(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise ControlError(self._unreachable(exc)) from None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ControlError(self._unreachable(exc)) from None
        if response.status_code >= 400:
            raise self._refused(response)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ControlError(f"the daemon answered {response.request.url.path} with something that "
                               f"is not JSON") from None

    def _unreachable(self, exc: httpx.TransportError) -> str:
        return f"the musicfs daemon on {self.socket} does not answer ({type(exc).__name__})"

    @staticmethod
    def _refused(response: httpx.Response) -> Refused:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, list):  # a validation error: the fields and what is wrong with them
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" for d in detail)
        detail = str(detail) if detail else None
        return Refused(f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}"
                       + (f": {detail}" if detail else ""), response.status_code, detail)


def _search_params(query: str, fields: Sequence[str], origin: str | None, **numbers: int | None) -> dict:
    params: dict[str, Any] = {"q": query, **{k: v for k, v in numbers.items() if v is not None}}
    if fields:
        params["fields"] = list(fields)
    if origin is not None:
        params["origin"] = origin
    return params
