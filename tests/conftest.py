"""Shared fixtures: a fake factory and the daemon, both on 127.0.0.1, in this reactor."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from talos_twisted.config import Config, TalosConfig
from talos_twisted.tap import build
from talos_twisted.testing.fakefactory import FakeFactory

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def observe_errors():
    """Fail any test during which something logged an unexpected error or failure."""
    errors = []

    def observer(event):
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield errors
    globalLogPublisher.removeObserver(observer)
    assert not errors, "unexpected errors logged: " + "; ".join(
        str(e.get("log_failure") or e.get("log_format")) for e in errors
    )


async def listen(resource):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(resource))
    return port


class Stack:
    """A running fake factory and daemon, plus a client."""

    def __init__(self, tmp_path, image_size, **talos):
        self.tmp_path = tmp_path
        self.fake = FakeFactory(image_size=image_size)
        self.talos_overrides = talos
        self.ports = []
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    async def start(self):
        fport = await listen(self.fake.resource())
        self.ports.append(fport)
        self.factory_url = f"http://127.0.0.1:{fport.getHost().port}"
        await self.start_daemon()
        return self

    async def start_daemon(self, **more):
        settings = {"base_url": self.factory_url, "cache_directory": str(self.tmp_path / "cache")}
        talos = TalosConfig(**{**settings, **self.talos_overrides, **more})
        self.config = Config(listen="tcp:0", talos=talos)
        self.service, self.app = build(self.config, reactor)
        self.service.startService()
        dport = await listen(self.app.resource())
        self.daemon_port = dport
        self.ports.append(dport)
        self.url = f"http://127.0.0.1:{dport.getHost().port}"

    async def stop_daemon(self):
        await self.daemon_port.stopListening()
        self.ports.remove(self.daemon_port)
        await self.service.stopService()

    async def stop(self):
        await self.pool.closeCachedConnections()
        for p in self.ports:
            await p.stopListening()
        await self.service.stopService()

    def image_url(self, version="v1.11.2", arch="amd64", platform="openstack", query="", checksum=False):
        return f"{self.url}/images/talos/{version}/{arch}/{platform}.raw{'.sha256' if checksum else ''}{query}"

    async def get(self, url, **kw):
        resp = await self.http.get(url, **kw)
        body = await resp.content()
        return resp, body

    def expected(self, schematic_id, version="v1.11.2", platform="openstack", arch="amd64"):
        return self.fake.raw_image(schematic_id, version, platform, arch)


@pytest_twisted.async_yield_fixture
async def stack(tmp_path, request):
    marker = request.node.get_closest_marker("stack")
    kwargs = dict(marker.kwargs) if marker else {}
    image_size = kwargs.pop("image_size", 4 * MiB)
    s = Stack(tmp_path, image_size, **kwargs)
    await s.start()
    yield s
    await s.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "stack(image_size=..., **talos): configure the stack fixture")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RawClient(Protocol):
    """A minimal HTTP/1.1 client over a real socket that can stop reading, to act as a slow
    or stalled client; records whether the connection ended cleanly."""

    def __init__(self, request_bytes: bytes):
        self.request_bytes = request_bytes
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


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body; returns (data, complete) where complete means the final chunk came."""
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


async def raw_head(stack, url) -> tuple[int, dict[str, str]]:
    """HEAD over a raw socket: treq hides Content-Length (and reports 0 for HEAD)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    path = url[len(stack.url):]
    client = RawClient(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    port = int(stack.url.rsplit(":", 1)[1])
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    await client.closed
    head, body = client.split()
    assert body == b"", "a HEAD response has no body"
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def assert_failed_transfer(client: RawClient, status: int, fragment: bytes = b"") -> None:
    """A download failed: the client saw either an aborted 200 (no final chunk, no clean
    close) or, when the failure came before the first byte, an error with `status`."""
    from twisted.internet.error import ConnectionDone

    head, body = client.split()
    if head.startswith(b"HTTP/1.1 200"):
        assert not dechunk(body)[1], "a failed transfer must not end with the final chunk"
        assert not client.reason.check(ConnectionDone), "a failed transfer must not close cleanly"
    else:
        assert head.startswith(f"HTTP/1.1 {status}".encode()), head
        assert fragment in body, body
