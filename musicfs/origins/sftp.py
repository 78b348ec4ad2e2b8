"""The SFTP origin: a folder on a server reached over SSH (OpenSSH or any SFTP server).

Choices, and why:

* Key files only, no passwords and no agent: a mount runs unattended, and
  what it authenticates with should be one explicit file in the config.
* Strict host key checking: nobody is there to answer "trust this host?",
  and accepting an unknown or changed key would let whoever sits on the path
  serve the library. Such a key is refused with a message saying what to check.
* A few connections, each carrying many requests at once
  (:mod:`musicfs.origins.sftpwire`): FUSE reads arrive in parallel, servers cap
  sessions per client (``MaxStartups``, ``MaxSessions``), and a read needs two
  round trips (open, then all its pieces at once), so a hundred reads started
  together finish in about the time of one instead of queueing for a session.
  A new connection is opened only while every open one is busy with
  ``SHARE`` calls; at most ``pool_size`` are kept.
* No retries here: :mod:`musicfs.origins.retry` retries with backoff. A
  connection that broke is dropped, and the next call opens a fresh one.
* A call has ``timeout`` seconds as a whole, not only per wait for a reply, so
  a transfer that trickles cannot hold a worker thread for minutes after the
  reader has given up on it. A connection whose call ran out of time is
  closed rather than trusted again: a slow link would otherwise go on
  delivering the abandoned answer ahead of every new one. The calls sharing
  it fail at once and are retried on a new connection.

* Nothing outside ``path`` is served, though the server would follow any link
  for us (an SFTP login usually sees far more than the library: the home
  folder, ``~/.ssh``, ``/etc``). Every read and stat asks the server where the
  path really leads (``SSH_FXP_REALPATH``), sent together with the request it
  guards so it costs no extra round trip, and refuses an answer outside the
  root's own real path. Listings show a link only when it leads to a file
  inside the root, never links to folders (no loops), and never names a
  server could not mean (``.``, ``..``, anything holding ``/`` or NUL).

Writes (:meth:`SftpOrigin.put`, in :mod:`musicfs.origins.sftpwrite`): a hidden
temporary file beside the target, renamed over it with OpenSSH's
``posix-rename@openssh.com``, on a pooled connection like any call. A put that
fails removes its temporary file, on a fresh connection if its own broke.

Errors: a missing file is :class:`~musicfs.errors.NotFound`; everything else
is :class:`~musicfs.errors.OriginUnavailable` with a message naming the
server and the operation (and never holding key material).
"""

from __future__ import annotations

import logging
import os
import stat as stat_mode
import time
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

import paramiko

from ..errors import ConfigError, NotFound, OriginUnavailable
from .base import Entry, Origin, Page, check_seconds, register
from .resolve import NameCheck, needs_lookup
from .sftppool import Connection, ConnectionPool
from .sftpwire import NO_SUCH_FILE, PERMISSION_DENIED, Attrs, ConnectionLost, SftpChannel, StatusError
from .sftpwire import within as _within
from .sftpwrite import Upload, remove_file, remove_if_there
from .writes import file_name, reading

log = logging.getLogger(__name__)

__all__ = ["SftpOrigin"]

DEFAULT_PORT = 22
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_POOL_SIZE = 4
DEFAULT_TIMEOUT = 10.0  # seconds: connect, handshake, auth, and each call as a whole
DEFAULT_PAGE_SIZE = 1000
MAX_POOL_SIZE = 64
# How much the server may send before we acknowledge it: a connection carries at most this much
# per round trip. 64 MiB is 160 MB/s at 400 ms, 640 MB/s at 100 ms; 16 MiB made a hundred 192 KiB
# reads started together at +400 ms (18.75 MiB) wait one round trip more than a single read
# (1.55x its time against 1.13x now, ASYNC-2). The server sends only what calls asked for, and
# the reader thread takes it as it comes, so the window is not memory held.
WINDOW = 64 * 1024 * 1024
MAX_PACKET = 256 * 1024  # SSH packets this large carry a 64 KiB (or bigger) read answer whole
KEEPALIVE = 30  # seconds: keeps idle pooled connections through NAT and firewalls

