"""Limits of the HTTP server layer: the values, connection accounting, the answers sent
when a limit is hit (raw bytes: they go out before, or instead of, any request object), and
the pure checks of request lines, header lines and request targets.

Used by `talos_twisted.httpserver`, which holds the protocol classes.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, fields
from typing import Iterable
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ISSLTransport, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString

# After an error answer the connection is half-closed and the client's further bytes are
# read and dropped for this long: closing with unread input makes the kernel send a reset,
# which can destroy the answer before the client reads it.
LINGER_SECONDS = 2.0
# Refusals of connections over a limit that may linger at once; past this, a connection
# over a limit is dropped without an answer (a flood must not cost a file descriptor each).
MAX_LINGERING_REFUSALS = 256
# At most one log event per limit in this many seconds; the next one counts the rest.
LOG_INTERVAL = 1.0
# RFC 9110 reason phrases that Twisted lacks or spells the old way
_REASONS = {413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class ServerLimits:
    """What one client and all clients together may cost the server. Times in seconds,
    sizes in bytes."""

    request_header_timeout: float = 10.0  # to receive a whole request head, from its first byte
    request_body_timeout: float = 30.0  # to receive a whole (POST) body, after the head
    idle_timeout: float = 60.0  # a keep-alive connection between requests
    max_connections: int = 2000
    max_connections_per_client: int = 64  # per source address
    max_request_line: int = 8 * 1024  # 414 above
    max_header_size: int = 32 * 1024  # the whole head, request line included: 431 above
    max_headers: int = 100  # header fields: 431 above
    max_post_body: int = 64 * 1024  # 413 above; smaller bodies are kept in memory
    retry_after: int = 5  # Retry-After of the 503 sent over a connection limit

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"server limit {f.name} must be a positive number, not {value!r}")
        if self.max_request_line > self.max_header_size:
            raise ValueError("server limit max_request_line must not exceed max_header_size")


def client_key(addr: IAddress) -> str:
    """The source address a per-client limit counts by (an IPv4-mapped IPv6 address as IPv4)."""
    host = getattr(addr, "host", None)
    if not isinstance(host, str):
        return type(addr).__name__  # a UNIX socket: all its clients are one
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def error_response(
    status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = (), *, body: bool = True
) -> bytes:
    """A complete `Connection: close` answer with the JSON error body (none for HEAD)."""
    payload = json.dumps({"error": message, "status": status}).encode() + b"\n"
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status) or RESPONSES.get(status, b"Error")),
        b"Date: " + datetimeToString(),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(payload),
        b"Cache-Control: no-store",
        b"Connection: close",
    ]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (payload if body else b"")


def linger_and_close(transport: ITransport, clock: IReactorTime, abort_after: float = LINGER_SECONDS) -> IDelayedCall:
    """Close after what was written, without a reset: half-close where the transport can
    (plain TCP), and abort if the client has not closed its side after `abort_after`.
    The caller keeps reading and dropping input, and cancels the call on connectionLost."""
    t: object = transport
    if not ISSLTransport.providedBy(t) and hasattr(t, "loseWriteConnection"):
        t.loseWriteConnection()  # FIN once the answer is flushed; the client then closes
    else:
        # TLS cannot half-close: its close_notify ends both directions
        transport.loseConnection()
    return clock.callLater(abort_after, _abort, transport)


def _abort(transport: ITransport) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class LogThrottle:
    """At most one event per limit per LOG_INTERVAL: a flood of refusals must not become a
    flood of log lines. The next event logged says how many were left out."""

    log = Logger()

    def __init__(self, clock: IReactorTime):
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, peer: str, limit: str, message: str) -> None:
        now = self.clock.seconds()
        if now - self._last.get(limit, -LOG_INTERVAL) < LOG_INTERVAL:
            self._suppressed[limit] = self._suppressed.get(limit, 0) + 1
            return
        self._last[limit] = now
        suppressed = self._suppressed.pop(limit, 0)
        if suppressed:
            self.log.info(
                "refused {peer}: {limit}: {message} (and {suppressed} refusals for {limit} not logged)",
                peer=peer, limit=limit, message=message, suppressed=suppressed,
            )
        else:
            self.log.info("refused {peer}: {limit}: {message}", peer=peer, limit=limit, message=message, suppressed=0)


class ConnectionTable:
    """Open connections, in total and per client, and the refusals still lingering."""

    def __init__(self, limits: ServerLimits):
        self.limits = limits
        self.total = 0
        self.refusing = 0
        self._per_client: dict[str, int] = {}

    def count(self, key: str) -> int:
        return self._per_client.get(key, 0)

    def over_limit(self, key: str) -> str | None:
        """The name of the limit a new connection from `key` would exceed, or None."""
        if self.total >= self.limits.max_connections:
            return "max_connections"
        if self.count(key) >= self.limits.max_connections_per_client:
            return "max_connections_per_client"
        return None

    def opened(self, key: str) -> None:
        self.total += 1
        self._per_client[key] = self.count(key) + 1

    def closed(self, key: str) -> None:
        self.total -= 1
        left = self.count(key) - 1
        if left > 0:
            self._per_client[key] = left
        else:
            self._per_client.pop(key, None)


class Refusal(Protocol):
    """A connection over a limit: `503` + `Retry-After` as soon as it is made, then closed
    (lingering, so the answer is not lost to a reset)."""

    def __init__(self, table: ConnectionTable, clock: IReactorTime, limit: str):
        self.table = table
        self.clock = clock
        self.limit = limit
        self._linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.table.refusing += 1
        if self.table.refusing > MAX_LINGERING_REFUSALS:
            _abort(self.transport)
            return
        message = f"this server has too many connections ({self.limit}); try again later"
        retry = str(self.table.limits.retry_after).encode()
        self.transport.write(error_response(503, message, [(b"Retry-After", retry)]))
        self._linger = linger_and_close(self.transport, self.clock)

    def dataReceived(self, data: bytes) -> None:
        pass  # the request is not read: it is refused whatever it is

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.table.refusing -= 1
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None


# --- pure checks of what a client sends ---------------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.S)
HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%\-]*)(:[0-9]{0,5})?")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# longer than any body we accept, and short enough that int() never sees a huge string
_MAX_LENGTH_DIGITS = 18

Fault = tuple[int, str, str]  # status, message, limit (the name logged)


class TargetError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def request_line_error(line: bytes) -> Fault | None:
    """What is wrong with a request line, stricter than Twisted (which then parses it)."""
    parts = line.split(b" ")
    if len(parts) != 3:
        return 400, "the request line is not 'METHOD target HTTP/1.1' (single spaces)", "http_syntax"
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        return 400, "the request method is not a valid token", "http_syntax"
    if not target or any(c < 0x21 or c > 0x7E for c in target):
        return 400, "the request target is empty or has a byte that is not printable ASCII", "http_syntax"
    if not _VERSION.fullmatch(version):
        return 400, "the request line does not end with an HTTP version like HTTP/1.1", "http_syntax"
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        return 505, f"{version.decode('ascii')} is not supported here; use HTTP/1.1", "http_version"
    return None


def header_line_error(line: bytes) -> Fault | None:
    """The faults Twisted would answer with a bare 400, named (Twisted stays the backstop)."""
    name, colon, value = line.partition(b":")
    if not colon:
        return 400, "a header line has no ':'", "http_syntax"
    if not _TOKEN.fullmatch(name):
        return 400, "a header name is not a valid token (no spaces before the ':')", "http_syntax"
    value = value.strip(b" \t")
    if len(value.translate(None, b"\x00\r\n")) != len(value):
        return 400, "a header value contains a NUL, CR or LF byte", "http_syntax"
    lname = name.lower()
    if lname == b"content-length":
        if not value.isdigit():
            return 400, "Content-Length is not a decimal number", "http_syntax"
        if len(value) > _MAX_LENGTH_DIGITS:
            return 413, "the request body is far too large", "max_post_body"
    elif lname == b"transfer-encoding" and value.lower() not in (b"chunked", b"identity"):
        return 400, "only the chunked transfer coding is accepted", "http_syntax"
    return None


def origin_form(target: bytes) -> bytes:
    """The request target as an absolute path (and query) for routing.

    Absolute-form (`http://host/path`) becomes its path (RFC 9112 §3.2.2); `*` is kept (Twisted
    answers it). Raises `TargetError` for what no route may see: bad percent-encoding, a
    path that is not UTF-8 once decoded, control characters, an encoded '/', dot-segments
    (400), and empty segments, which werkzeug would merge with a redirect (404).
    """
    if target == b"*":
        return target
    m = _ABSOLUTE.fullmatch(target)
    if m:
        if m.group(1).lower() not in (b"http", b"https"):
            raise TargetError(400, "only http and https URLs can be requested")
        if not m.group(2) or not HOST.fullmatch(m.group(2)):
            raise TargetError(400, "the host of the requested URL is not a valid host[:port]")
        rest = m.group(3)
        target = rest if rest.startswith(b"/") else b"/" + rest
    if not target.startswith(b"/"):
        raise TargetError(400, "the request target must be a path starting with '/' or an http(s) URL")
    if b"#" in target:
        raise TargetError(400, "the request target must not contain a fragment ('#')")
    path = target.split(b"?", 1)[0]
    if _BAD_ESCAPE.search(path):
        raise TargetError(400, "the path has a '%' that is not followed by two hex digits")
    segments = path[1:].split(b"/")
    if path != b"/" and b"" in segments:
        raise TargetError(404, "no such route: the path has an empty segment ('//' or a trailing '/')")
    for segment in segments:
        try:
            text = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise TargetError(400, "the path is not valid UTF-8 once percent-decoded") from None
        if "/" in text:
            raise TargetError(400, "the path has an encoded '/' (%2F) inside a segment")
        if not text.isprintable():
            raise TargetError(400, "the path has a control or non-printable character")
        if text in (".", ".."):
            raise TargetError(400, "the path has a '.' or '..' segment")
    return target
