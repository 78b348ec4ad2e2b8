"""The manager: one long-running process per user that starts mounts in children of its own.

Most of a mount's start-up from the command line is Python starting and importing
trio, pyfuse3 and the rest of the mount (a third of a second here); no tuning of
the mount itself can win that back. The manager imports all of it once and then
starts each mount by forking: the child already has every module, runs
``musicfs mount --foreground`` as a user's shell would (the same locks, the same
pid file, control socket and log), and is a process of its own, as pyfuse3 needs
(one FUSE session per process).

Why forking is safe here: the manager never starts a thread, an event loop, a
database connection or an origin. It answers requests one at a time with the
standard library's single-threaded :mod:`socketserver`, so at every fork there is
exactly one thread and no lock held. Requests are short (a fork, a list): the
command that asked for a mount waits for the mount itself, by its pid file, so a
mount that first scans a large library holds up nobody.

Children that end are reaped within ``TICK`` seconds. One that ended by itself
with a failure (a signal, a non-zero exit) is reported in the manager's log and
status, its mountpoint, left stale by a killed FUSE daemon, is unmounted, and it
is started again if its library asked for that (``[library] restart = true``),
at most ``RESTARTS`` times in ``RESTART_WINDOW`` seconds. A clean exit (an
unmount) ends it quietly. Nothing a child does can take the manager down.
"""

from __future__ import annotations

import errno
import gc
import http.server
import importlib
import json
import logging
import os
import signal
import socketserver
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import daemon
from .control.sockets import bind_private, peer_uid

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between looks at the children while no request comes
RESTARTS = 5  # restarts of one mount allowed within RESTART_WINDOW, then it is left failed
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 15.0  # seconds a child is given to unmount when the manager stops
MAX_BODY = 1 << 20
REQUEST_TIMEOUT = 2.0
# what a foreground mount imports before it serves (FastAPI waits for the first API client in
# the mount as well), and the built-in origin kinds with their clients
PRELOAD = ("musicfs.cli.main", "musicfs.mount", "musicfs.origins.local", "musicfs.origins.s3",
           "musicfs.origins.sftp")
# variables a service manager gives the manager itself: a mount must not answer for it
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                  "LISTEN_FDNAMES")

ChildMain = Callable[[list[str]], int]


class Refusal(Exception):
    """A request the manager will not carry out: an HTTP status and the reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class MountRequest:
    """What ``musicfs mount`` sends: the foreground mount's arguments and the world it runs in."""

    argv: list[str]  # musicfs's arguments: ``[--state-dir S] mount --foreground ...``
    mountpoint: str
    log: str  # the mount's log file (its stdout and stderr)
    cwd: str
    env: dict[str, str]
    name: str = ""  # the library's name, for status
    restart: bool = False  # start it again when it dies

    @classmethod
    def from_json(cls, data: Any) -> MountRequest:
        if not isinstance(data, dict):
            raise Refusal(400, "the body must be a JSON object")
        try:
            request = cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise Refusal(400, f"bad mount request: {exc}") from None
        texts = [request.mountpoint, request.log, request.cwd, request.name]
        well_formed = (all(isinstance(t, str) for t in texts) and isinstance(request.restart, bool)
                       and isinstance(request.argv, list) and all(isinstance(a, str) for a in request.argv)
                       and isinstance(request.env, dict)
                       and all(isinstance(x, str) for item in request.env.items() for x in item))
        if not well_formed:
            raise Refusal(400, "bad mount request: argv a list of strings, env an object of strings, "
                               "mountpoint, log, cwd and name strings, restart a boolean")
        if "mount" not in request.argv or "--foreground" not in request.argv:
            raise Refusal(400, "bad mount request: argv must be a foreground mount (mount --foreground ...)")
        if not all(os.path.isabs(p) for p in (request.mountpoint, request.log, request.cwd)):
            raise Refusal(400, "bad mount request: mountpoint, log and cwd must be absolute paths")
        return request