# Failures of the SSH layer while connecting (a reset or timeout is an OSError subclass).
_CONNECT_ERRORS = (paramiko.SSHException, EOFError, ConnectionLost)
# Offered first, as OpenSSH itself ranks them: an AEAD cipher seals each packet in one pass, where
# paramiko's default (AES-CTR with HMAC-SHA2) also runs Python's hmac for every packet. Measured
# on a hundred cold reads through the mount: ~15% less daemon CPU. Servers without them agree on
# the rest of paramiko's list, unchanged.
AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

T = TypeVar("T")



def _transport(sock, **options) -> paramiko.Transport:
    """paramiko's transport, with the AEAD ciphers it knows offered ahead of its others."""
    transport = paramiko.Transport(sock, **options)
    security = transport.get_security_options()
    offered = security.ciphers
    security.ciphers = (*[c for c in AEAD_CIPHERS if c in offered], *[c for c in offered if c not in AEAD_CIPHERS])
    return transport


def _plausible(name: str) -> bool:
    """A name a real folder can hold: what else a server sends must not become a path."""
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey):
        super().__init__(f"host key of {hostname} is not known")
        self.hostname, self.key = hostname, key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Like paramiko's RejectPolicy, but keeps the offered key so the error can show its fingerprint."""

    def missing_host_key(self, client, hostname, key):
        raise _UnknownHostKey(hostname, key)


