"""Send a file, or a download's growing file, to one client at the client's own pace.

A push producer per client: the transport pauses it when the socket buffer is full and
resumes it when drained; while caught up with a download it waits for the download's
next progress. It ends cleanly on completion and aborts the connection on failure so a
truncated image never looks complete.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from talos_twisted.download import Download

# 256 KiB: per-call overhead dominated at 64 KiB (bench/hits.py: 0.58 -> 0.76 of nginx)
CHUNK = 256 * 1024


class Source(TypingProtocol):
    """What a producer reads: bytes [0, available) are in `fd`'s file."""

    def available(self) -> int: ...
    def state(self) -> str: ...  # "growing", "complete" or "failed"
    def subscribe(self, listener: Any) -> None: ...
    def unsubscribe(self, listener: Any) -> None: ...


class FileSource:
    """A complete file of known size."""

    def __init__(self, size: int):
        self._size = size

    def available(self) -> int:
        return self._size

    def state(self) -> str:
        return "complete"

    def subscribe(self, listener: Any) -> None:
        pass

    def unsubscribe(self, listener: Any) -> None:
        pass


class DownloadSource:
    """A download in progress (see talos_twisted.download.Download)."""

    def __init__(self, download: Download):
        self._download = download

    def available(self) -> int:
        return self._download.available

    def state(self) -> str:
        st = self._download.state
        if st == "committed":
            return "complete"
        if st == "failed":
            return "failed"
        return "growing"

    def subscribe(self, listener: Any) -> None:
        self._download.subscribe(listener)

    def unsubscribe(self, listener: Any) -> None:
        self._download.unsubscribe(listener)


@implementer(IPushProducer)
class FileStreamer:
    log = Logger()

    def __init__(
        self,
        request: Any,
        fd: int,
        source: Source,
        clock: IReactorTime,
        start: int = 0,
        end: int | None = None,  # exclusive; None: up to the source's final size
        stall_timeout: float = 300.0,
    ):
        self._request = request
        self._fd = fd  # owned: closed when done
        self._source = source
        self._clock = clock
        self._offset = start
        self._end = end
        self._stall_timeout = stall_timeout
        self._paused = False
        self._finished = False
        self._stall_call: Any = None
        self.sent = 0
        self.done: Deferred[bool] = Deferred()  # fires with True (complete) or False (aborted / gone)

    def start(self) -> Deferred[bool]:
        self._request.registerProducer(self, True)
        self._source.subscribe(self._pump)
        self._request.notifyFinish().addErrback(lambda _: self._close(False))
        self._pump()
        return self.done

    # IPushProducer: the transport may call pause/resume repeatedly; both are idempotent
    def pauseProducing(self) -> None:
        if self._finished or self._paused:
            return
        self._paused = True
        self._stall_call = self._clock.callLater(self._stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self._paused = False
        self._cancel_stall()
        self._pump()

    def stopProducing(self) -> None:
        self._close(False)

    def _stalled(self) -> None:
        self._stall_call = None
        self.log.warn(
            "aborting a client that read nothing for {seconds:g}s ({sent} bytes sent)",
            seconds=self._stall_timeout,
            sent=self.sent,
        )
        self._abort()

    def _limit(self) -> int:
        avail = self._source.available()
        return avail if self._end is None else min(avail, self._end)

    def _pump(self) -> None:
        while not self._paused and not self._finished:
            limit = self._limit()
            if self._offset < limit:
                want = min(CHUNK, limit - self._offset)
                data = os.pread(self._fd, want, self._offset)
                if len(data) != want:
                    self.log.error(
                        "short read at {offset}: {got} of {want} bytes", offset=self._offset, got=len(data), want=want
                    )
                    self._abort()
                    return
                self._offset += want
                self.sent += want
                # may call pauseProducing synchronously when the socket buffer fills
                self._request.write(data)
                continue
            state = self._source.state()
            if state == "failed":
                self._abort()
            elif state == "complete" and (self._end is None or self._offset >= self._end):
                self._complete()
            return  # caught up with a growing file: the next progress event calls _pump

    def _complete(self) -> None:
        # the request is finished by whoever awaits `done` (the route handler)
        self._close(True)

    def _abort(self) -> None:
        # no final chunk: the client must see a truncated transfer, never a clean end. Abort
        # first: closing fires `done`, whose waiter finishes the request.
        transport = getattr(self._request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()
        self._close(False)

    def _cancel_stall(self) -> None:
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None

    def _close(self, complete: bool) -> None:
        if self._finished:
            return
        self._finished = True
        # before `done` fires: its waiter may finish the request, which wants no producer left
        if self._request.producer is self:
            self._request.unregisterProducer()
        self._cancel_stall()
        self._source.unsubscribe(self._pump)
        os.close(self._fd)
        if not self.done.called:
            self.done.callback(complete)
