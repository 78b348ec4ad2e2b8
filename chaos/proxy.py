"""A small server that speaks the Toxiproxy HTTP API, for chaos tests on loopback.

The real ``toxiproxy-server`` is a Go binary that the package registries we
use do not carry; tests drive faults through toxiproxy-python, so this module
implements the part of Toxiproxy that client uses and the toxics in
:mod:`chaos.toxics`, with the same JSON and the same status codes. When a
``toxiproxy-server`` is on PATH, :func:`toxiproxy_server` runs that instead.

Run it on its own::

    python -m chaos.proxy --host 127.0.0.1 --port 8474

It runs as a separate process (see :func:`toxiproxy_server`) so that a FUSE
daemon under test, the test itself and the proxy never share an event loop or
a GIL: a proxy stalled by the process it is testing would measure nothing.

Only loopback addresses may be listened on: the API can open ports at will.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.processes import die_with_parent

from .toxics import Chunk, State, Toxic, ToxicError, make_toxic

VERSION = "2.12.0+musicfs"
READ_SIZE = 32 * 1024
# Chunks read from a socket but not yet through the toxics, per direction of a connection. Each
# is stamped when read, so a latency toxic delays a stream without slowing it down; a queue of
# one would stall the socket reader behind every delayed chunk and cap throughput at
# READ_SIZE per latency. The queue is what a link holds in flight, so its length caps a
# connection at QUEUE_CHUNKS * READ_SIZE per latency: 2048 (64 MiB) lets one connection carry
# 160 MB/s through 400 ms, as a fast link would (256 held a multiplexed SFTP connection to
# 20 MB/s there, the proxy's limit rather than the link's). Bounded, so a stalled peer still
# pushes back.
QUEUE_CHUNKS = 2048
ANNOUNCE = "toxiproxy API on "
ROOT = Path(__file__).resolve().parents[1]


class ApiError(Exception):
    """An error answered as Toxiproxy does: ``{"error": ..., "status": ...}``."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def split_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not port.isdigit():
        raise ApiError(f"bad address {address!r}: want host:port", 400)
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_addresses(listen: str, upstream: str) -> None:
    """Both must be host:port, and we only ever listen on loopback."""
    host, _ = split_address(listen)
    if not is_loopback(host):
        raise ApiError(f"listen address {listen!r} is not loopback: refused", 400)
    split_address(upstream)


