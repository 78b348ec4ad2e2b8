"""The SFTP protocol client on its own, against a scripted server on a socket pair.

OpenSSH's server always answers in order, in full and correctly; these tests
make the server answer out of order, short, with errors, with garbage, or not
at all, which the client must also get right. The real server is in
tests/test_origin_sftp.py.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time

import pytest

from musicfs.origins.sftpwire import EOF, NO_SUCH_FILE, ConnectionLost, SftpChannel, StatusError

DATA = random.Random(9).randbytes(300_000)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


class ScriptedServer:
    """Serves one file, ``/song.flac`` (DATA), the way a test tells it to."""

    def __init__(self, sock: socket.socket, *, most: int = 1 << 30, shuffle: bool = False,
                 silent: bool = False, limits: int | None = None):
        self.sock, self.most, self.shuffle, self.silent, self.limits = sock, most, shuffle, silent, limits
        self.requests: list[int] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def recv_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            piece = self.sock.recv(size - len(data))
            if not piece:
                raise EOFError
            data += piece
        return data

    def request(self) -> tuple[int, int, bytes]:
        size = struct.unpack(">I", self.recv_exactly(4))[0]
        packet = self.recv_exactly(size)
        self.requests.append(packet[0])
        return packet[0], struct.unpack(">I", packet[1:5])[0], packet[5:]

    def send(self, kind: int, request_id: int | None, payload: bytes) -> None:
        head = bytes([kind]) + (struct.pack(">I", request_id) if request_id is not None else b"")
        self.sock.sendall(struct.pack(">I", len(head) + len(payload)) + head + payload)

    def run(self) -> None:
        try:
            size = struct.unpack(">I", self.recv_exactly(4))[0]
            self.recv_exactly(size)  # INIT
            extensions = _string(b"limits@openssh.com") + _string(b"1") if self.limits else b""
            self.send(2, None, struct.pack(">I", 3) + extensions)
            shuffler = random.Random(1)
            while True:
                batch = [self.request()]
                while self.shuffle and select.select([self.sock], [], [], 0.01)[0]:
                    batch.append(self.request())  # everything sent so far, answered in a random order
                shuffler.shuffle(batch)
                for item in batch:
                    if not self.silent:
                        self.answer(*item)
        except (EOFError, OSError):
            pass

    def answer(self, kind: int, request_id: int, body: bytes) -> None:
        if kind == 3:  # OPEN
            name = body[4:4 + struct.unpack(">I", body[:4])[0]]
            if name == b"/song.flac":
                self.send(102, request_id, _string(b"h1"))
            else:
                self.send(101, request_id, struct.pack(">I", NO_SUCH_FILE) + _string(b"no such file")
                          + _string(b""))
        elif kind == 5:  # READ
            handle_size = struct.unpack(">I", body[:4])[0]
            offset, length = struct.unpack(">QI", body[4 + handle_size:4 + handle_size + 12])
            piece = DATA[offset:offset + min(length, self.most)]
            if piece:
                self.send(103, request_id, _string(piece))
            else:
                self.send(101, request_id, struct.pack(">I", EOF) + _string(b"end") + _string(b""))
        elif kind == 17:  # STAT: attributes that say a size follows, and stop
            self.send(105, request_id, struct.pack(">I", 1))
        elif kind == 200:  # EXTENDED: limits@openssh.com
            self.send(201, request_id, struct.pack(">QQQQ", 1 << 18, self.limits, 1 << 18, 64))


@pytest.fixture
def pair():
    """(client SftpChannel factory, the server's socket): the client side is a real socket."""
    client_sock, server_sock = socket.socketpair()
    channels = []

    def make(**behaviour) -> tuple[SftpChannel, ScriptedServer]:
        server = ScriptedServer(server_sock, **behaviour)
        channel = SftpChannel(client_sock, timeout=2.0, name="test")
        channels.append(channel)
        return channel, server

    yield make
    for channel in channels:
        channel.close()
    server_sock.close()


def soon(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


def test_reads_in_pieces_and_short_answers_are_asked_again(pair):
    sftp, server = pair(most=7_000)  # answers never carry more than 7,000 bytes
    handle = sftp.open("/song.flac", soon())
    assert sftp.read(handle, 1_234, 100_000, soon()) == DATA[1_234:101_234]
    assert server.requests.count(5) > 100_000 // 7_000


def test_the_end_of_the_file_ends_a_read(pair):
    sftp, _ = pair()
    handle = sftp.open("/song.flac", soon())
    assert sftp.read(handle, len(DATA) - 10, 5_000, soon()) == DATA[-10:]
    assert sftp.read(handle, len(DATA) + 10, 5_000, soon()) == b""


def test_answers_out_of_order_reach_their_own_callers(pair):
    sftp, _ = pair(shuffle=True)
    handle = sftp.open("/song.flac", soon())
    results, errors = {}, []

    def read(offset: int) -> None:
        try:
            results[offset] = sftp.read(handle, offset, 40_000, soon(5))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(offset,)) for offset in range(0, 240_000, 20_000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert results == {offset: DATA[offset:offset + 40_000] for offset in range(0, 240_000, 20_000)}


def test_an_error_answer_is_a_status_error_and_the_channel_goes_on(pair):
    sftp, _ = pair()
    with pytest.raises(StatusError) as caught:
        sftp.open("/missing.flac", soon())
    assert caught.value.code == NO_SUCH_FILE and "no such file" in str(caught.value)
    assert sftp.alive
    assert sftp.read(sftp.open("/song.flac", soon()), 0, 10, soon()) == DATA[:10]


def test_the_read_size_follows_the_servers_limit(pair):
    sftp, server = pair(limits=100_000)
    assert sftp.read_size == 100_000
    handle = sftp.open("/song.flac", soon())
    assert sftp.read(handle, 0, 300_000, soon()) == DATA
    assert server.requests.count(5) == 3


def test_no_answer_is_a_timeout_at_the_deadline(pair):
    client_sock, server_sock = socket.socketpair()
    server = ScriptedServer(server_sock)
    sftp = SftpChannel(client_sock, timeout=2.0)
    server.silent = True
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        sftp.open("/song.flac", started + 0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    sftp.close()
    server_sock.close()


def test_a_closed_connection_fails_every_waiting_request_at_once(pair):
    sftp, server = pair()
    server.silent = True
    outcome = []

    def waiting():
        try:
            sftp.open("/song.flac", soon(10))
        except ConnectionLost as exc:
            outcome.append((exc, time.monotonic()))

    threads = [threading.Thread(target=waiting) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    closed_at = time.monotonic()
    server.sock.shutdown(socket.SHUT_RDWR)
    for thread in threads:
        thread.join(5)
    assert len(outcome) == 5 and all(at - closed_at < 1.0 for _, at in outcome)
    assert not sftp.alive
    with pytest.raises(ConnectionLost):
        sftp.open("/song.flac", soon())


def test_garbage_on_the_wire_breaks_the_channel_not_the_process(pair):
    sftp, server = pair()
    server.silent = True
    waiter = []
    thread = threading.Thread(target=lambda: waiter.append(pytest.raises(ConnectionLost, sftp.open, "/song.flac",
                                                                         soon(5))))
    thread.start()
    time.sleep(0.1)
    server.sock.sendall(b"\xff\xff\xff\xff garbage")
    thread.join(5)
    assert waiter and not sftp.alive


def test_a_truncated_answer_is_a_broken_session_not_a_crash(pair):
    sftp, _ = pair()
    with pytest.raises(ConnectionLost, match="malformed"):
        sftp.stat("/song.flac", soon())
