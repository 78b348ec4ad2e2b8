"""The chaos proxy itself: every toxic the chaos tests rely on does what Toxiproxy's does.

Driven through toxiproxy-python, as the other chaos tests drive it, against
tiny upstreams on loopback: an echo server and a server that sends a fixed
payload and closes. The same tests pass against a real ``toxiproxy-server``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from toxiproxy.exceptions import NotFound, ProxyExists

from chaos.proxy import ROOT, toxiproxy_server

PAYLOAD = os.urandom(200_000)


@contextmanager
def upstream(serve: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback server running ``serve`` on each connection in a thread; yields 'host:port'."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # closing a socket does not wake a thread blocked in accept(): poll
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn):
        with conn:
            try:
                serve(conn)
            except OSError:  # the proxy dropped or reset the connection: part of the tests
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def echo(conn):
    while data := conn.recv(65536):
        conn.sendall(data)


def bulk(conn):
    conn.sendall(PAYLOAD)


@pytest.fixture(scope="module")
def echo_upstream():
    with upstream(echo) as address:
        yield address


@pytest.fixture(scope="module")
def bulk_upstream():
    with upstream(bulk) as address:
        yield address


def connect(proxy, timeout: float = 5.0) -> socket.socket:
    host, port = proxy.listen.rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(65536):
        parts.append(data)
    return b"".join(parts)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += more
    return data


def round_trip(sock: socket.socket, message: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(message)
    assert recv_exactly(sock, len(message)) == message
    return time.monotonic() - started


def test_proxy_json_and_errors(toxiproxy, toxiproxy_server, echo_upstream):
    assert toxiproxy.version()
    proxy = toxiproxy.create(upstream=echo_upstream, name="shape")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"{toxiproxy_server.url}/proxies/shape") as answer:
        shown = json.loads(answer.read())
    assert shown["name"] == "shape" and shown["upstream"] == echo_upstream
    assert shown["enabled"] is True and shown["toxics"] == []
    assert shown["listen"].startswith("127.0.0.1:") and not shown["listen"].endswith(":0")
    assert set(toxiproxy.proxies()) >= {"shape"}
    with pytest.raises(ProxyExists):
        toxiproxy.create(upstream=echo_upstream, name="shape")
    proxy.add_toxic(type="latency", attributes={"latency": 10})
    toxic = proxy.get_toxic("latency_downstream")
    assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1.0)
    assert toxic.attributes["latency"] == 10
    assert proxy.destroy()
    assert toxiproxy.get_proxy("shape") is None
    with pytest.raises(NotFound):
        proxy.destroy()


def test_non_loopback_listen_is_refused(toxiproxy, toxiproxy_server, echo_upstream):
    if toxiproxy_server.real:
        pytest.skip("a real toxiproxy-server listens wherever it is told")
    request = urllib.request.Request(
        f"{toxiproxy_server.url}/proxies", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"name": "wide", "listen": "0.0.0.0:0", "upstream": echo_upstream}).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request)
    assert refused.value.code == 400
    assert "wide" not in toxiproxy.proxies()
    cli = subprocess.run([sys.executable, "-m", "chaos.proxy", "--host", "0.0.0.0", "--port", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert cli.returncode != 0 and "loopback" in cli.stderr


def test_pass_through_is_byte_exact(toxiproxy, echo_upstream, bulk_upstream):
    down = toxiproxy.create(upstream=bulk_upstream, name="bulk")
    with connect(down) as sock:
        assert read_all(sock) == PAYLOAD
    up = toxiproxy.create(upstream=echo_upstream, name="echo")
    message = os.urandom(1_000_000)
    with connect(up) as sock:
        sender = threading.Thread(target=sock.sendall, args=(message,))
        sender.start()
        assert recv_exactly(sock, len(message)) == message
        sender.join()


def test_latency_and_jitter_delay_each_direction(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="slow")
    with connect(proxy) as sock:
        assert round_trip(sock) < 0.1
        proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 200})
        proxy.add_toxic(type="latency", attributes={"latency": 100, "jitter": 50})
        times = [round_trip(sock) for _ in range(4)]
    assert all(0.25 <= t <= 0.2 + 0.15 + 0.3 for t in times), times


def test_removing_a_toxic_restores_an_open_connection(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="heal")
    with connect(proxy) as sock:
        proxy.add_toxic(type="latency", attributes={"latency": 400})
        assert round_trip(sock) >= 0.4
        proxy.destroy_toxic("latency_downstream")
        assert round_trip(sock) < 0.1


def test_toxicity_zero_never_applies(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="lucky")
    proxy.add_toxic(type="latency", toxicity=0.0, attributes={"latency": 2000})
    with connect(proxy) as sock:
        assert round_trip(sock) < 0.5


def test_bandwidth_limits_throughput(toxiproxy, bulk_upstream):
    proxy = toxiproxy.create(upstream=bulk_upstream, name="thin")
    proxy.add_toxic(type="bandwidth", attributes={"rate": 100})  # KB/s: 200 KB take 2 s
    started = time.monotonic()
    with connect(proxy) as sock:
        assert read_all(sock) == PAYLOAD
    elapsed = time.monotonic() - started
    assert 1.7 <= elapsed <= 3.5, elapsed


def test_timeout_zero_is_a_black_hole(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="hole")
    proxy.add_toxic(type="timeout", attributes={"timeout": 0})
    with connect(proxy, timeout=1.0) as held:
        held.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            held.recv(100)  # nothing comes back, and the connection stays open
        proxy.destroy_toxic("timeout_downstream")
        assert held.recv(100) == b""  # what it sent is lost: the held connection is closed
    with connect(proxy) as sock:
        assert round_trip(sock) < 0.5


def test_timeout_closes_after_its_time(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="cut")
    proxy.add_toxic(type="timeout", attributes={"timeout": 500})
    started = time.monotonic()
    with connect(proxy) as sock:
        sock.sendall(b"lost")
        try:
            data = read_all(sock)
        except ConnectionResetError:
            data = b""
    elapsed = time.monotonic() - started
    assert data == b"" and 0.45 <= elapsed <= 2.0, (data, elapsed)


def test_reset_peer_resets_the_connection(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="rst")
    proxy.add_toxic(type="reset_peer", attributes={"timeout": 200})
    started = time.monotonic()
    with connect(proxy) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError) as reset:
            read_all(sock)
    assert reset.value.errno == errno.ECONNRESET
    assert time.monotonic() - started >= 0.19


def test_limit_data_closes_after_n_bytes(toxiproxy, bulk_upstream):
    proxy = toxiproxy.create(upstream=bulk_upstream, name="short")
    proxy.add_toxic(type="limit_data", attributes={"bytes": 10_000})
    with connect(proxy) as sock:
        assert read_all(sock) == PAYLOAD[:10_000]


def test_slicer_delivers_exact_bytes_in_small_pieces(toxiproxy, bulk_upstream, echo_upstream):
    proxy = toxiproxy.create(upstream=bulk_upstream, name="sliced")
    proxy.add_toxic(type="slicer", attributes={"average_size": 500, "size_variation": 200, "delay": 20})
    with connect(proxy) as sock:
        assert read_all(sock) == PAYLOAD
    both = toxiproxy.create(upstream=echo_upstream, name="sliced-echo")
    for stream in ("upstream", "downstream"):  # pieces of at most 10 bytes, 5 ms apart
        both.add_toxic(type="slicer", stream=stream,
                       attributes={"average_size": 7, "size_variation": 3, "delay": 5000})
    message = os.urandom(200)
    with connect(both) as sock:
        sock.sendall(message)
        first = sock.recv(65536)
        assert 0 < len(first) <= 10  # a reader sees short reads
        assert first + recv_exactly(sock, len(message) - len(first)) == message


def test_slow_close_delays_only_the_close(toxiproxy, bulk_upstream, echo_upstream):
    """Data flows at once; the end of the stream (the server's close) arrives ``delay`` ms late."""
    proxy = toxiproxy.create(upstream=bulk_upstream, name="lingering")
    proxy.add_toxic(type="slow_close", attributes={"delay": 800})
    started = time.monotonic()
    with connect(proxy) as sock:
        assert recv_exactly(sock, len(PAYLOAD)) == PAYLOAD
        data_at = time.monotonic() - started
        assert sock.recv(100) == b""  # the upstream closed right after sending: we hear it late
        closed_at = time.monotonic() - started
    assert data_at < 0.5, f"the data took {data_at:.2f} s: slow_close must not delay it"
    assert 0.8 <= closed_at <= 2.0, f"closed after {closed_at:.2f} s, not after the 0.8 s delay"

    both = toxiproxy.create(upstream=echo_upstream, name="lingering-echo")  # upstream: our close is late
    both.add_toxic(type="slow_close", stream="upstream", attributes={"delay": 600})
    with connect(both) as sock:
        assert round_trip(sock) < 0.5
        started = time.monotonic()
        sock.shutdown(socket.SHUT_WR)  # the echo server ends when it sees our end, 0.6 s later
        assert read_all(sock) == b""
        assert 0.6 <= time.monotonic() - started <= 2.0


def test_disabled_proxy_refuses_and_comes_back_on_the_same_port(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="flaky")
    listen = proxy.listen
    with connect(proxy) as open_before:
        assert round_trip(open_before) < 0.5
        with proxy.down():
            with pytest.raises(ConnectionRefusedError):
                connect(proxy)
            try:
                assert read_all(open_before) == b""  # connections are dropped too
            except ConnectionResetError:
                pass
    assert toxiproxy.get_proxy("flaky").listen == listen and toxiproxy.get_proxy("flaky").enabled
    with connect(proxy) as sock:
        assert round_trip(sock) < 0.5


def test_reset_enables_proxies_and_removes_toxics(toxiproxy, echo_upstream):
    proxy = toxiproxy.create(upstream=echo_upstream, name="reset")
    proxy.add_toxic(type="latency", attributes={"latency": 1000})
    proxy.disable()
    assert toxiproxy.reset()
    assert proxy.toxics() == {}
    assert toxiproxy.get_proxy("reset").enabled
    with connect(proxy) as sock:
        assert round_trip(sock) < 0.5


def test_the_server_process_is_always_stopped():
    with toxiproxy_server() as server:
        pid = server.pid
        assert server.url.startswith("http://127.0.0.1:")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
