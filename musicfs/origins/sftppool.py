"""A pool of SSH connections for the SFTP origin, each carrying many calls at once.

Split from :mod:`musicfs.origins.sftp`, which opens the connections (host
keys, authentication) and runs calls on what this pool lends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko

from ..errors import OriginUnavailable
from .sftpwire import SftpChannel

log = logging.getLogger(__name__)

SHARE = 16  # calls one connection carries before another is opened (while the pool has room)
GROW_PAUSE = 30.0  # seconds without opening more connections after a server refused one


@dataclass(eq=False)
class Connection:
    """One SSH connection and the SFTP session on it, shared by the calls that ``users`` counts."""

    client: paramiko.SSHClient
    sftp: SftpChannel
    generation: int
    users: int = 0

    def usable(self) -> bool:
        transport = self.client.get_transport()
        return self.sftp.alive and transport is not None and transport.is_active()

    def close(self) -> None:
        self.sftp.close()
        self.client.close()


class ConnectionPool:
    """Up to ``size`` connections, opened on demand, each lent to many calls at once.

    A call takes the connection with the fewest calls on it. When even that
    one carries ``share`` calls and the pool has room, another connection is
    opened in the background: the call does not wait a handshake (several
    round trips) for it, and later calls spread onto it once it is up. Only
    with no connection open at all does a caller connect itself, while the
    others wait for it. A failed background connect (a server capping its
    sessions, say) holds off growing for ``GROW_PAUSE`` seconds. Broken
    connections are dropped as they are found. ``close`` closes them all;
    calls under way on them fail.
    """

    def __init__(self, connect: Callable[[str, int], Connection], size: int, wait: float,
                 share: int = SHARE):
        self._connect, self.size, self._wait, self._share = connect, size, wait, share
        self._cond = threading.Condition()
        self._open: list[Connection] = []
        self._opening = 0
        self._grow_after = 0.0  # monotonic time before which no connection is added in the background
        self._generation = 0  # bumped by close(): connections of an older one are not taken back
        self.opened = 0  # connections made so far (for status and tests)

    @property
    def connections(self) -> list[Connection]:
        with self._cond:
            return list(self._open)

    def acquire(self, operation: str) -> Connection:
        deadline = time.monotonic() + self._wait
        broken: list[Connection] = []
        try:
            with self._cond:
                while True:
                    usable = [c for c in self._open if c.usable()]
                    broken += [c for c in self._open if c not in usable]
                    self._open = usable
                    if self._open:
                        least = min(self._open, key=lambda c: c.users)
                        if least.users >= self._share:
                            self._grow()
                        least.users += 1
                        return least
                    if self._opening == 0:
                        self._opening += 1
                        generation = self._generation
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise OriginUnavailable(f"{operation}: no connection could be made ready within "
                                                f"{self._wait:g} s")
                    self._cond.wait(remaining)
        finally:
            for connection in broken:
                log.debug("dropping an SFTP connection that has gone away")
                connection.close()
        return self._connect_now(operation, generation)

    def _connect_now(self, operation: str, generation: int) -> Connection:
        """Connect in the caller's thread (nothing is open yet); a failure is the caller's error."""
        try:
            connection = self._connect(operation, generation)
        except BaseException:
            self._settle(None)
            raise
        self._settle(connection, users=1)
        return connection

    def _grow(self) -> None:
        """Open one more connection in the background, if there is room (called with the lock held)."""
        if len(self._open) + self._opening >= self.size or time.monotonic() < self._grow_after:
            return
        self._opening += 1
        threading.Thread(target=self._connect_in_background, args=(self._generation,),
                         name="musicfs-sftp-connect", daemon=True).start()

    def _connect_in_background(self, generation: int) -> None:
        connection = None
        try:
            connection = self._connect("connect", generation)
        except OriginUnavailable as exc:
            log.info("could not open another SFTP connection (going on with those open): %s", exc)
            with self._cond:
                self._grow_after = time.monotonic() + GROW_PAUSE
        finally:
            self._settle(connection, users=0)

    def _settle(self, connection: Connection | None, users: int = 0) -> None:
        """A connect ended: a new connection joins the pool with ``users`` calls, unless the pool was closed since."""
        with self._cond:
            self._opening -= 1
            current = connection is not None and connection.generation == self._generation
            if connection is not None:
                self.opened += 1
                connection.users = users
                if current:
                    self._open.append(connection)
            self._cond.notify_all()
        if connection is not None and not current and users == 0:
            connection.close()

    def release(self, connection: Connection) -> None:
        with self._cond:
            connection.users -= 1
            keep = connection.generation == self._generation and connection.usable()
            if not keep and connection in self._open:
                self._open.remove(connection)
            self._cond.notify_all()
        if not keep and connection.users <= 0:
            connection.close()

    def discard(self, connection: Connection) -> None:
        """Close a connection that is not to be trusted again (calls on it fail at once)."""
        with self._cond:
            if connection in self._open:
                self._open.remove(connection)
            self._cond.notify_all()
        connection.close()

    def close(self) -> None:
        """Close every connection; calls under way on them fail, later calls open new ones."""
        with self._cond:
            connections, self._open = self._open, []
            self._generation += 1
            self._cond.notify_all()
        for connection in connections:
            connection.close()
