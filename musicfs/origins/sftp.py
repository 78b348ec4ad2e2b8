"""The SFTP origin: a folder on a server reached over SSH (OpenSSH or any SFTP server).

Choices, and why:

* Key files only, no passwords and no agent: a mount runs unattended, and
  what it authenticates with should be one explicit file in the config.
* Strict host key checking: nobody is there to answer "trust this host?",
  and accepting an unknown or changed key would let whoever sits on the path
  serve the library. Such a key is refused with a message saying what to check.
* A small pool of SFTP sessions: one SFTP session answers one request stream,
  FUSE reads arrive in parallel, and servers cap sessions per client
  (``MaxStartups``, ``MaxSessions``), so a few are kept open and reused.
* No retries here: :mod:`musicfs.origins.retry` retries with backoff. A session
  whose connection broke is thrown away when it comes back to the pool, and
  the next call opens a fresh one.
* A read has ``timeout`` seconds as a whole, not only per wait for a reply:
  past it, :class:`_Watchdog` closes the read's connection under it, so a
  transfer that trickles cannot hold a worker thread and a pooled session for
  minutes after the reader has given up on it.

Errors: a missing file is :class:`~musicfs.errors.NotFound`; everything else
is :class:`~musicfs.errors.OriginUnavailable` with a message naming the
server and the operation (and never holding key material).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import posixpath
import stat as stat_mode
import threading
import time
from collections.abc import Iterator
from typing import Any

import paramiko

from ..errors import ConfigError, NotFound, OriginUnavailable
from .base import Entry, Origin, Page, check_seconds, register

log = logging.getLogger(__name__)

__all__ = ["SftpOrigin"]

DEFAULT_PORT = 22
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_POOL_SIZE = 4
DEFAULT_TIMEOUT = 10.0  # seconds: connect, handshake, auth, each wait for a reply, and a whole read
DEFAULT_PAGE_SIZE = 1000
MAX_POOL_SIZE = 64
PREFETCH_REQUESTS = 64  # read requests in flight for one large read (32 KiB each): 2 MiB per readv
KEEPALIVE = 30  # seconds: keeps idle pooled connections through NAT and firewalls

# A broken connection shows up as one of these (or as an OSError subclass: reset, timeout).
_CONNECTION_ERRORS = (paramiko.SSHException, paramiko.SFTPError, EOFError)


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"host key of {hostname} is not known")
        self.hostname, self.key = hostname, key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Like paramiko's RejectPolicy, but keeps the offered key so the error can show its fingerprint."""

    def missing_host_key(self, client, hostname, key):
        raise _UnknownHostKey(hostname, key)


class _Session:
    """One SSH connection and the SFTP session on it; used by one thread at a time."""

    def __init__(self, client: paramiko.SSHClient, sftp: paramiko.SFTPClient, generation: int):
        self.client, self.sftp, self.generation = client, sftp, generation
        self.transport = client.get_transport()
        self.broken = False
        self.cut_off = False  # closed by the watchdog: the operation ran out of time

    def cut(self) -> None:
        """Close the connection under the thread using it (the watchdog's doing), waking its wait."""
        self.broken = self.cut_off = True
        with contextlib.suppress(OSError, *_CONNECTION_ERRORS):
            self.transport.close()

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return (not self.broken and transport is not None and transport.is_active()
                and not self.sftp.get_channel().closed)

    def close(self) -> None:
        with contextlib.suppress(OSError, *_CONNECTION_ERRORS):  # it is going away; nothing to report
            self.sftp.close()
        with contextlib.suppress(OSError, *_CONNECTION_ERRORS):
            self.client.close()


