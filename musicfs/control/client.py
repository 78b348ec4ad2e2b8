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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from .locate import ControlError, find_mount, mounts_of_index
from .sockets import reachable

__all__ = ["ControlClient", "ControlError", "find_mount", "mounts_of_index"]

TIMEOUT = 10.0  # seconds for an answer (streams wait for their next line forever)
CONNECT_RETRIES = 3


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

    def text(self, path: str) -> str:
        return self._request("GET", path).text

    def stream(self, method: str, path: str, *, body: dict | None = None,
               params: dict | None = None) -> Iterator[dict]:
        """The NDJSON documents of a streamed answer, as they arrive."""
        try:
            with self._http.stream(method, path, json=body, params=params,
                                   timeout=httpx.Timeout(TIMEOUT, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ControlError(self._problem(response))
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
            raise ControlError(self._problem(response))
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
    def _problem(response: httpx.Response) -> str:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, list):  # a validation error: the fields and what is wrong with them
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" for d in detail)
        return f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}" + (
            f": {detail}" if detail else "")
