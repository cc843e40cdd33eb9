"""Body bytes written straight into the client's TCP socket, past Twisted's write buffer
(`DirectSend`), and TLS bodies encrypted straight into it (`DirectTLS`, below).

Twisted's transport queues each write and, before sending, joins the queue into one bytes
object: every byte of a body was copied once more in Python, and each catch-up of a
follower with its download went through that queue, a reactor turn and `epoll_ctl`s. On a
plain TCP connection a response's body goes instead straight to the socket: data with
`os.sendfile` from the image file (the kernel takes the page-cache pages, no copy in the
daemon), holes as zeros written from one constant buffer. One cold 1 GiB zst miss: 0.66-0.72 s
-> 0.49-0.53 s, 0.95 -> 0.60 s of the daemon's CPU. (Holes sent with `sendfile` from a zero-
filled memfd were slower on loopback: the receiver copies 4 KiB page fragments; 0.61 s a hit.)

Only where nothing can interleave: the response's headers have gone out through Twisted,
the transport's own buffer is empty, and the body is not chunked. When the socket is full,
the transport is asked to resume its producer once it can write (`startWriting` with the
producer marked paused), which is how Twisted paces any push producer. Chunked bodies and
files that cannot be `sendfile`d keep the buffered path.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from OpenSSL.SSL import Error as TLSError, WantReadError
from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = ["DirectSend", "DirectTLS", "direct_for"]

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
        """Whether the transport holds none of this connection's bytes (else they go first)."""
        return _drained(self._transport)

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


def _drained(t: Any) -> bool:
    """Whether the TCP transport `t` holds no bytes yet to send.

    Reads FileDescriptor's buffer fields; should Twisted rename them, this says False and the
    buffered path is taken, which tests/test_directsend.py notices."""
    buffered = getattr(t, "dataBuffer", None)
    pending = getattr(t, "_tempDataLen", None)
    return buffered is not None and pending == 0 and len(buffered) - getattr(t, "offset", 0) == 0


_RECORD = 16384  # TLS's largest record: OpenSSL is handed one at a time


class DirectTLS:
    """A TLS response's body encrypted with the connection's own OpenSSL object, its records
    written straight into the TCP socket.

    Twisted's TLS write copies each 16 KiB record's cleartext out of the body (a slice), the
    records out of the memory BIO, and then all of them again joining its TCP buffer. Here the
    cleartext goes to OpenSSL from a memoryview and the records to the socket with one
    `write`; whatever the socket does not take is handed to the TCP transport, which then
    paces the response as it does any (through the TLS protocol's producer membrane). Only
    while the TLS protocol has nothing of its own waiting: the handshake done, no cleartext
    buffered, the TCP transport drained. One HTTPS client of a cached 1 GiB image: 0.95-1.10 s
    -> 0.49-0.72 s."""

    def __init__(self, tls: Any, transport: Any):
        self._tls = tls
        self._transport = transport
        self._socket = transport.fileno()
        self.usable = True

    @classmethod
    def of(cls, request: Any) -> DirectTLS | None:
        tls = getattr(getattr(request, "channel", None), "transport", None)
        if not isinstance(tls, TLSMemoryBIOProtocol):
            return None
        inner: Any = tls.transport
        return cls(tls, inner) if isinstance(inner, tcp.Connection) else None

    def drained(self) -> bool:
        t = self._tls
        return (
            getattr(t, "_tlsConnection", None) is not None and getattr(t, "_handshakeDone", False)
            and not getattr(t, "_lostTLSConnection", True) and getattr(t, "_appSendBuffer", None) == []
            and not t.disconnecting and _drained(self._transport)
        )

    def send_bytes(self, data: bytes | memoryview) -> int | None:
        """Encrypt all of `data` and send its records; returns len(data) (None: the TLS
        connection wants something else first; `usable` is then False)."""
        conn = self._tls._tlsConnection
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(view):
                pos += conn.send(view[pos:pos + _RECORD])
        except WantReadError:  # a renegotiation: Twisted's own path from here on
            self.usable = False
            if pos:
                self._flush(conn)
            return pos or None
        except TLSError as e:  # the TLS connection is broken: as a connection that is gone
            raise ConnectionError(f"TLS: {e}") from None
        self._flush(conn)
        return pos

    def _flush(self, conn: Any) -> None:
        while True:
            try:
                records = conn.bio_read(1 << 20)
            except WantReadError:  # the BIO is empty
                return
            sent = 0
            if _drained(self._transport):  # else after what the transport holds, in order
                try:
                    sent = os.write(self._socket, records)
                except BlockingIOError:
                    pass
            if sent < len(records):
                self._transport.write(records[sent:] if sent else records)

    def send_file(self, fd: int, offset: int, count: int) -> int | None:
        data = os.pread(fd, count, offset)
        if not data:
            return 0
        return self.send_bytes(data)


def direct_for(request: Any) -> DirectSend | DirectTLS | None:
    """The direct path for this response's connection, if it has one."""
    return DirectSend.of(request) or DirectTLS.of(request)
