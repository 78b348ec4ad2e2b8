"""The faults a proxied connection can suffer, one direction at a time, as Toxiproxy defines them.

A toxic sits on one stream of a proxy: ``upstream`` (client -> server) or
``downstream`` (server -> client). Every chunk read from one side goes through
the chain of that stream's toxics, in the order they were added, and what comes
out is written to the other side. Each toxic's ``pipe`` gets a chunk and an
``emit`` callable (the rest of the chain); it may delay, split, drop or end the
connection. The chain is looked up again for every chunk, so toxics added or
removed take effect on connections already open, as they do in Toxiproxy: a
latency injected into a long-lived SFTP session must slow that session.

Attributes and their units follow Toxiproxy's JSON exactly (latency in ms,
rate in KB/s of 1000 bytes, slicer delay in microseconds) so that the same
test drives this proxy or a real ``toxiproxy-server`` unchanged.

Most toxics act on data; ``slow_close`` acts on the end of a stream: when
its source closes, the connection is closed only ``delay`` ms later
(:meth:`Toxic.closing`, awaited by the proxy before it closes anything).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import trio

STREAMS = ("upstream", "downstream")


@dataclass
class Chunk:
    data: bytes
    read_at: float  # trio.current_time() when it was read from the socket


Emit = Callable[[Chunk], Awaitable[None]]


class Link(Protocol):
    """What a toxic may do to the connection it sits on."""

    async def abort(self, reset: bool = False) -> None:
        """Close both sides (with a TCP RST if ``reset``); does not return."""


class ToxicError(ValueError):
    """A toxic the API must refuse (400)."""


class State:
    """What one toxic remembers on one connection (its counters, its clock)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled  # toxicity is drawn once per connection, as Toxiproxy does
        self.started = trio.current_time()
        self.sent = 0
        self.clock = 0.0


class Toxic:
    type: ClassVar[str]
    fields: ClassVar[dict[str, int]]  # attribute -> default
    _ids = itertools.count(1)

    def __init__(self, name: str, stream: str, toxicity: float, attributes: dict[str, Any]):
        self.uid = next(self._ids)  # a new toxic of the same name is a new toxic: fresh state
        self.name = name
        self.stream = stream
        self.toxicity = toxicity
        self.attributes = dict(self.fields)
        self.update(toxicity, attributes)

    def update(self, toxicity: float | None, attributes: dict[str, Any] | None) -> None:
        if toxicity is not None:
            if isinstance(toxicity, bool) or not isinstance(toxicity, int | float) or not 0 <= toxicity <= 1:
                raise ToxicError(f"toxicity must be a number in [0, 1], not {toxicity!r}")
            self.toxicity = float(toxicity)
        for key, value in (attributes or {}).items():
            if key not in self.fields:
                continue  # Toxiproxy ignores attributes a toxic does not have
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ToxicError(f"{self.type}.{key} must be a number, not {value!r}")
            self.attributes[key] = int(value)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "stream": self.stream,
                "toxicity": self.toxicity, "attributes": dict(self.attributes)}

    def new_state(self) -> State:
        return State(enabled=random.random() < self.toxicity)

    async def pipe(self, link: Link, state: State, chunk: Chunk, emit: Emit) -> None:
        raise NotImplementedError

    async def closing(self, state: State) -> None:
        """The stream's source has closed: return when the connection may be closed (now, by default)."""
        return None


class Latency(Toxic):
    """Every chunk leaves ``latency`` ms (+/- up to ``jitter`` ms) after it arrived.

    Measured from the moment the chunk was read, so a stream of chunks is
    delayed, not slowed down to one chunk per latency.
    """

    type = "latency"
    fields = {"latency": 0, "jitter": 0}

    async def pipe(self, link, state, chunk, emit):
        delay = self.attributes["latency"]
        jitter = self.attributes["jitter"]
        if jitter > 0:
            delay += random.uniform(-jitter, jitter)
        await trio.sleep_until(chunk.read_at + max(0.0, delay) / 1000)
        await emit(chunk)


