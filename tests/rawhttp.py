"""The one raw-socket HTTP/1.1 client of the tests: for what treq hides or cannot do.

A client that stops reading (slow or stalled), a HEAD's Content-Length, whether a chunked
body ended with its final chunk, whether the connection was aborted or closed cleanly,
and requests with bytes no well-behaved client would send.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol


def request_bytes(method="GET", path="/", headers=None, body=b"", close=True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if close:
        lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawClient(Protocol):
    """Sends `request_bytes`, records what comes back and how the connection ended."""

    def __init__(self, request: bytes):
        self.request_bytes = request
        self.data = bytearray()
        self.closed: Deferred = Deferred()
        self.got_some: Deferred = Deferred()
        self.reason = None

    def connectionMade(self):
        self.transport.write(self.request_bytes)

    def dataReceived(self, data):
        self.data += data
        if not self.got_some.called:
            self.got_some.callback(None)

    def connectionLost(self, reason):
        self.reason = reason
        self.closed.callback(None)

    def pause(self):
        self.transport.pauseProducing()

    def resume(self):
        self.transport.resumeProducing()

    def split(self) -> tuple[bytes, bytes]:
        head, _, body = bytes(self.data).partition(b"\r\n\r\n")
        return head, body

    def head(self) -> tuple[int, dict[str, str]]:
        return parse_head(self.split()[0])

    @property
    def closed_cleanly(self) -> bool:
        return self.reason is not None and bool(self.reason.check(ConnectionDone))


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1].split("/")[0])


async def connect(base_url: str, client: RawClient) -> RawClient:
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(base_url)), client)
    return client


async def open_raw(base_url: str, path: str, method="GET", headers=None, body=b"") -> RawClient:
    """A connected client whose request was sent; await `client.closed` for the end."""
    return await connect(base_url, RawClient(request_bytes(method, path, headers, body)))


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body; (data, complete) where complete means the final chunk came."""
    out = bytearray()
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out), True
        start = eol + 2
        if len(body) < start + size + 2:
            out += body[start:start + size]
            return bytes(out), False
        out += body[start:start + size]
        pos = start + size + 2


def body_of(client: RawClient) -> tuple[bytes, bool]:
    """The response body as sent (chunked or with Content-Length); (data, complete)."""
    head, data = client.split()
    _, headers = parse_head(head)
    if headers.get("transfer-encoding") == "chunked":
        return dechunk(data)
    if "content-length" in headers:
        length = int(headers["content-length"])
        return data[:length], len(data) >= length
    return data, client.closed_cleanly


async def exchange(base_url: str, path: str, method="GET", headers=None, body=b"") -> tuple[int, dict[str, str], bytes]:
    """One request, the connection closed after it: (status, headers, body), a chunked body
    decoded and required to have ended with its final chunk."""
    client = await open_raw(base_url, path, method, headers, body)
    await client.closed
    head, data = client.split()
    status, parsed = parse_head(head)
    if parsed.get("transfer-encoding") == "chunked":
        data, complete = dechunk(data)
        assert complete, f"{method} {path}: the response did not end cleanly"
    return status, parsed, data


async def raw_head(base_url: str, path: str) -> tuple[int, dict[str, str]]:
    """HEAD over a raw socket: treq hides Content-Length (and reports 0 for HEAD)."""
    status, headers, body = await exchange(base_url, path, "HEAD")
    assert body == b"", "a HEAD response has no body"
    return status, headers


def assert_aborted(client: RawClient) -> None:
    """A transfer that failed after it began: a 200 cut off, no final chunk, no clean close."""
    head, _ = client.split()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert not body_of(client)[1], "a failed transfer must look incomplete (short, or no final chunk)"
    assert not client.closed_cleanly, "a failed transfer must not close cleanly"


def assert_error(client: RawClient, status: int, fragment: bytes = b"") -> None:
    """A request answered with an error before any image byte."""
    head, body = client.split()
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    assert fragment in body, body
