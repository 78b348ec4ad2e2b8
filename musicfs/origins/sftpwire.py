"""SFTP (protocol version 3) over one SSH channel, for many threads at once.

Why not paramiko's own SFTP client: it sends a request and then reads the
channel itself until its answer comes, dropping any other answer it meets on
the way, so two threads sharing one session take each other's answers and
hang. One session per thread, the way round that, costs a whole SSH
connection for every read in flight, and a hundred players starting tracks
at once would queue behind a handful of them, each read waiting out several
round trips in turn.

Here the session is shared the way the protocol intends: every request has an
id, any number may be in flight, and one reader thread per channel hands each
answer to whoever waits for that id. A large read goes out as many requests at
once (one round trip for a megabyte, not thirty-two), and closing a file is
sent without waiting for its answer. Paramiko still provides the SSH transport
(key exchange, host keys, ciphers, the channel); only the SFTP messages are
spoken here.

Every wait has a deadline (``time.monotonic()`` seconds): a caller whose answer
is late gets :class:`TimeoutError` and decides what to do with the connection;
nothing here sleeps past it. A channel that breaks fails every request on it at
once with :class:`ConnectionLost`. An error answer from the server is a
:class:`StatusError`, and leaves the channel usable.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["Attrs", "ConnectionLost", "SftpChannel", "StatusError", "NO_SUCH_FILE", "PERMISSION_DENIED",
           "within"]

# message types (draft-ietf-secsh-filexfer-02, which OpenSSH speaks)
_INIT, _VERSION, _OPEN, _CLOSE, _READ, _WRITE = 1, 2, 3, 4, 5, 6
_LSTAT, _OPENDIR, _READDIR, _REMOVE, _MKDIR, _REALPATH, _STAT, _RENAME = 7, 11, 12, 13, 14, 16, 17, 18
_EXTENDED = 200
_STATUS, _HANDLE, _DATA, _NAME, _ATTRS, _EXTENDED_REPLY = 101, 102, 103, 104, 105, 201
# status codes
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, OP_UNSUPPORTED = 0, 1, 2, 3, 4, 8
_OPEN_READ, _OPEN_WRITE, _OPEN_CREATE, _OPEN_TRUNCATE, _OPEN_EXCLUSIVE = 0x01, 0x02, 0x08, 0x10, 0x20
# OpenSSH's extensions: rename replacing the target atomically (rename(2)), and fsync(2) of an open file
POSIX_RENAME, FSYNC = b"posix-rename@openssh.com", b"fsync@openssh.com"
_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
_ATTR_EXTENDED = 0x80000000

VERSION = 3
SAFE_READ_SIZE = 32 * 1024  # what every server must accept in one read request
MAX_READ_SIZE = 256 * 1024  # the most asked in one request, even of a server that allows more
SAFE_WRITE_SIZE = 32 * 1024  # what every server must accept as the data of one write request
MAX_WRITE_SIZE = 256 * 1024  # the most sent in one, even to a server that allows more
MAX_IN_FLIGHT = 32  # read requests outstanding for one read call
MAX_PACKET = 1 << 24  # an answer larger than this is garbage on the wire, not SFTP
RECV_SIZE = 256 * 1024
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEADER = struct.Struct(">IBI")  # length, type, request id


def within(path: str, root: str) -> bool:
    """Whether the server's real path ``path`` is its real path ``root`` or lies inside it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


class ConnectionLost(Exception):
    """The channel closed or broke: every request on it has failed, and new ones fail at once."""