class _Watchdog:
    """Cuts the connection of an SFTP operation that outlives its deadline; one thread for all origins.

    Why: paramiko reads a reply packet by looping over its channel until the
    packet is whole, and the channel's timeout bounds each of those waits, not
    the packet; a server or a link that trickles (1 KB/s) never trips it. A
    1 MiB read would then hold its worker thread and its pooled session for 17
    minutes after the reader gave up on it, and a few such reads take the whole
    pool. Nothing inside paramiko can be told when to give up; closing the
    transport from outside can: its channels close, and whatever the reading
    thread waits in raises at once.

    Why one shared thread rather than a ``threading.Timer`` per read: arming
    costs a heap push under a lock, not a thread start. The thread starts on
    first use, sleeps while nothing is due, and starts again after a fork (or
    if it ever died). A session is cut with the lock held, so once
    :meth:`disarm` returns, that session is either untouched or already cut:
    never cut later, when it may be back in the pool and lent to another read.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the thread does not survive a fork

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []  # (deadline, ticket), the earliest first
        self._armed: dict[int, _Session] = {}  # ticket -> session, until disarmed or cut
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, session: _Session, seconds: float) -> int:
        """Cut ``session`` in ``seconds`` unless the returned ticket is disarmed first."""
        with self._cond:
            ticket = next(self._tickets)
            self._armed[ticket] = session
            heapq.heappush(self._heap, (time.monotonic() + seconds, ticket))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="musicfs-sftp-watchdog",
                                                daemon=True)
                self._thread.start()
            elif self._heap[0][1] == ticket:
                self._cond.notify()  # due before what the thread sleeps towards
        return ticket

    def disarm(self, ticket: int) -> None:
        with self._cond:
            self._armed.pop(ticket, None)
            self._drop_disarmed()

    def _drop_disarmed(self) -> None:
        while self._heap and self._heap[0][1] not in self._armed:
            heapq.heappop(self._heap)

    def _run(self) -> None:
        with self._cond:
            while True:
                self._drop_disarmed()
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, ticket = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                session = self._armed.pop(ticket)
                log.debug("cutting an SFTP connection whose operation ran out of time")
                session.cut()


_WATCHDOG = _Watchdog()


class _Pool:
    """At most ``size`` sessions, opened on demand, reused while they work.

    A session that comes back broken (or finds its connection gone while idle)
    is closed and its slot freed, so the next caller opens a new connection.
    Connecting happens outside the lock, so one slow handshake does not hold
    up callers that find an idle session.
    """

    def __init__(self, connect, size: int, wait: float):
        self._connect, self.size, self._wait = connect, size, wait
        self._cond = threading.Condition()
        self._idle: list[_Session] = []
        self._open = 0  # idle + lent out + being opened
        self._generation = 0  # bumped by close(): older sessions are not taken back
        self.opened = 0  # connections made so far (for status and tests)

    def acquire(self, operation: str) -> _Session:
        deadline = time.monotonic() + self._wait
        stale: list[_Session] = []
        try:
            with self._cond:
                while True:
                    while self._idle:
                        session = self._idle.pop()
                        if session.alive():
                            return session
                        self._open -= 1
                        stale.append(session)
                    if self._open < self.size:
                        self._open += 1
                        generation = self._generation
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise OriginUnavailable(f"{operation}: all {self.size} connections stayed busy "
                                                f"for {self._wait:g} s")
                    self._cond.wait(remaining)
        finally:
            for session in stale:
                log.debug("dropping a pooled SFTP connection that has gone away")
                session.close()
        try:
            session = self._connect(operation, generation)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.opened += 1
        return session

    def release(self, session: _Session) -> None:
        with self._cond:
            keep = session.generation == self._generation and session.alive()
            if keep:
                self._idle.append(session)
            else:
                self._open -= 1
            self._cond.notify()
        if not keep:
            session.close()

    def close(self) -> None:
        """Close the idle sessions; sessions lent out now are closed when they come back."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._generation += 1
            self._cond.notify_all()
        for session in idle:
            session.close()