class Bandwidth(Toxic):
    """At most ``rate`` KB/s: data goes out in pieces of 100 ms worth, each when its time has come."""

    type = "bandwidth"
    fields = {"rate": 0}

    async def pipe(self, link, state, chunk, emit):
        rate = self.attributes["rate"] * 1000  # bytes per second
        if rate <= 0:
            await emit(chunk)
            return
        piece = max(1, rate // 10)
        state.clock = max(state.clock, trio.current_time())  # an idle link does not bank credit
        for start in range(0, len(chunk.data), piece):
            data = chunk.data[start:start + piece]
            state.clock += len(data) / rate
            await trio.sleep_until(state.clock)
            await emit(Chunk(data, chunk.read_at))


class Timeout(Toxic):
    """Nothing gets through; the connection is closed after ``timeout`` ms (0: held open forever).

    Data is dropped, as in Toxiproxy. The closing is done by the connection's
    watcher (it must happen with no data flowing too), and removing the toxic
    closes the connections it held, since what they sent is lost.
    """

    type = "timeout"
    fields = {"timeout": 0}

    async def pipe(self, link, state, chunk, emit):
        return None


class ResetPeer(Toxic):
    """On the first data, wait ``timeout`` ms and reset the connection (RST, ECONNRESET for the peer)."""

    type = "reset_peer"
    fields = {"timeout": 0}

    async def pipe(self, link, state, chunk, emit):
        await trio.sleep(self.attributes["timeout"] / 1000)
        await link.abort(reset=True)


class LimitData(Toxic):
    """Let ``bytes`` bytes through, then close the connection (a transfer cut short)."""

    type = "limit_data"
    fields = {"bytes": 0}

    async def pipe(self, link, state, chunk, emit):
        limit = self.attributes["bytes"]
        data = chunk.data[:max(0, limit - state.sent)]
        if data:
            await emit(Chunk(data, chunk.read_at))
            state.sent += len(data)
        if state.sent >= limit:
            await link.abort()


class Slicer(Toxic):
    """Split data into pieces of about ``average_size`` (+/- ``size_variation``) bytes, ``delay`` µs apart.

    Real networks hand a reader partial messages; this makes every read short.
    """

    type = "slicer"
    fields = {"average_size": 0, "size_variation": 0, "delay": 0}

    def cuts(self, size: int) -> list[int]:
        """Piece boundaries [0, ..., size], split around the middle as Toxiproxy does."""
        average = max(1, self.attributes["average_size"])
        variation = max(0, min(self.attributes["size_variation"], average - 1))
        points, pending = [], [(0, size)]
        while pending:
            start, end = pending.pop()
            if end - start - average <= variation:
                points.append(end)
                continue
            middle = start + (end - start) // 2 + random.randint(-variation, variation)
            middle = min(max(middle, start + 1), end - 1)
            pending += [(middle, end), (start, middle)]  # left half first
        return [0, *points]

    async def pipe(self, link, state, chunk, emit):
        cuts = self.cuts(len(chunk.data))
        for i, (start, end) in enumerate(itertools.pairwise(cuts)):
            if i:
                await trio.sleep(self.attributes["delay"] / 1_000_000)
            await emit(Chunk(chunk.data[start:end], chunk.read_at))


class SlowClose(Toxic):
    """Data passes untouched; when the source closes, the connection is closed ``delay`` ms later.

    A server that finishes an answer and closes (``Connection: close``, as
    moto and many HTTP/1.0 peers do) is seen by the client to close late: a
    client that waits for the close instead of reading by length stalls, and
    one that keeps such connections around runs out of them.
    """

    type = "slow_close"
    fields = {"delay": 0}

    async def pipe(self, link, state, chunk, emit):
        await emit(chunk)

    async def closing(self, state):
        await trio.sleep(self.attributes["delay"] / 1000)


KINDS: dict[str, type[Toxic]] = {cls.type: cls for cls in (Latency, Bandwidth, Timeout, ResetPeer,
                                                            LimitData, Slicer, SlowClose)}


def make_toxic(body: dict[str, Any]) -> Toxic:
    """A toxic from the JSON of ``POST /proxies/{name}/toxics``, with Toxiproxy's defaults."""
    kind = KINDS.get(body.get("type"))
    if kind is None:
        raise ToxicError(f"invalid toxic type {body.get('type')!r} (known: {', '.join(KINDS)})")
    stream = body.get("stream") or "downstream"
    if stream not in STREAMS:
        raise ToxicError("stream was invalid, can be either upstream or downstream")
    name = body.get("name") or f"{kind.type}_{stream}"
    toxicity = body.get("toxicity")
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ToxicError("attributes must be an object")
    return kind(name, stream, 1.0 if toxicity is None else toxicity, attributes)