class Connection:
    """One client connection and its upstream connection, pumped in both directions."""

    def __init__(self, proxy: Proxy, client: trio.SocketStream, upstream: trio.SocketStream):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.states: dict[int, State] = {}
        self.reset = False
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.pump, "upstream", self.client, self.upstream)
                    nursery.start_soon(self.pump, "downstream", self.upstream, self.client)
        finally:
            for stream in (self.client, self.upstream):
                if self.reset:  # linger 0: close() sends RST and drops unsent data
                    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await trio.aclose_forcefully(stream)

    async def abort(self, reset: bool = False) -> None:
        """End the connection (both sides); raises Cancelled in the caller."""
        self.reset = self.reset or reset
        self.scope.cancel()
        await trio.lowlevel.checkpoint()

    def state(self, toxic: Toxic) -> State:
        if toxic.uid not in self.states:
            self.states[toxic.uid] = toxic.new_state()
        return self.states[toxic.uid]

    def chain(self, stream: str) -> list[Toxic]:
        """The toxics of one stream that apply to this connection, in the order they were added."""
        return [t for t in self.proxy.toxics if t.stream == stream and self.state(t).enabled]

    async def pump(self, stream: str, source: trio.SocketStream, dest: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[Chunk](QUEUE_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.read, source, send)
            nursery.start_soon(self.watch_timeouts, stream)
            async with receive:
                async for chunk in receive:
                    await self.through(self.chain(stream), chunk, dest)
            for toxic in self.chain(stream):  # slow_close: the end reaches the other side late
                await toxic.closing(self.state(toxic))
            # one side is done: close both, as Toxiproxy does (no half-open connections)
            await self.abort()

    async def read(self, source: trio.SocketStream, send: trio.MemorySendChannel[Chunk]) -> None:
        async with send:
            while True:
                try:
                    data = await source.receive_some(READ_SIZE)
                except trio.BrokenResourceError:  # reset by the peer: the same end as EOF
                    return
                if not data:
                    return
                await send.send(Chunk(data, trio.current_time()))

    async def through(self, chain: list[Toxic], chunk: Chunk, dest: trio.SocketStream) -> None:
        async def emit(index: int, piece: Chunk) -> None:
            if index == len(chain):
                try:
                    await dest.send_all(piece.data)
                except trio.BrokenResourceError:
                    await self.abort()
                return
            toxic = chain[index]
            await toxic.pipe(self, self.state(toxic), piece, partial(emit, index + 1))

        await emit(0, chunk)

    async def watch_timeouts(self, stream: str) -> None:
        """Close the connection when a ``timeout`` toxic's time is up, or when one holding it is removed."""
        while True:
            changed = self.proxy.changed
            held = next((t for t in self.chain(stream) if t.type == "timeout"), None)
            if held is None:
                await changed.wait()
                continue
            timeout = held.attributes["timeout"]
            deadline = self.state(held).started + timeout / 1000 if timeout > 0 else float("inf")
            with trio.move_on_at(deadline) as waited:
                await changed.wait()
            if waited.cancelled_caught or held not in self.proxy.toxics:
                await self.abort()


class Proxy:
    """A listener forwarding to one upstream, with its toxics. Disabled = not listening at all."""

    def __init__(self, nursery: trio.Nursery, name: str, listen: str, upstream: str):
        self.nursery = nursery
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: list[Toxic] = []
        self.changed = trio.Event()  # set (and replaced) whenever the toxics change
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream,
                "enabled": self.enabled, "toxics": [t.to_json() for t in self.toxics]}

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def start(self) -> None:
        if self.enabled:
            return
        check_addresses(self.listen, self.upstream)
        host, port = split_address(self.listen)
        self._scope, self._stopped = trio.CancelScope(), trio.Event()
        try:
            listeners = await self.nursery.start(self._serve, self._scope, self._stopped, host, port)
        except OSError as exc:
            raise ApiError(f"listen {self.listen}: {exc.strerror or exc}", 500) from None
        actual = listeners[0].socket.getsockname()
        self.listen = f"[{actual[0]}]:{actual[1]}" if ":" in actual[0] else f"{actual[0]}:{actual[1]}"
        self.enabled = True

    async def stop(self) -> None:
        """Stop listening and drop every connection; returns once the port is closed."""
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
            self._scope = None
        self.enabled = False

    async def _serve(self, scope, stopped, host, port, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await trio.serve_tcp(self._handle, port, host=host, task_status=task_status)
        finally:
            stopped.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        host, port = split_address(self.upstream)
        try:
            upstream = await trio.open_tcp_stream(host, port)
        except OSError:
            return  # upstream down: the client sees its connection closed, as with Toxiproxy
        await Connection(self, client, upstream).run()


class Toxiproxy:
    """The proxies of one server and the HTTP API over them."""

    def __init__(self, nursery: trio.Nursery):
        self.nursery = nursery
        self.proxies: dict[str, Proxy] = {}

    def proxy(self, name: str) -> Proxy:
        if name not in self.proxies:
            raise ApiError("proxy not found", 404)
        return self.proxies[name]

    def toxic(self, proxy: Proxy, name: str) -> Toxic:
        for toxic in proxy.toxics:
            if toxic.name == name:
                return toxic
        raise ApiError("toxic not found", 404)

    async def create(self, body: dict) -> Proxy:
        name, upstream = body.get("name"), body.get("upstream")
        if not name or not upstream:
            raise ApiError(f"missing required field: {'name' if not name else 'upstream'}", 400)
        if name in self.proxies:
            raise ApiError("proxy already exists", 409)
        listen = body.get("listen") or "127.0.0.1:0"
        check_addresses(listen, upstream)
        proxy = Proxy(self.nursery, name, listen, upstream)
        self.proxies[name] = proxy  # before the await: a second create of the name gets 409
        try:
            if body.get("enabled", True):
                await proxy.start()
        except ApiError:
            del self.proxies[name]
            raise
        return proxy

    async def update(self, proxy: Proxy, body: dict) -> None:
        moved = (body.get("listen", proxy.listen) != proxy.listen
                 or body.get("upstream", proxy.upstream) != proxy.upstream)
        enabled = body.get("enabled", proxy.enabled)
        check_addresses(body.get("listen", proxy.listen), body.get("upstream", proxy.upstream))
        if moved or not enabled:
            await proxy.stop()
        proxy.listen = body.get("listen", proxy.listen)
        proxy.upstream = body.get("upstream", proxy.upstream)
        if enabled:
            await proxy.start()

    async def delete(self, proxy: Proxy) -> None:
        del self.proxies[proxy.name]
        await proxy.stop()

    async def reset(self) -> None:
        """Every proxy enabled again, every toxic gone."""
        for proxy in list(self.proxies.values()):
            await proxy.start()
            proxy.toxics.clear()
            proxy.notify()

    def add_toxic(self, proxy: Proxy, body: dict) -> Toxic:
        try:
            toxic = make_toxic(body)
        except ToxicError as exc:
            raise ApiError(str(exc), 400) from None
        if any(t.name == toxic.name for t in proxy.toxics):
            raise ApiError("toxic already exists", 409)
        proxy.toxics.append(toxic)
        proxy.notify()
        return toxic

    def update_toxic(self, proxy: Proxy, toxic: Toxic, body: dict) -> None:
        try:
            toxic.update(body.get("toxicity"), body.get("attributes"))
        except ToxicError as exc:
            raise ApiError(str(exc), 400) from None
        proxy.notify()

    def remove_toxic(self, proxy: Proxy, toxic: Toxic) -> None:
        proxy.toxics.remove(toxic)
        proxy.notify()

    def app(self) -> Starlette:
        async def body(request: Request) -> dict:
            try:
                data = json.loads(await request.body() or b"{}")
            except ValueError as exc:
                raise ApiError(f"bad request body: {exc}", 400) from None
            if not isinstance(data, dict):
                raise ApiError("bad request body: want a JSON object", 400)
            return data

        def route(path: str, methods: list[str]):
            def wrap(handler):
                async def endpoint(request: Request) -> Response:
                    try:
                        return await handler(request, **request.path_params)
                    except ApiError as exc:
                        return JSONResponse({"error": str(exc), "status": exc.status}, exc.status)
                return Route(path, endpoint, methods=methods)
            return wrap

        @route("/version", ["GET"])
        async def version(request):
            return JSONResponse({"version": VERSION})

        @route("/proxies", ["GET"])
        async def index(request):
            return JSONResponse({name: p.to_json() for name, p in self.proxies.items()})

        @route("/proxies", ["POST"])
        async def create(request):
            return JSONResponse((await self.create(await body(request))).to_json(), 201)

        @route("/reset", ["POST"])
        async def reset(request):
            await self.reset()
            return Response(status_code=204)

        @route("/proxies/{name}", ["GET", "POST", "PATCH", "DELETE"])
        async def one_proxy(request, name):
            proxy = self.proxy(name)
            if request.method == "DELETE":
                await self.delete(proxy)
                return Response(status_code=204)
            if request.method != "GET":
                await self.update(proxy, await body(request))
            return JSONResponse(proxy.to_json())

        @route("/proxies/{name}/toxics", ["GET", "POST"])
        async def toxics(request, name):
            proxy = self.proxy(name)
            if request.method == "POST":
                return JSONResponse(self.add_toxic(proxy, await body(request)).to_json())
            return JSONResponse([t.to_json() for t in proxy.toxics])

        @route("/proxies/{name}/toxics/{toxic}", ["GET", "POST", "PATCH", "DELETE"])
        async def one_toxic(request, name, toxic):
            proxy = self.proxy(name)
            found = self.toxic(proxy, toxic)
            if request.method == "DELETE":
                self.remove_toxic(proxy, found)
                return Response(status_code=204)
            if request.method != "GET":
                self.update_toxic(proxy, found, await body(request))
            return JSONResponse(found.to_json())

        return Starlette(routes=[version, index, create, reset, one_proxy, toxics, one_toxic])


async def run_server(host: str, port: int) -> None:
    """Serve the API on host:port until SIGTERM or SIGINT; announce the bound address on stdout."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            config = Config()
            config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
            config.accesslog = None
            config.graceful_timeout = 0.5
            binds = await nursery.start(serve, Toxiproxy(nursery).app(), config)
            print(ANNOUNCE + binds[0], flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="API port; 0 picks a free one (default 8474)")
    args = parser.parse_args(argv)
    if not is_loopback(args.host):
        parser.error(f"--host {args.host}: only loopback addresses are allowed")
    trio.run(run_server, args.host, args.port)
    return 0


# -- starting one from tests ------------------------------------------------------------------------


@dataclass(frozen=True)
class ToxiproxyServer:
    host: str
    port: int
    pid: int
    real: bool  # a toxiproxy-server binary rather than this module

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _announced_port(proc: subprocess.Popen, deadline: float) -> int:
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline().decode(errors="replace")
            if line.startswith(ANNOUNCE):
                return int(line.rstrip().rsplit(":", 1)[1])
    raise RuntimeError("the toxiproxy API did not start")


def _wait_for_api(url: str, proc: subprocess.Popen, deadline: float) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    while True:
        try:
            with direct.open(url + "/version", timeout=1) as answer:
                answer.read()
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the toxiproxy API at {url} did not answer") from None
            time.sleep(0.05)


@contextmanager
def toxiproxy_server(host: str = "127.0.0.1", timeout: float = 20.0) -> Iterator[ToxiproxyServer]:
    """A Toxiproxy API on a free loopback port, in a child process; always stopped on exit.

    A real ``toxiproxy-server`` is used when one is on PATH, this module otherwise.
    """
    binary = shutil.which("toxiproxy-server")
    with tempfile.TemporaryFile() as log:
        if binary:
            port = free_port(host)
            cmd = [binary, "-host", host, "-port", str(port)]
        else:
            port = 0
            cmd = [sys.executable, "-m", "chaos.proxy", "--host", host, "--port", "0"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log if binary else subprocess.PIPE, stderr=log,
                                preexec_fn=die_with_parent)
        try:
            deadline = time.monotonic() + timeout
            try:
                if not binary:
                    port = _announced_port(proc, deadline)
                _wait_for_api(f"http://{host}:{port}", proc, deadline)
            except RuntimeError as exc:
                log.seek(0)
                raise RuntimeError(f"{exc}: {' '.join(cmd)}\n{log.read().decode(errors='replace')}") from None
            yield ToxiproxyServer(host, port, proc.pid, real=bool(binary))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout:
                proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