@register
class SftpOrigin(Origin):
    """Files under ``path`` on an SFTP server (default: the login directory)."""

    kind = "sftp"
    required = frozenset({"host", "user", "key_file"})
    optional = frozenset({"port", "path", "known_hosts", "pool_size", "timeout", "page_size"})

    def __init__(self, origin_id: str, *, host: str, user: str, key_file: str, port: int = DEFAULT_PORT,
                 path: str = "", known_hosts: str = DEFAULT_KNOWN_HOSTS, pool_size: int = DEFAULT_POOL_SIZE,
                 timeout: float = DEFAULT_TIMEOUT, page_size: int = DEFAULT_PAGE_SIZE):
        super().__init__(origin_id)
        self.host, self.user, self.port = host, user, port
        self.key_file = os.path.expanduser(key_file)
        self.known_hosts = os.path.expanduser(known_hosts)
        self.root = path.rstrip("/") or ("/" if path.startswith("/") else "")
        self.timeout, self.page_size = float(timeout), page_size
        self._pool = _Pool(self._connect, pool_size, self.timeout)

    @classmethod
    def from_options(cls, origin_id: str, options: dict[str, Any]) -> SftpOrigin:
        """Check the config's options (types and ranges) before anything is contacted."""
        def fail(message: str) -> ConfigError:
            return ConfigError(f"sftp origin {origin_id!r}: {message}")

        unknown = set(options) - cls.required - cls.optional
        if unknown:
            raise fail(f"unknown option(s) {', '.join(sorted(unknown))} "
                       f"(known: {', '.join(sorted(cls.required | cls.optional))})")
        for key in sorted(cls.required):
            if key not in options:
                raise fail(f"needs {key!r}")
        for key in ("host", "user", "key_file", "path", "known_hosts"):
            if key in options and not isinstance(options[key], str):
                raise fail(f"{key} must be a string, not {type(options[key]).__name__}")
        for key in ("host", "user", "key_file", "known_hosts"):
            if key in options and not options[key].strip():
                raise fail(f"{key} must not be empty")
        ranges = {"port": (1, 65535), "pool_size": (1, MAX_POOL_SIZE), "page_size": (1, None)}
        for key, (low, high) in ranges.items():
            if key in options:
                value = options[key]
                if not isinstance(value, int) or isinstance(value, bool):
                    raise fail(f"{key} must be an integer, not {type(value).__name__}")
                if value < low or (high is not None and value > high):
                    raise fail(f"{key} must be between {low} and {high}, not {value}" if high is not None
                               else f"{key} must be at least {low}, not {value}")
        check_seconds(options, "timeout", fail)
        return cls(origin_id, **options)

    @property
    def location(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.root if self.root.startswith("/") else f"/~/{self.root}".rstrip("/")
        return f"sftp://{self.user}@{host}:{self.port}{path}"

    @property
    def connections_opened(self) -> int:
        """How many SSH connections this origin has made (a growing number means they keep breaking)."""
        return self._pool.opened

    # -- the origin interface ------------------------------------------------------------------

    def stat(self, path: str) -> Entry:
        with self._session("stat", path) as sftp:
            attrs = sftp.stat(self._remote(path))
        return Entry(path, attrs.st_size or 0, _mtime_ns(attrs))

    def list_page(self, prefix: str = "", token: str | None = None) -> Page:
        """Files and folders directly under ``prefix``, ``page_size`` names at a time.

        SFTP cannot resume a listing, so each page lists the folder again and
        the token is an offset into the sorted names; a folder that changes
        between pages may shift entries across a page boundary.
        """
        start = _offset(token)
        base = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
        with self._session("list", prefix) as sftp:
            folder = self._remote(prefix)
            names = sorted(sftp.listdir_attr(folder), key=lambda a: a.filename)
            files, dirs = [], []
            for attrs in names[start:start + self.page_size]:
                name, mode = attrs.filename, attrs.st_mode or 0
                if stat_mode.S_ISLNK(mode):  # follow links to files, not to folders (no loops)
                    try:
                        target = sftp.stat(posixpath.join(folder, name))
                    except FileNotFoundError:
                        continue  # a dangling link
                    if not stat_mode.S_ISREG(target.st_mode or 0):
                        continue
                    attrs, mode = target, target.st_mode or 0
                if stat_mode.S_ISDIR(mode):
                    dirs.append(name)
                elif stat_mode.S_ISREG(mode):
                    files.append(Entry(f"{base}{name}", attrs.st_size or 0, _mtime_ns(attrs)))
        end = start + self.page_size
        return Page(files, dirs, str(end) if end < len(names) else None)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer at the end of the file, ``b""`` beyond it.

        Large ranges are read with pipelined requests (paramiko's ``readv``),
        so a 1 MiB read costs about one round trip rather than 32. At most
        ``PREFETCH_REQUESTS`` go out per ``readv`` and all at once: paramiko's
        sending thread waits (polling, forever) for room under a cap, even
        after the connection died, so the cap is applied by splitting instead.

        Once it has a session, the read has ``timeout`` seconds in all; past
        them :class:`_Watchdog` cuts its connection and the read raises
        :class:`OriginUnavailable` (too slow). Any failure leaves the session
        broken, so it is closed rather than reused half-read.
        """
        if offset < 0 or size < 0:
            raise ValueError(f"bad range: offset {offset}, size {size}")
        with (self._session("read", path, budget=self.timeout) as sftp,
              sftp.open(self._remote(path), "rb") as remote):
            length = max(0, min(size, (remote.stat().st_size or 0) - offset))
            if length == 0:
                return b""
            parts = []
            if length > remote.MAX_REQUEST_SIZE:
                step = remote.MAX_REQUEST_SIZE * PREFETCH_REQUESTS
                for start in range(offset, offset + length, step):
                    parts += remote.readv([(start, min(step, offset + length - start))])
            else:
                remote.seek(offset)
                parts = [remote.read(length)]
            got = sum(map(len, parts))
            while got < length:  # a server may answer short; ask for the rest until EOF
                remote.seek(offset + got)
                more = remote.read(length - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
        return b"".join(parts)

    def health(self) -> None:
        """A stat of the root folder: reaches the server, logs in (if no session is open) and checks the path."""
        with self._session("health check", "") as sftp:
            attrs = sftp.stat(self.root or ".")
        if not stat_mode.S_ISDIR(attrs.st_mode or 0):
            raise OriginUnavailable(f"{self._where()}: {self.root!r} is not a folder")

    def statistics(self) -> dict:
        return {"connections_opened": self.connections_opened}

    def close(self) -> None:
        """Close the pooled connections (those in use close when their call ends); a later call reconnects."""
        self._pool.close()

    # -- connections and errors ----------------------------------------------------------------

    def _where(self) -> str:
        return f"sftp origin {self.id} ({self.user}@{self.host}:{self.port})"

    def _remote(self, path: str) -> str:
        """The server-side path of ``path``; refuses '.' and '..' parts that could leave the root."""
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"path escapes the origin: {path!r}")
        rel = "/".join(parts)
        if not self.root:
            return rel or "."
        if not rel:
            return self.root
        return f"{self.root.rstrip('/')}/{rel}"

    @contextlib.contextmanager
    def _session(self, operation: str, path: str, budget: float | None = None
                 ) -> Iterator[paramiko.SFTPClient]:
        """A pooled SFTP session for one operation, with the server's answers mapped to our errors.

        ``path`` is relative to the root; ``""`` is the root itself, whose absence
        means the origin is unavailable, not that a file is missing. With a
        ``budget`` (seconds), the watchdog cuts the session's connection when
        the operation takes longer, and the error says so.
        """
        session = self._pool.acquire(operation)
        ticket = None
        try:
            if budget is not None:
                ticket = _WATCHDOG.arm(session, budget)
            yield session.sftp
        except OSError as exc:
            if session.cut_off:
                raise self._too_slow(operation, path, budget) from None
            if not _is_reply(exc):
                session.broken = True
            elif exc.errno == errno.ENOENT:
                if not path or self._root_missing(session):
                    raise OriginUnavailable(f"{self._where()}: {operation}: the root folder "
                                            f"{self.root or '(login directory)'!r} is missing") from None
                raise NotFound(path) from None
            raise self._unavailable(operation, path, exc) from exc
        except _CONNECTION_ERRORS as exc:
            session.broken = True
            if session.cut_off:
                raise self._too_slow(operation, path, budget) from None
            raise self._unavailable(operation, path, exc) from exc
        finally:
            if ticket is not None:
                _WATCHDOG.disarm(ticket)
            self._pool.release(session)

    def _root_missing(self, session: _Session) -> bool:
        """Whether the whole root is gone (the share is offline), rather than one file."""
        if not self.root:
            return False
        try:
            session.sftp.stat(self.root)
        except OSError as exc:
            session.broken = not _is_reply(exc)
            return isinstance(exc, FileNotFoundError)
        except _CONNECTION_ERRORS:
            session.broken = True
        return False

    def _too_slow(self, operation: str, path: str, budget: float | None) -> OriginUnavailable:
        what = f"{operation} {path!r}" if path else operation
        return OriginUnavailable(f"{self._where()}: {what} took longer than {budget:g} s (too slow); "
                                 f"gave up")

    def _unavailable(self, operation: str, path: str, exc: BaseException) -> OriginUnavailable:
        if path:
            operation = f"{operation} {path!r}"
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {self.timeout:g} s"
        return OriginUnavailable(f"{self._where()}: {operation} failed: {type(exc).__name__}: {detail}")

    def _load_key(self, operation: str) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(self.key_file)
        except OSError as exc:
            raise OriginUnavailable(f"{self._where()}: {operation}: cannot read key file {self.key_file}: "
                                    f"{exc.strerror or type(exc).__name__}") from None
        except (ValueError, TypeError, paramiko.SSHException, paramiko.UnknownKeyType):
            # The loaders' messages are not shown: they are about the file's contents.
            raise OriginUnavailable(f"{self._where()}: {operation}: key file {self.key_file} is not an "
                                    f"unencrypted ed25519, ECDSA or RSA private key (passphrase-protected "
                                    f"keys are not supported)") from None

    def _connect(self, operation: str, generation: int) -> _Session:
        """Open one SSH connection and an SFTP session on it, checking the host key strictly."""
        where = f"{self._where()}: {operation}"
        pkey = self._load_key(operation)
        client = paramiko.SSHClient()
        try:
            client.get_host_keys().load(self.known_hosts)  # not load_host_keys: never written back
        except FileNotFoundError:
            raise OriginUnavailable(f"{where}: known_hosts file {self.known_hosts} does not exist, so the "
                                    f"server's host key cannot be checked") from None
        except OSError as exc:
            raise OriginUnavailable(f"{where}: cannot read known_hosts file {self.known_hosts}: "
                                    f"{exc.strerror}") from None
        client.set_missing_host_key_policy(_RejectUnknown())
        ok, started = False, time.monotonic()
        try:
            client.connect(self.host, self.port, username=self.user, pkey=pkey, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout,
                           channel_timeout=self.timeout, allow_agent=False, look_for_keys=False)
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.timeout)
            client.get_transport().set_keepalive(KEEPALIVE)
            ok = True
        except _UnknownHostKey as exc:
            raise OriginUnavailable(
                f"{where}: refusing to connect: the host key of {exc.hostname} ({exc.key.get_name()} "
                f"{exc.key.fingerprint}) is not in known_hosts file {self.known_hosts}; check the "
                f"fingerprint with the server's admin, then add it (ssh-keyscan -p {self.port} {self.host})"
            ) from None
        except paramiko.BadHostKeyException as exc:
            raise OriginUnavailable(
                f"{where}: refusing to connect: the host key of {exc.hostname} has CHANGED: the server offers "
                f"{exc.key.get_name()} {exc.key.fingerprint}, known_hosts file {self.known_hosts} has "
                f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint} (a reinstalled server, or "
                f"someone in between)") from None
        except paramiko.AuthenticationException:
            raise OriginUnavailable(f"{where}: the server refused key file {self.key_file} for user "
                                    f"{self.user!r}") from None
        except (OSError, *_CONNECTION_ERRORS) as exc:
            # A server that accepts TCP but never speaks surfaces as one of several
            # paramiko errors, depending on which of its waits ran out first.
            if isinstance(exc, TimeoutError) or time.monotonic() - started >= self.timeout:
                raise OriginUnavailable(f"{where}: no answer within {self.timeout:g} s") from None
            raise OriginUnavailable(f"{where}: cannot connect: {type(exc).__name__}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
        finally:
            if not ok:
                client.close()
        log.debug("%s: opened an SFTP connection", self._where())
        return _Session(client, sftp, generation)


def _is_reply(exc: OSError) -> bool:
    """Whether ``exc`` is the server's answer (the session is fine) rather than trouble on the wire.

    paramiko raises SFTP status replies as OSError(ENOENT) (a FileNotFoundError),
    OSError(EACCES) (a PermissionError) or a plain OSError without errno; resets,
    broken pipes and timeouts are other subclasses. A closed channel also raises
    a plain OSError, but :meth:`_Session.alive` catches that on release.
    """
    if isinstance(exc, FileNotFoundError | PermissionError):
        return True
    return type(exc) is OSError and exc.errno is None


def _mtime_ns(attrs: paramiko.SFTPAttributes) -> int:
    """SFTP (version 3) carries whole seconds only."""
    return int(attrs.st_mtime or 0) * 1_000_000_000


def _offset(token: str | None) -> int:
    if token is None:
        return 0
    if not token.isdigit():
        raise ValueError(f"not a page token of the sftp origin: {token!r}")
    return int(token)
