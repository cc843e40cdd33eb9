"""Send parts of a file, or of a download's growing file, to one client at its own pace.

One push producer per response sends every part (a whole file, one range, or the parts of
a multipart answer with their boundary lines): the transport pauses it when the socket
buffer is full and resumes it when drained; while caught up with a download it waits for
the download's next progress. It ends cleanly on completion and aborts the connection on
failure, so a truncated image never looks complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, Protocol as TypingProtocol, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from talos_twisted.directsend import DirectSend, DirectTLS, direct_for
from talos_twisted.fileholes import FileHoles

if TYPE_CHECKING:
    from twisted.web.server import Request

# 256 KiB: per-call overhead dominated at 64 KiB (bench/hits.py: 0.58 -> 0.76 of nginx)
CHUNK = 256 * 1024
_ZEROS = bytes(CHUNK)


class SourceState(Enum):
    GROWING = "growing"
    COMPLETE = "complete"
    FAILED = "failed"


class Source(TypingProtocol):
    """What a producer reads: bytes [0, available()) of the file `open()` gives."""

    def available(self) -> int: ...
    def state(self) -> SourceState: ...
    def open(self) -> int: ...  # a new fd, owned by the caller
    def zeros_at(self, offset: int, limit: int) -> int: ...  # known zeros from offset, sent unread
    def subscribe(self, listener: Callable[[], None]) -> None: ...
    def unsubscribe(self, listener: Callable[[], None]) -> None: ...


class FileSource:
    """A complete file of known size; with `fd` (the response's), its holes are sent unread."""

    def __init__(self, path: str, size: int, fd: int | None = None):
        self._path = path
        self._size = size
        self._holes = None if fd is None else FileHoles(fd, size)

    def available(self) -> int:
        return self._size

    def state(self) -> SourceState:
        return SourceState.COMPLETE

    def open(self) -> int:
        return os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def zeros_at(self, offset: int, limit: int) -> int:
        return 0 if self._holes is None else self._holes.zeros_at(offset, limit)

    def subscribe(self, listener: Callable[[], None]) -> None:
        pass

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        pass


@dataclass(frozen=True)
class Span:
    """`prefix`, then the file's bytes [start, end); end None: up to the source's final size."""

    start: int
    end: int | None
    prefix: bytes = b""


@implementer(IPushProducer)
class Streamer:
    log = Logger()

    def __init__(
        self,
        request: Request,
        fd: int,
        source: Source,
        clock: IReactorTime,
        spans: Sequence[Span] = (Span(0, None),),
        trailer: bytes = b"",
        stall_timeout: float = 300.0,
    ):
        self._request = request
        self._fd = fd  # owned: closed when done
        self._source = source
        self._clock = clock
        self._spans = list(spans)
        self._index = 0
        self._offset = self._spans[0].start if self._spans else 0
        self._prefix_sent = False
        self._trailer = trailer
        self._stall_timeout = stall_timeout
        self._paused = False
        self._finished = False
        self._stall_call: IDelayedCall | None = None
        self.sent = 0  # file bytes sent
        self._direct: DirectSend | DirectTLS | None = direct_for(request)  # None: every byte through Twisted's transport
        self.done: Deferred[bool] = Deferred()  # True: complete; False: aborted or gone

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

    def _pump(self) -> None:
        while not self._paused and not self._finished:
            if self._index >= len(self._spans):
                if self._trailer:
                    self._request.write(self._trailer)
                self._close(True)  # the request is finished by whoever awaits `done`
                return
            span = self._spans[self._index]
            if not self._prefix_sent:
                self._prefix_sent = True
                if span.prefix:
                    self._request.write(span.prefix)
                    continue
            avail = self._source.available()
            limit = avail if span.end is None else min(avail, span.end)
            if self._offset < limit and self._direct is not None and self._can_send_direct():
                if not self._send_direct(limit):
                    return  # the socket is full (or the send failed): the transport resumes us
                continue
            if self._offset < limit:
                want = min(CHUNK, limit - self._offset)
                zeros = self._source.zeros_at(self._offset, self._offset + want)
                if zeros:  # a hole the writer left: sent without reading it (zeroruns)
                    want = zeros
                    data = _ZEROS if zeros == CHUNK else _ZEROS[:zeros]
                else:
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
            if span.end is not None and self._offset >= span.end:
                self._next_span()  # a span within a growing file needs no more of it
                continue
            state = self._source.state()
            if state == SourceState.FAILED:
                self._abort()
                return
            if state == SourceState.COMPLETE:
                self._next_span()
                continue
            return  # caught up with a growing file: the next progress event calls _pump

    def _can_send_direct(self) -> bool:
        """Whether body bytes may go straight into the socket now (talos_twisted.directsend)."""
        assert self._direct is not None
        if not self._direct.usable:
            self._direct = None
            return False
        request = self._request
        return bool(request.startedWriting) and not request.chunked and self._direct.drained()

    def _send_direct(self, limit: int) -> bool:
        """Send the next part straight into the socket; False once it is full (we wait for
        the transport to resume us) or the connection is gone."""
        assert self._direct is not None
        want = min(CHUNK, limit - self._offset)
        zeros = self._source.zeros_at(self._offset, self._offset + want)
        try:
            if zeros:
                n = self._direct.send_bytes(_ZEROS if zeros == CHUNK else memoryview(_ZEROS)[:zeros])
            else:
                n = self._direct.send_file(self._fd, self._offset, want)
        except OSError as e:  # the client is gone (EPIPE, ECONNRESET): as a lost connection
            self.log.debug("sending to a client failed: {error}", error=e)
            self._abort()
            return False
        if n is None:
            if not self._direct.usable:
                return True  # the buffered path from here on
            self._wait_writable()
            return False
        if n == 0:
            self.log.error("short read at {offset}: the file ended", offset=self._offset)
            self._abort()
            return False
        self._offset += n
        self.sent += n
        self._request.sentLength += n  # Twisted counts what passes through Request.write
        return True

    def _wait_writable(self) -> None:
        assert isinstance(self._direct, DirectSend)  # a TLS send never waits: its TCP buffer paces it
        self._paused = True
        self._stall_call = self._clock.callLater(self._stall_timeout, self._stalled)
        self._direct.resume_when_writable()

    def _next_span(self) -> None:
        self._index += 1
        self._prefix_sent = False
        if self._index < len(self._spans):
            self._offset = self._spans[self._index].start

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
