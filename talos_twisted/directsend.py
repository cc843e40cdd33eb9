"""Body bytes written straight into the client's TCP socket, past Twisted's write buffer.

Twisted's transport queues each write and, before sending, joins the queue into one bytes
object: every byte of a body was copied once more in Python, and each catch-up of a
follower with its download went through that queue, a reactor turn and `epoll_ctl`s. On a
plain TCP connection a response's body goes instead straight to the socket: data with
`os.sendfile` from the image file (the kernel takes the page-cache pages, no copy in the
daemon), holes as zeros written from one constant buffer. One cold 1 GiB zst miss: 0.66-0.72 s
-> 0.49-0.53 s, 0.95 -> 0.62 s of the daemon's CPU. (Holes sent with `sendfile` from a zero-
filled memfd were slower on loopback: the receiver copies 4 KiB page fragments; 0.61 s a hit.)

Only where nothing can interleave: the response's headers have gone out through Twisted,
the transport's own buffer is empty, and the body is not chunked. When the socket is full,
the transport is asked to resume its producer once it can write (`startWriting` with the
producer marked paused), which is how Twisted paces any push producer. TLS connections,
chunked bodies and files that cannot be `sendfile`d keep the buffered path.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import tcp

__all__ = ["DirectSend"]

# sendfile cannot read this file (a file system without it...): the buffered path instead
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EOVERFLOW)


class DirectSend:
    """Writes into one response's TCP socket; see the module's docstring for when."""

    def __init__(self, transport: Any):
        self._transport = transport
        self._socket = transport.fileno()
        self.usable = True  # False once `sendfile` said it cannot (then the buffered path)

    @classmethod
    def of(cls, request: Any) -> DirectSend | None:
        """For a response over plain TCP; None for TLS (or anything but a TCP socket)."""
        transport = getattr(getattr(request, "channel", None), "transport", None)
        if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
            return None
        if not hasattr(os, "sendfile"):
            return None
        return cls(transport)

    def drained(self) -> bool:
        """Whether the transport holds none of this connection's bytes (else they go first).

        Reads FileDescriptor's buffer fields; should Twisted rename them, this says False and
        the buffered path is taken, which tests/test_directsend.py notices."""
        t = self._transport
        buffered = getattr(t, "dataBuffer", None)
        pending = getattr(t, "_tempDataLen", None)
        return buffered is not None and pending == 0 and len(buffered) - getattr(t, "offset", 0) == 0

    def send_file(self, fd: int, offset: int, count: int) -> int | None:
        """Send up to `count` bytes of `fd` from `offset`; how many went: None when the
        socket is full, 0 when `fd` ended first. Raises OSError for a connection that is
        gone; where `sendfile` cannot work, `usable` turns False and None is returned."""
        try:
            return os.sendfile(self._socket, fd, offset, count)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                self.usable = False
                return None
            raise

    def send_bytes(self, data: bytes | memoryview) -> int | None:
        """Write `data` (or its start); how many bytes went, None when the socket is full."""
        try:
            return os.write(self._socket, data)
        except BlockingIOError:
            return None

    def resume_when_writable(self) -> None:
        """Have the transport resume its producer (the channel, then us) once it can write."""
        self._transport.producerPaused = True
        self._transport.startWriting()
