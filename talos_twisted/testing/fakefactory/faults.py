"""The fake factory's body producer and the faults it injects.

A body is sent 64 KiB at a time as an ``IPushProducer`` (so a slow client pauses it instead
of the whole body being buffered), optionally paced to a rate limit, and may end in one
fault: "cut" (RST once the bytes up to the cut have left the buffer), "short" (clean FIN
early), "stall" (nothing more, connection left open); "corrupt" flips one byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web import server
from zope.interface import implementer

from .images import KiB, ImageSpec


class Body:
    size: int

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


class BytesBody(Body):
    def __init__(self, data: bytes):
        self._data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


class RawBody(Body):
    def __init__(self, spec: ImageSpec):
        self._spec = spec
        self.size = spec.size

    def read(self, offset: int, length: int) -> bytes:
        return self._spec.read(offset, length)


@dataclass(frozen=True)
class Fault:
    kind: str  # "cut" | "short" | "stall"
    after: int


def _unsent(transport: Any) -> int:
    """Bytes a Twisted TCP transport still holds in user space (0 for other transports)."""
    buf = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    try:
        return max(0, len(buf) - offset) + int(getattr(transport, "_tempDataLen", 0))
    except TypeError:
        return 0


@implementer(IPushProducer)
class BodyProducer:
    """Writes body bytes [start, end) to a request, 64 KiB at a time, honouring the
    transport's pause/resume, the fake's rate limit, and at most one fault."""

    CHUNK = 64 * KiB
    TICK = 0.1

    def __init__(
        self,
        request: server.Request,
        body: Body,
        start: int,
        end: int,
        fault: Fault | None,
        corrupt_at: int | None,
        *,
        clock: IReactorTime,
        rate_limit: Callable[[], int],
        active: set[BodyProducer],
    ):
        self._clock = clock
        self._rate_limit = rate_limit  # read live: a test may change the rate mid-body
        self._active = active
        self._request = request
        self._body = body
        self._pos = start
        self._end = end
        self._limit = end if fault is None else min(end, start + fault.after)
        self._fault = fault
        self._corrupt_at = corrupt_at
        self._paused = False
        self._done = False
        self._lost = False
        self._pumping = False
        self._budget = 0
        self._timer: IDelayedCall | None = None
        self.sent = 0

    def start(self) -> None:
        self._active.add(self)
        self._request.notifyFinish().addBoth(self._finished)
        self._request.registerProducer(self, True)
        if self._rate_limit() > 0:
            self._budget = max(1, self._rate_limit() // 10)
        self._pump()

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._done or not self._paused:
            return
        self._paused = False
        if self._timer is None:
            self._pump()

    def stopProducing(self) -> None:
        self._stop()

    # internals
    def _finished(self, result: object) -> None:
        if isinstance(result, Failure):
            self._lost = True
        self._stop()
        self._active.discard(self)

    def _stop(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        self._budget = max(1, self._rate_limit() // 10)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._paused and not self._done:
                if self._pos >= self._limit:
                    self._at_limit()
                    return
                n = min(self.CHUNK, self._limit - self._pos)
                rate = self._rate_limit()
                if rate > 0:
                    if self._budget <= 0:
                        self._timer = self._clock.callLater(self.TICK, self._tick)
                        return
                    n = min(n, self._budget)
                    self._budget -= n
                data = self._body.read(self._pos, n)
                if self._corrupt_at is not None and self._pos <= self._corrupt_at < self._pos + n:
                    flipped = bytearray(data)
                    flipped[self._corrupt_at - self._pos] ^= 0xFF
                    data = bytes(flipped)
                self._pos += n
                self.sent += n
                self._request.write(data)
        finally:
            self._pumping = False

    def _unregister(self) -> None:
        try:
            self._request.unregisterProducer()
        except Exception:  # the channel is gone already
            pass

    def _at_limit(self) -> None:
        self._stop()
        self._unregister()
        fault = self._fault
        if fault is None:
            self._request.finish()
            return
        if not self._request.startedWriting:
            self._request.write(b"")  # the headers go out even when the fault is at byte 0
        transport = self._request.transport
        if fault.kind == "short":
            if transport is not None:
                transport.loseConnection()
        elif fault.kind == "cut":
            self._abort_when_flushed(0)
        # "stall": send nothing more; the connection stays open until the client gives up
        # (or FakeFactory.abort_all()).

    def _abort_when_flushed(self, waited: int) -> None:
        # Let what was written reach the socket first, so the client gets the bytes up to
        # the cut (it then sees a reset), unless the client does not read at all.
        transport = self._request.transport
        if self._lost or transport is None:
            return
        if _unsent(transport) and waited < 200:
            self._timer = self._clock.callLater(0.01, self._abort_when_flushed, waited + 1)
            return
        self._timer = None
        self.abort()

    def abort(self) -> None:
        self._stop()
        transport = self._request.transport
        if self._lost or transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()
