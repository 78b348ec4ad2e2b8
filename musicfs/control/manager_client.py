"""Talking to the manager (:mod:`musicfs.manager`) from a command.

``ManagerClient.running`` answers "is there a manager for this state directory?"
with one connect: no socket file, or one nobody listens on, is "no", at once,
and ``musicfs mount`` then mounts by itself as it always did.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .locate import ControlError
from .sockets import socket_path
from .transport import Reply, TransportError, UnixHTTP


def manager_socket(state_dir: Path) -> Path:
    """The socket of ``state_dir``'s manager, beside the mounts' (one manager per state directory:
    the run directory may be ``$XDG_RUNTIME_DIR``'s, shared by all of them)."""
    key = hashlib.sha1(str(Path(state_dir).expanduser().absolute()).encode()).hexdigest()[:12]
    return socket_path(state_dir, f"manager-{key}")


class ManagerClient:
    def __init__(self, socket: Path, *, timeout: float = 10.0):
        self.socket = socket
        self._http = UnixHTTP(socket, timeout=timeout)

    @classmethod
    def running(cls, state_dir: Path) -> ManagerClient | None:
        """The manager of ``state_dir`` if one answers now, else None (asked once, no retries)."""
        socket = manager_socket(state_dir)
        if not socket.exists():
            return None
        probe = UnixHTTP(socket, timeout=5.0, connect_pauses=(0.0,))
        try:
            reply = probe.request("GET", "/v1/manager")
        except TransportError:
            return None
        finally:
            probe.close()
        return cls(socket) if reply.status == 200 else None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict:
        """``statistics`` (pid, uptime, preloaded modules, counts) and ``mounts``."""
        return self._call("GET", "/v1/manager")

    def mounts(self) -> list[dict]:
        return self._call("GET", "/v1/mounts")

    def mount(self, request: dict[str, Any]) -> dict:
        """Start a mount (a :class:`musicfs.manager.MountRequest` as JSON); its pid and log."""
        return self._call("POST", "/v1/mounts", request)

    def shutdown(self) -> dict:
        return self._call("POST", "/v1/shutdown", {})

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            reply = self._http.request(method, path, json_body=body)
        except TransportError as exc:
            raise ControlError(f"the musicfs manager on {self.socket} does not answer ({exc})") from None
        if reply.status >= 400:
            raise ControlError(f"the manager refused: {_detail(reply)}")
        return reply.json()


def _detail(reply: Reply) -> str:
    try:
        return str(reply.json().get("detail") or f"HTTP {reply.status}")
    except (ValueError, AttributeError):
        return f"HTTP {reply.status}"