@register
class SftpOrigin(Origin):
    """Files under ``path`` on an SFTP server (default: the login directory)."""

    kind = "sftp"
    required = frozenset({"host", "user", "key_file"})
    optional = frozenset({"port", "path", "known_hosts", "pool_size", "timeout", "page_size"})
    writable = True

    def __init__(self, origin_id: str, *, host: str, user: str, key_file: str, port: int = DEFAULT_PORT,
                 path: str = "", known_hosts: str = DEFAULT_KNOWN_HOSTS, pool_size: int = DEFAULT_POOL_SIZE,
                 timeout: float = DEFAULT_TIMEOUT, page_size: int = DEFAULT_PAGE_SIZE):
        super().__init__(origin_id)
        self.host, self.user, self.port = host, user, port
        self.key_file = os.path.expanduser(key_file)
        self.known_hosts = os.path.expanduser(known_hosts)
        self.root = path.rstrip("/") or ("/" if path.startswith("/") else "")
        self.timeout, self.page_size = float(timeout), page_size
        # a host name that does not resolve fails a connection within seconds, not the resolver's minutes
        self._names = NameCheck(host, port, f"sftp origin {origin_id!r}") if needs_lookup(host) else None
        self._pool = ConnectionPool(self._connect, pool_size, self.timeout)

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
        remote = self._remote(path)

        def stat(sftp: SftpChannel, deadline: float):
            inside = self._check(sftp, remote)
            attrs = sftp.stat(remote, deadline)
            inside(deadline, path)
            return attrs

        attrs = self._run("stat", path, stat)
        return Entry(path, attrs.size or 0, _mtime_ns(attrs))

    def list_page(self, prefix: str = "", token: str | None = None) -> Page:
        """Files and folders directly under ``prefix``, ``page_size`` names at a time.

        SFTP cannot resume a listing, so each page lists the folder again and
        the token is an offset into the sorted names; a folder that changes
        between pages may shift entries across a page boundary.
        """
        start = _offset(token)
        base = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
        folder = self._remote(prefix)

        def page(sftp: SftpChannel, deadline: float) -> Page:
            listed = sftp.listdir(folder, deadline)
            odd = [name for name, _attrs in listed if not _plausible(name)]
            if odd:
                log.warning("%s: the server listed names no folder can hold in %r; ignored: %s",
                            self._where(), folder, ", ".join(repr(name) for name in odd[:5]))
            entries = sorted((name, attrs) for name, attrs in listed if _plausible(name))
            shown = entries[start:start + self.page_size]
            root = sftp.ask_realpath(self.root or ".") if sftp.root is None else None
            links = {name: sftp.ask_realpath(f"{folder.rstrip('/')}/{name}")  # all in one round trip
                     for name, attrs in shown if stat_mode.S_ISLNK(attrs.mode or 0)}
            if root is not None:
                sftp.root = sftp.realpath(root, deadline)
            files, dirs = [], []
            for name, attrs in shown:
                mode = attrs.mode or 0
                if stat_mode.S_ISLNK(mode):  # links to files inside the root only; never to folders
                    link = f"{folder.rstrip('/')}/{name}"
                    try:
                        target = sftp.realpath(links[name], deadline)
                        if not _within(target, sftp.root):
                            log.debug("%s: %s not listed: it leads outside the root (to %s)",
                                      self._where(), link, target)
                            continue
                        attrs = sftp.stat(target, deadline)
                    except StatusError as exc:  # dangling, a loop, or not ours to see
                        log.debug("%s: %s not listed: %s", self._where(), link, exc)
                        continue
                    if not stat_mode.S_ISREG(attrs.mode or 0):
                        continue
                    mode = attrs.mode or 0
                if stat_mode.S_ISDIR(mode):
                    dirs.append(name)
                elif stat_mode.S_ISREG(mode):
                    files.append(Entry(f"{base}{name}", attrs.size or 0, _mtime_ns(attrs)))
            end = start + self.page_size
            return Page(files, dirs, str(end) if end < len(entries) else None)

        return self._run("list", prefix, page)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer at the end of the file, ``b""`` beyond it.

        Two round trips whatever the size: open, then every piece of the range
        asked for at once (see :meth:`SftpChannel.read`); the handle is closed
        without waiting. The whole call has ``timeout`` seconds.
        """
        if offset < 0 or size < 0:
            raise ValueError(f"bad range: offset {offset}, size {size}")
        remote = self._remote(path)

        def read(sftp: SftpChannel, deadline: float) -> bytes:
            inside = self._check(sftp, remote)
            handle = sftp.open(remote, deadline)
            try:
                inside(deadline, path)
                return sftp.read(handle, offset, size, deadline) if size else b""
            finally:
                sftp.close_handle(handle)

        return self._run("read", path, read)

    def health(self) -> None:
        """A stat of the root folder: reaches the server, logs in (if no connection is open) and checks the path."""
        attrs = self._run("health check", "", lambda sftp, deadline: sftp.stat(self.root or ".", deadline))
        if not stat_mode.S_ISDIR(attrs.mode or 0):
            raise OriginUnavailable(f"{self._where()}: {self.root!r} is not a folder")

    def put(self, path: str, source: BinaryIO) -> None:
        """Write ``source`` to a hidden file beside ``path`` and rename it over ``path``
        (:mod:`musicfs.origins.sftpwrite`); see :meth:`Origin.put` for the guarantees."""
        target = self._remote(path)
        file_name(path)
        parts = [part for part in path.split("/") if part][:-1]
        folders = [self._remote("/".join(parts[:depth])) for depth in range(len(parts) + 1)]
        upload = Upload(folders, target, self.timeout)
        with reading(source, f"{self._where()}: put {path!r}") as taken:
            try:
                self._run("put", path, lambda sftp, _deadline: upload.run(sftp, taken), writing=True)
            except BaseException:
                if upload.started:
                    self._remove_leftover(upload.temp)
                raise

    def remove(self, path: str) -> None:
        """Unlink ``path`` (``SSH_FXP_REMOVE``) once its folder is found inside the root; a file or
        folder that is not there is no error."""
        target = self._remote(path)
        file_name(path)
        self._run("remove", path, lambda sftp, deadline: remove_file(sftp, self.root or ".", target, deadline),
                  writing=True)

    def _remove_leftover(self, temp: str) -> None:
        """Remove the temporary file of a put that failed, on a connection that works (a new one if
        the put's broke); one that cannot be removed now is logged (its name starts with '.')."""
        try:
            self._run("remove", temp, lambda sftp, deadline: remove_if_there(sftp, temp, deadline),
                      writing=True)
        except OriginUnavailable as exc:
            log.warning("%s: a failed put left %s behind: %s", self._where(), temp, exc)

    def statistics(self) -> dict:
        return {"connections_opened": self.connections_opened}

    def close(self) -> None:
        """Close the connections (calls under way on them fail); a later call reconnects."""
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

    def _check(self, sftp: SftpChannel, remote: str) -> Callable[[float, str], None]:
        """Ask now where ``remote`` (and, once per session, the root) really leads; the returned
        ``inside(deadline, path)`` waits for the answers and raises NotFound if it leads out of the root.

        The questions go out ahead of the request they guard and are answered
        with it: the check costs no round trip of its own.
        """
        root = sftp.ask_realpath(self.root or ".") if sftp.root is None else None
        question = sftp.ask_realpath(remote)

        def inside(deadline: float, path: str) -> None:
            if root is not None:
                sftp.root = sftp.realpath(root, deadline)
            target = sftp.realpath(question, deadline)
            if not _within(target, sftp.root):
                log.warning("%s: not followed: %r leads outside the root (to %s)", self._where(), path, target)
                raise NotFound(path)

        return inside

    def _run(self, operation: str, path: str, work: Callable[[SftpChannel, float], T], *,
             writing: bool = False) -> T:
        """``work(sftp, deadline)`` on a pooled connection, with the server's answers mapped to our errors.

        ``path`` is relative to the root; ``""`` is the root itself, whose absence
        means the origin is unavailable, not that a file is missing. The call has
        ``timeout`` seconds once it has a connection. ``writing``: a write, for which
        a missing file or folder is a failure, not a missing file, and which has no
        deadline as a whole (its waits have ``timeout`` each).
        """
        connection = self._pool.acquire(operation)
        started = time.monotonic()
        try:
            return work(connection.sftp, started + self.timeout)
        except StatusError as exc:
            if exc.code == NO_SUCH_FILE:
                if not path or self._root_missing(connection):
                    raise OriginUnavailable(f"{self._where()}: {operation}: the root folder "
                                            f"{self.root or '(login directory)'!r} is missing") from None
                if not writing:
                    raise NotFound(path) from None
            if writing and exc.code == PERMISSION_DENIED:
                raise self._unavailable(operation, path, f"permission denied: the server does not let "
                                        f"{self.user!r} write there ({exc})") from None
            raise self._unavailable(operation, path, f"the server answered: {exc}") from None
        except TimeoutError:
            self._pool.discard(connection)
            what = f"{operation} {path!r}" if path else operation
            if writing or connection.sftp.last_heard < started:
                raise OriginUnavailable(f"{self._where()}: {what}: no answer within {self.timeout:g} s") from None
            raise OriginUnavailable(f"{self._where()}: {what} took longer than {self.timeout:g} s (too slow); "
                                    f"gave up") from None
        except (ConnectionLost, OSError, EOFError, paramiko.SSHException) as exc:
            self._pool.discard(connection)
            raise self._unavailable(operation, path, f"the connection broke ({type(exc).__name__}: {exc})"
                                    ) from None
        finally:
            self._pool.release(connection)

    def _root_missing(self, connection: Connection) -> bool:
        """Whether the whole root is gone (the share is offline), rather than one file."""
        if not self.root:
            return False
        try:
            connection.sftp.stat(self.root, time.monotonic() + self.timeout)
        except StatusError as exc:
            return exc.code == NO_SUCH_FILE
        except (TimeoutError, ConnectionLost):
            return False
        return False

    def _unavailable(self, operation: str, path: str, detail: str) -> OriginUnavailable:
        if path:
            operation = f"{operation} {path!r}"
        return OriginUnavailable(f"{self._where()}: {operation} failed: {detail}")

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

    def _connect(self, operation: str, generation: int) -> Connection:
        """Open one SSH connection and an SFTP session on it, checking the host key strictly."""
        where = f"{self._where()}: {operation}"
        if self._names is not None:
            self._names.check()
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
                           channel_timeout=self.timeout, allow_agent=False, look_for_keys=False,
                           transport_factory=_transport)
            transport = client.get_transport()
            channel = transport.open_session(window_size=WINDOW, max_packet_size=MAX_PACKET,
                                             timeout=self.timeout)
            channel.invoke_subsystem("sftp")
            sftp = SftpChannel(channel, self.timeout, name=f"sftp-{self.id}")
            transport.set_keepalive(KEEPALIVE)
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
        except (OSError, *_CONNECT_ERRORS) as exc:
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
        return Connection(client, sftp, generation)


def _mtime_ns(attrs: Attrs) -> int:
    """SFTP (version 3) carries whole seconds only."""
    return (attrs.mtime or 0) * 1_000_000_000


def _offset(token: str | None) -> int:
    if token is None:
        return 0
    if not token.isdigit():
        raise ValueError(f"not a page token of the sftp origin: {token!r}")
    return int(token)