@dataclass
class Child:
    """One mount the manager started, alive or not."""

    request: MountRequest
    pid: int
    started_at: float
    # running; stopped (ended cleanly); died (ended by a failure after it had mounted); failed (ended
    # before it mounted, or died too often to be started again)
    state: str = "running"
    exit: str | None = None  # how it ended: "exit 2", "SIGKILL"
    restarts: list[float] = field(default_factory=list)  # when it was started again

    def describe(self) -> dict[str, Any]:
        return {"name": self.request.name, "mountpoint": self.request.mountpoint, "pid": self.pid,
                "state": self.state, "exit": self.exit, "started_at": self.started_at,
                "restart": self.request.restart, "restarts": len(self.restarts), "log": self.request.log}


@dataclass(frozen=True)
class ManagerStatistics:
    pid: int
    started_at: float
    uptime_seconds: float
    socket: str
    preloaded: list[str]
    preload_failed: dict[str, str]
    running: int
    started: int  # children forked since the manager began, restarts included
    died: int  # children that ended by themselves with a failure
    restarted: int


def preload(modules: Sequence[str]) -> dict[str, str]:
    """Import ``modules`` now, so that no mount child imports them again; what failed, and why.

    A module that cannot be imported (an origin kind whose client library is missing) costs only
    the mounts that use it, which then report the error themselves, as without a manager.
    The installed plugins are listed now too (reading every package's entry points takes ~30 ms
    a process): a plugin installed later is seen by mounts once the manager is started again.
    """
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failed[name] = str(exc)
            log.warning("not preloaded: %s (%s); a mount that needs it imports it itself", name, exc)
    from .index.formats import providers as format_kinds
    from .index.metadata import providers as metadata_kinds
    from .origins.base import providers as origin_kinds

    origin_kinds()
    metadata_kinds()
    format_kinds()
    # what was imported lives as long as the manager: out of the collector's sight, a child's first
    # full collection (a mount makes one once it is up) does not walk it, and does not write to
    # (and so copy) the pages the child shares with the manager
    gc.collect()
    gc.freeze()
    return failed


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.waitstatus_to_exitcode(status)}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ManagerServer
    protocol_version = "HTTP/1.0"  # one request per connection: the loop serves one at a time
    # a client that connects and then sends too little holds the loop only this long (seconds)
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(lambda: self.server.route("GET", self.path, None))

    def do_POST(self) -> None:  # noqa: N802
        def post() -> tuple[int, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise Refusal(400, "a negative Content-Length")
            if length > MAX_BODY:
                raise Refusal(413, f"a request body may hold at most {MAX_BODY} bytes")
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                raise Refusal(400, "the body is not JSON") from None
            return self.server.route("POST", self.path, body)
        self._answer(post)

    def _answer(self, call: Callable[[], tuple[int, Any]]) -> None:
        try:
            status, body = call()
        except Refusal as exc:
            status, body = exc.status, {"detail": str(exc)}
        except ValueError as exc:  # a Content-Length that is not a number
            status, body = 400, {"detail": str(exc)}
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError as exc:  # the client went away: its loss only
            log.info("a client left before its answer: %s", exc)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("request: " + format, *args)


class ManagerServer(socketserver.UnixStreamServer):
    """The manager's socket, its children, and the loop that serves both."""

    def __init__(self, socket_path: Path, state_dir: Path, child_main: ChildMain, *,
                 preloaded: Sequence[str] = (), preload_failed: dict[str, str] | None = None):
        super().__init__(str(socket_path), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = bind_private(socket_path)
        self.socket.setblocking(True)
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.child_main = child_main
        self.timeout = TICK
        self.children: dict[str, Child] = {}  # by mountpoint; the newest child of each
        self.started_at = time.time()
        self.preloaded = list(preloaded)
        self.preload_failed = dict(preload_failed or {})
        self.stopping = False
        self._forked = self._died = self._restarted = 0
        self._closing: list[int] = []  # fds a child must close (the lock of the manager)
        self._serving: Any = None  # the connection being answered, which a child must close

    def process_request(self, request: Any, client_address: Any) -> None:
        self._serving = request
        try:
            super().process_request(request, client_address)
        finally:
            self._serving = None

    # -- the loop -------------------------------------------------------------------
    def run(self, *, close_in_children: Sequence[int] = ()) -> None:
        """Serve until asked to stop (SIGTERM, SIGINT, POST /v1/shutdown); then stop every child."""
        self._closing = list(close_in_children)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stopping:
                self.handle_request()
                self.reap()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop_children()
            self.server_close()
            self.socket_path.unlink(missing_ok=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("asked to stop by %s", signal.Signals(signum).name)
        self.stopping = True

    def verify_request(self, request: Any, client_address: Any) -> bool:
        uid = peer_uid(request)
        if uid is not None and uid not in (os.getuid(), 0):
            log.warning("refused a connection from uid %d", uid)
            return False
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed in a way no refusal covers: logged whole, the manager goes on."""
        log.error("a request failed:\n%s", traceback.format_exc())

    # -- requests ---------------------------------------------------------------------
    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        path = path.split("?", 1)[0]
        if (method, path) == ("GET", "/v1/manager"):
            return 200, {"statistics": asdict(self.statistics()),
                         "mounts": [c.describe() for c in self.children.values()]}
        if (method, path) == ("GET", "/v1/mounts"):
            return 200, [c.describe() for c in self.children.values()]
        if (method, path) == ("POST", "/v1/mounts"):
            return 201, self.start(MountRequest.from_json(body)).describe()
        if (method, path) == ("POST", "/v1/shutdown"):
            self.stopping = True
            return 202, {"stopping": True, "mounts": sum(c.state == "running" for c in self.children.values())}
        raise Refusal(404, f"no {method} {path} here")

    def start(self, request: MountRequest) -> Child:
        """Fork a child that runs the mount ``request`` asks for; refuse a mountpoint already served."""
        previous = self.children.get(request.mountpoint)
        if previous is not None and previous.state == "running":
            raise Refusal(409, f"{request.mountpoint} is being served by musicfs pid {previous.pid}")
        child = Child(request, self._fork(request), time.time())
        self.children[request.mountpoint] = child
        log.info("started mount %s (%s), pid %d", request.mountpoint, request.name or "no library file", child.pid)
        return child

    def _fork(self, request: MountRequest) -> int:
        try:
            os.makedirs(os.path.dirname(request.log), mode=0o700, exist_ok=True)
            out = os.open(request.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise Refusal(500, f"cannot open the mount's log {request.log}: {exc}") from None
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(out)
            raise Refusal(503, f"cannot start a process for the mount: {exc}") from None
        if pid != 0:
            os.close(out)
            self._forked += 1
            return pid
        code = 1  # the child: from here on, never back into the manager's code
        try:
            self._become_mount(request, out)
            code = self.child_main(list(request.argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # anything at all: said in the mount's log, and this process ends
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        raise AssertionError("unreachable")

    def _become_mount(self, request: MountRequest, out: int) -> None:
        """In the child: a session of its own, the mount's log as its output, the user's environment."""
        os.setsid()
        self.socket.close()
        if self._serving is not None:
            self._serving.close()
        for fd in self._closing:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        os.environ.clear()
        os.environ.update({k: v for k, v in request.env.items() if k not in _NOT_INHERITED})
        os.chdir(request.cwd)
        logging.getLogger().handlers.clear()  # the mount sets up its own logging, to its log

    # -- children ---------------------------------------------------------------------
    def reap(self) -> None:
        """Collect every child that ended; report and restart the ones that died."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children.values() if c.pid == pid and c.state == "running"), None)
            if child is not None:
                self._ended(child, status)

    def _ended(self, child: Child, status: int) -> None:
        child.exit = _ended(status)
        mountpoint = Path(child.request.mountpoint)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            child.state = "stopped"
            log.info("mount %s (pid %d) ended", mountpoint, child.pid)
            return
        files = daemon.RunFiles.for_mountpoint(self.state_dir, mountpoint)
        info = daemon.read_pidfile(files)
        served = bool(info) and info.get("pid") == child.pid  # it had mounted: its pid file names it
        cleaned = daemon.recover_stale(mountpoint)
        if not served:  # refused before it mounted (a lock held, a bad config): the command said why
            child.state = "failed"
            log.warning("mount %s (pid %d) did not start: %s; its log: %s", mountpoint, child.pid, child.exit,
                        child.request.log)
            return
        self._died += 1
        child.state = "died"
        files.pid.unlink(missing_ok=True)
        log.warning("mount %s (pid %d) died: %s%s; its log: %s", mountpoint, child.pid, child.exit,
                    " (its stale mountpoint was unmounted)" if cleaned else "", child.request.log)
        if not child.request.restart or self.stopping:
            return
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW]
        if len(child.restarts) >= RESTARTS:
            child.state = "failed"
            log.error("mount %s died %d times within %.0f s: not started again", mountpoint,
                      len(child.restarts) + 1, RESTART_WINDOW)
            return
        try:
            child.pid = self._fork(child.request)
        except Refusal as exc:
            child.state = "failed"
            log.error("mount %s could not be started again: %s", mountpoint, exc)
            return
        child.restarts.append(now)
        child.state, child.exit, child.started_at = "running", None, time.time()
        self._restarted += 1
        log.warning("mount %s started again, pid %d (restart %d)", mountpoint, child.pid, len(child.restarts))

    def stop_children(self) -> None:
        """Ask every running child to unmount (SIGTERM), and wait for each."""
        running = [c for c in self.children.values() if c.state == "running"]
        for child in running:
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in running:
            while time.monotonic() < deadline:
                try:
                    pid, status = os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    child.state, child.exit = "stopped", _ended(status)
                    break
                time.sleep(0.02)
            else:
                log.error("mount %s (pid %d) did not stop within %.0f s; its FUSE connection is aborted",
                          child.request.mountpoint, child.pid, STOP_TIMEOUT)
                daemon.abort_connection(Path(child.request.mountpoint))
                _kill(child.pid)
            if daemon.recover_stale(Path(child.request.mountpoint)):
                log.warning("unmounted the stale mountpoint %s", child.request.mountpoint)

    def statistics(self) -> ManagerStatistics:
        return ManagerStatistics(
            pid=os.getpid(), started_at=self.started_at, uptime_seconds=round(time.time() - self.started_at, 3),
            socket=str(self.socket_path), preloaded=self.preloaded, preload_failed=self.preload_failed,
            running=sum(c.state == "running" for c in self.children.values()), started=self._forked,
            died=self._died, restarted=self._restarted)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def serve(state_dir: Path, socket_path: Path, child_main: ChildMain, *,
          on_ready: Callable[[], None] = lambda: None) -> None:
    """Be the manager for ``state_dir`` until asked to stop: one per state directory (a lock)."""
    lock = daemon.Lock(state_dir / "run" / "manager.lock", f"the manager of {state_dir}")
    lock.acquire()
    try:
        started = time.perf_counter()
        failed = preload(PRELOAD)
        log.info("preloaded %d modules in %.0f ms", len(PRELOAD) - len(failed),
                 (time.perf_counter() - started) * 1000)
        server = ManagerServer(socket_path, state_dir, child_main,
                               preloaded=[m for m in PRELOAD if m not in failed], preload_failed=failed)
        on_ready()
        server.run(close_in_children=[fd for fd in (lock.fileno(),) if fd is not None])
    finally:
        lock.release()


__all__ = ["ChildMain", "ManagerServer", "MountRequest", "Refusal", "serve"]
