"""HTTP over a Unix socket (musicfs.control.transport) and the control client on it, against a
small real HTTP server: what the daemon's API relies on without a daemon to start.

The daemon itself is talked to in conformance/ (test_control_cli, test_control_api, test_events);
here are the cases a daemon does not easily produce: a socket path too long for the kernel, a
stream whose first line comes after the client's timeout, an answer that never comes.
"""

from __future__ import annotations

import json
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from musicfs.control.client import ControlClient, ControlError, Refused
from musicfs.control.sockets import SUN_PATH_MAX, reachable
from musicfs.control.transport import TransportError, UnixHTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # a Unix socket's peer has no address to log
        pass

    def _send(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/echo":
            self._send(200, {"path": url.path, "query": parse_qs(url.query, keep_blank_values=True),
                             "connection": self.headers.get("Connection")})
        elif url.path == "/slow":
            time.sleep(float(parse_qs(url.query)["s"][0]))
            self._send(200, {"slow": True})
        elif url.path == "/feed":  # NDJSON, chunked, late: the daemon's server sends a streamed
            time.sleep(float(parse_qs(url.query)["s"][0]))  # answer's head with its first line
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in (b'{"n": 1}\n', b"\n", b'{"n": 2}\n{"n": 3}\n'):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(422 if url.path == "/invalid" else 404, {"detail": [
                {"loc": ["body", "dry_run"], "msg": "Input should be a valid boolean"}]
                if url.path == "/invalid" else f"nothing at {url.path}"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, {"got": json.loads(body) if body else None, "type": self.headers.get("Content-Type")})


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that left: its own business
            super().handle_error(request, client_address)


@pytest.fixture
def server(tmp_path):
    """A server on a socket whose path is too long for sockaddr_un: reached through /proc."""
    folder = tmp_path / ("d" * (SUN_PATH_MAX - len(str(tmp_path))))
    folder.mkdir()
    path = folder / "api.sock"
    assert len(str(path)) > SUN_PATH_MAX
    with reachable(path) as where:  # the route the client takes binds it too
        serving = Server(where, Handler)
    thread = threading.Thread(target=serving.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        serving.shutdown()
        serving.server_close()


def test_requests_reach_a_socket_with_a_long_path(server):
    with UnixHTTP(server) as http:
        reply = http.request("GET", "/echo", params={"q": "a b", "fields": ["title", "album"], "all": True,
                                                     "none": None})
        assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
        assert reply.json() == {"path": "/echo", "query": {"q": ["a b"], "fields": ["title", "album"],
                                                           "all": ["true"], "none": [""]},
                                "connection": "close"}
        posted = http.request("POST", "/post", json_body={"dry_run": True}).json()
        assert posted == {"got": {"dry_run": True}, "type": "application/json"}
        assert http.request("POST", "/post").json() == {"got": None, "type": None}


def test_a_stream_waits_for_its_first_line_past_the_timeout(server):
    with ControlClient(server, timeout=0.3) as client:
        assert list(client.stream("GET", "/feed", params={"s": 0.8})) == [{"n": 1}, {"n": 2}, {"n": 3}]
        with pytest.raises(ControlError, match=r"daemon on .*api\.sock does not answer \(no answer: Timeout"):
            client.get("/slow", s=0.8)  # a whole answer is bounded


def test_refusals_say_the_request_and_the_apis_words(server):
    with ControlClient(server) as client:
        with pytest.raises(Refused) as refused:
            client.get("/v1/origins/a%2Fb")
        assert str(refused.value) == "GET /v1/origins/a/b: HTTP 404: nothing at /v1/origins/a%2Fb"
        assert (refused.value.status, refused.value.detail) == (404, "nothing at /v1/origins/a%2Fb")
        with pytest.raises(Refused, match=r"^GET /invalid: HTTP 422: body\.dry_run: Input should be a valid "
                                          r"boolean$"):
            list(client.stream("GET", "/invalid"))


def test_no_daemon_is_one_error_naming_the_socket(tmp_path):
    with pytest.raises(TransportError, match="cannot connect: FileNotFoundError"), \
            UnixHTTP(tmp_path / "none.sock") as http:
        http.request("GET", "/v1/status")
    with ControlClient(Path(tmp_path / "none.sock")) as client, pytest.raises(
            ControlError, match=r"^the musicfs daemon on .*none\.sock does not answer \(cannot connect"):
        client.get("/v1/status")


def test_each_request_asks_the_server_to_close_its_side_once_answered(server):
    """One connection per request, said so: a server that kept it for a next request (the daemon's
    keeps an idle one 10 s) would hold a descriptor per command, and per soak walker call."""
    with UnixHTTP(server) as http:
        assert http.request("GET", "/echo").json()["connection"] == "close"