class StatusError(Exception):
    """The server answered a request with an error status; the channel is fine."""

    def __init__(self, code: int, message: str):
        super().__init__(message or f"SFTP status {code}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Attrs:
    size: int | None = None
    mode: int | None = None
    mtime: int | None = None  # whole seconds since the epoch


class _Fields:
    """Reads the fields of one message, front to back."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def _unpack(self, field: struct.Struct) -> int:
        try:
            value = field.unpack_from(self.data, self.pos)[0]
        except struct.error:
            raise ConnectionLost("a malformed SFTP message (it ends inside a field)") from None
        self.pos += field.size
        return value

    def string(self) -> bytes:
        size = self.u32()
        end = self.pos + size
        if end > len(self.data):
            raise ConnectionLost("a malformed SFTP message (a string runs past its end)")
        value = self.data[self.pos:end]
        self.pos = end
        return value

    def attrs(self) -> Attrs:
        flags = self.u32()
        size = self.u64() if flags & _ATTR_SIZE else None
        if flags & _ATTR_UIDGID:
            self.pos += 8
        mode = self.u32() if flags & _ATTR_PERMISSIONS else None
        mtime = None
        if flags & _ATTR_ACMODTIME:
            self.pos += 4  # atime
            mtime = self.u32()
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.string()
                self.string()
        return Attrs(size, mode, mtime)


def _string(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return _U32.pack(len(value)) + value


class _Pending:
    """One request's answer, once the reader thread has it."""

    __slots__ = ("done", "kind", "body", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.kind = 0
        self.body: _Fields | None = None
        self.error: BaseException | None = None


class SftpChannel:
    """An SFTP session on an open paramiko channel (``invoke_subsystem("sftp")`` already called).

    The version handshake happens in the constructor, bounded by ``timeout``;
    it raises :class:`ConnectionLost` or :class:`TimeoutError` if the server
    does not answer it properly.
    """

    def __init__(self, channel, timeout: float, name: str = "sftp"):
        self._channel = channel
        self._lock = threading.Lock()  # request ids and the table of requests waiting
        self._send_lock = threading.Lock()  # one packet at a time onto the channel
        self._waiting: dict[int, _Pending] = {}
        self._next_id = 1
        self._lost: BaseException | None = None
        self.last_heard = time.monotonic()  # when the server last sent anything
        self.root: str | None = None  # the real path of the folder its user works under, once asked
        self.extensions = self._handshake(timeout)
        self.read_size, self.write_size = SAFE_READ_SIZE, SAFE_WRITE_SIZE
        self._reader = threading.Thread(target=self._read_loop, name=f"musicfs-{name}-reader", daemon=True)
        self._reader.start()
        if b"limits@openssh.com" in self.extensions:
            self.read_size, self.write_size = self._limits(time.monotonic() + timeout)

    # -- state ---------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._lost is None

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """Close the channel; requests still waiting fail with :class:`ConnectionLost`."""
        self._fail_all(ConnectionLost("the SFTP session was closed"))
        self._channel.close()

    def abort(self, why: str) -> None:
        """Fail every request and close the SSH connection under the session, from any thread: a
        send blocked on a server that stopped reading (its window or the socket full) fails too,
        which closing the channel alone would not make it do."""
        self._fail_all(ConnectionLost(why))
        transport = self._channel.get_transport()
        if transport is not None:
            transport.close()

    # -- operations ----------------------------------------------------------------------------

    def open(self, path: str, deadline: float) -> bytes:
        """A handle for reading ``path``."""
        fields = self._call(_OPEN, _string(path) + _U32.pack(_OPEN_READ) + _U32.pack(0), _HANDLE, deadline)
        return fields.string()

    def close_handle(self, handle: bytes) -> None:
        """Release a handle without waiting for the answer (a late or failed close costs nothing)."""
        if self._lost is None:
            try:
                self._send([(_CLOSE, _string(handle))])
            except ConnectionLost:
                pass

    def stat(self, path: str, deadline: float) -> Attrs:
        return self._call(_STAT, _string(path), _ATTRS, deadline).attrs()

    def lstat(self, path: str, deadline: float) -> Attrs:
        return self._call(_LSTAT, _string(path), _ATTRS, deadline).attrs()

    def ask_realpath(self, path: str) -> _Pending:
        """Ask where ``path`` really leads (links resolved) without waiting: the request it guards can
        go out right behind it, and :meth:`realpath` collects the answer, so the check costs no round trip."""
        return self._send([(_REALPATH, _string(path))])[0]

    def realpath(self, question: _Pending, deadline: float) -> str:
        fields = self._answer(question, _NAME, deadline)
        if fields.u32() < 1:
            raise ConnectionLost("the server answered a realpath request with no name")
        return fields.string().decode("utf-8", "surrogateescape")

    def listdir(self, path: str, deadline: float) -> list[tuple[str, Attrs]]:
        """Every entry of the folder ``path`` but '.' and '..', with the attributes the listing gives."""
        handle = self._call(_OPENDIR, _string(path), _HANDLE, deadline).string()
        entries = []
        try:
            while True:
                try:
                    fields = self._call(_READDIR, _string(handle), _NAME, deadline)
                except StatusError as exc:
                    if exc.code == EOF:
                        return entries
                    raise
                for _ in range(fields.u32()):
                    name = fields.string().decode("utf-8", "surrogateescape")
                    fields.string()  # the 'ls -l' line
                    attrs = fields.attrs()
                    if name not in (".", ".."):
                        entries.append((name, attrs))
        finally:
            self.close_handle(handle)

    def read(self, handle: bytes, offset: int, size: int, deadline: float) -> bytes:
        """Up to ``size`` bytes at ``offset``: fewer only where the file ends.

        Requests go out up to ``MAX_IN_FLIGHT`` at a time and their answers are
        taken in order. A server may answer a request with fewer bytes than
        asked; the rest is asked for again, after which the requests already
        sent past it are no longer needed (their answers are dropped).
        """
        end = offset + size
        parts: list[bytes] = []
        position = asked = offset
        queue: deque[tuple[int, _Pending]] = deque()
        handle_field = _string(handle)
        while position < end:
            batch = []
            while asked < end and len(queue) + len(batch) < MAX_IN_FLIGHT:
                length = min(self.read_size, end - asked)
                batch.append((_READ, handle_field + _U64.pack(asked) + _U32.pack(length), length))
                asked += length
            if batch:
                pendings = self._send([(kind, payload) for kind, payload, _ in batch])
                queue.extend(zip((length for _, _, length in batch), pendings, strict=True))
            length, pending = queue.popleft()
            try:
                fields = self._answer(pending, _DATA, deadline)
            except StatusError as exc:
                if exc.code == EOF:
                    break
                raise
            data = fields.string()
            if len(data) > length:
                raise ConnectionLost(f"the server answered a read of {length} bytes with {len(data)}")
            parts.append(data)
            position += len(data)
            if len(data) < length:  # short: ask again from here; what was sent beyond is dropped
                queue.clear()
                asked = position
                if not data:
                    break
        return b"".join(parts)

    # -- writing -------------------------------------------------------------------------------

    def create(self, path: str, deadline: float) -> bytes:
        """A handle for writing a new file at ``path``; fails if anything is there already (a
        link planted at the name is not followed). The server's umask sets its mode."""
        flags = _OPEN_WRITE | _OPEN_CREATE | _OPEN_TRUNCATE | _OPEN_EXCLUSIVE
        return self._call(_OPEN, _string(path) + _U32.pack(flags) + _U32.pack(0), _HANDLE, deadline).string()

    def ask_write(self, handle: bytes, offset: int, data: bytes) -> _Pending:
        """Send ``data`` (at most :attr:`write_size` bytes) to write at ``offset`` without waiting:
        many writes go out before the first is answered; :meth:`wait_ok` collects each answer."""
        return self._send([(_WRITE, _string(handle) + _U64.pack(offset) + _string(data))])[0]

    def ask_mkdir(self, path: str) -> _Pending:
        return self._send([(_MKDIR, _string(path) + _U32.pack(0))])[0]

    def wait_ok(self, pending: _Pending, deadline: float) -> None:
        """The answer to a request answered by a status: returns for OK, raises :class:`StatusError` else."""
        try:
            self._answer(pending, _STATUS, deadline)  # raises for every status, OK too
        except StatusError as exc:
            if exc.code != OK:
                raise

    def fsync(self, handle: bytes, deadline: float) -> bool:
        """Have the server flush the file to its disk; False when it offers no way to (no extension)."""
        if FSYNC not in self.extensions:
            return False
        self.wait_ok(self._send([(_EXTENDED, _string(FSYNC) + _string(handle))])[0], deadline)
        return True

    def close_file(self, handle: bytes, deadline: float) -> None:
        """Close a handle and wait for the answer: the last moment a server can report a failed write."""
        self.wait_ok(self._send([(_CLOSE, _string(handle))])[0], deadline)

    def rename(self, old: str, new: str, deadline: float, *, replace: bool) -> None:
        """Rename ``old`` to ``new``. ``replace``: with OpenSSH's ``posix-rename@openssh.com``,
        rename(2) itself, which replaces ``new`` atomically (the server must offer it); without,
        SFTP's own rename, which fails when ``new`` exists on most servers."""
        if replace:
            if POSIX_RENAME not in self.extensions:
                raise StatusError(OP_UNSUPPORTED, "the server offers no posix-rename@openssh.com")
            request = (_EXTENDED, _string(POSIX_RENAME) + _string(old) + _string(new))
        else:
            request = (_RENAME, _string(old) + _string(new))
        self.wait_ok(self._send([request])[0], deadline)

    def remove(self, path: str, deadline: float) -> None:
        """Unlink ``path`` (a link itself, not what it leads to)."""
        self.wait_ok(self._send([(_REMOVE, _string(path))])[0], deadline)

    # -- requests and answers ------------------------------------------------------------------

    def _handshake(self, timeout: float) -> dict[bytes, bytes]:
        self._channel.settimeout(timeout)
        self._channel.sendall(_U32.pack(5) + bytes([_INIT]) + _U32.pack(VERSION))
        size = _U32.unpack(self._recv_exactly(4))[0]
        if not 5 <= size <= MAX_PACKET:
            raise ConnectionLost(f"the server's SFTP greeting is malformed ({size} bytes)")
        body = _Fields(self._recv_exactly(size))
        kind = body.data[0]
        body.pos = 1
        if kind != _VERSION:
            raise ConnectionLost(f"the server did not start SFTP (message type {kind})")
        version = body.u32()
        if version < VERSION:
            raise ConnectionLost(f"the server speaks SFTP version {version}; version 3 is needed")
        extensions = {}
        while body.pos < len(body.data):
            name = body.string()
            extensions[name] = body.string()
        self._channel.settimeout(None)  # from here only the reader thread reads, and it waits for as long as it takes
        return extensions

    def _limits(self, deadline: float) -> tuple[int, int]:
        """How much one read request may ask for and one write request carry (OpenSSH's limits)."""
        try:
            fields = self._call(_EXTENDED, _string(b"limits@openssh.com"), _EXTENDED_REPLY, deadline)
            fields.u64()  # packet length
            read, write = fields.u64(), fields.u64()
        except StatusError:
            return SAFE_READ_SIZE, SAFE_WRITE_SIZE
        return (min(max(read, SAFE_READ_SIZE), MAX_READ_SIZE) if read else SAFE_READ_SIZE,
                min(max(write, SAFE_WRITE_SIZE), MAX_WRITE_SIZE) if write else SAFE_WRITE_SIZE)

    def _recv_exactly(self, size: int) -> bytes:
        parts, got = [], 0
        while got < size:
            piece = self._channel.recv(size - got)
            if not piece:
                raise ConnectionLost("the server closed the SFTP session")
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def _call(self, kind: int, payload: bytes, expect: int, deadline: float) -> _Fields:
        return self._answer(self._send([(kind, payload)])[0], expect, deadline)

    def _send(self, requests: list[tuple[int, bytes]]) -> list[_Pending]:
        """Send requests in one write; their answers will land in the returned pendings, in order."""
        pendings, packets = [], []
        with self._lock:
            if self._lost is not None:
                raise ConnectionLost(str(self._lost))
            for kind, payload in requests:
                request_id = self._next_id
                self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
                pending = _Pending()
                self._waiting[request_id] = pending
                pendings.append(pending)
                packets.append(_HEADER.pack(len(payload) + 5, kind, request_id) + payload)
        try:
            with self._send_lock:
                self._channel.sendall(b"".join(packets))
        except (OSError, EOFError) as exc:  # paramiko's SSHException is not raised by sendall
            self._fail_all(ConnectionLost(f"sending failed: {type(exc).__name__}: {exc}"))
            raise ConnectionLost(str(self._lost)) from None
        return pendings

    def _answer(self, pending: _Pending, expect: int, deadline: float) -> _Fields:
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("no answer in time")
        if pending.error is not None:
            raise pending.error
        fields = pending.body
        if pending.kind == _STATUS:
            code = fields.u32()
            raise StatusError(code, fields.string().decode("utf-8", "replace"))
        if pending.kind != expect:
            raise ConnectionLost(f"the server answered with message type {pending.kind}, not {expect}")
        return fields

    def _read_loop(self) -> None:
        """The reader thread: take packets off the channel and hand each to its request."""
        buffer = bytearray()
        try:
            while True:
                piece = self._channel.recv(RECV_SIZE)
                if not piece:
                    raise ConnectionLost("the server closed the SFTP session")
                self.last_heard = time.monotonic()
                buffer += piece
                while len(buffer) >= 4:
                    size = _U32.unpack_from(buffer)[0]
                    if not 5 <= size <= MAX_PACKET:
                        raise ConnectionLost(f"garbage on the SFTP channel (a {size}-byte packet)")
                    if len(buffer) < 4 + size:
                        break
                    packet = bytes(buffer[4:4 + size])
                    del buffer[:4 + size]
                    self._deliver(packet)
        except ConnectionLost as exc:
            self._fail_all(exc)
        except (OSError, EOFError, struct.error) as exc:
            self._fail_all(ConnectionLost(f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # a bug here must not leave every caller waiting out its deadline
            log.exception("the SFTP reader thread failed; closing the session")
            self._fail_all(ConnectionLost(f"the reader failed: {type(exc).__name__}: {exc}"))

    def _deliver(self, packet: bytes) -> None:
        request_id = _U32.unpack_from(packet, 1)[0]
        with self._lock:
            pending = self._waiting.pop(request_id, None)
        if pending is None:
            return  # the answer to a request nobody waits for any more
        pending.kind = packet[0]
        pending.body = _Fields(packet, 5)
        pending.done.set()

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = error
            waiting, self._waiting = self._waiting, {}
        for pending in waiting.values():
            pending.error = ConnectionLost(str(error))
            pending.done.set()
