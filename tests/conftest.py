"""Shared fixtures: a fake factory and the daemon, both on 127.0.0.1, in this reactor."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from talos_twisted.config import Config, TalosConfig
from talos_twisted.httpserver import make_site
from talos_twisted.tap import build, server_limits
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


@pytest.fixture
def download_failures():
    """The messages of downloads that failed during the test (from their log events)."""
    messages = []

    def observer(event):
        if event.get("log_format", "").startswith("download of {key} failed: {error}"):
            messages.append(event["error"])

    globalLogPublisher.addObserver(observer)
    yield messages
    globalLogPublisher.removeObserver(observer)


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
        # through the hardened server layer, as twistd serves it
        site = make_site(self.app.resource(), server_limits(talos), reactor, metrics=self.app.metrics)
        dport = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
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

    async def get(self, url, settle=True, **kw):
        """GET `url`, body and all. With `settle`, before and after it, wait for the images
        whose bytes are all out to be committed, as if requests came one after the other
        slower than a seal (talos_twisted.transfer, SEALING): a test's HIT is then a HIT."""
        if settle:
            await self.sealed()
        resp = await self.http.get(url, **kw)
        body = await resp.content()
        if settle:
            await self.sealed()
        return resp, body

    async def sealed(self):
        """Wait until every download whose bytes are all out has been hashed and committed."""
        await gatherResults([d.settled.when() for d in self.app.downloads.settling() if d.machine.complete])

    def expected(self, schematic_id, version="v1.11.2", platform="openstack", arch="amd64"):
        return self.fake.raw_image(schematic_id, version, platform, arch)


@pytest_twisted.async_yield_fixture
async def stack(tmp_path, request):
    marker = request.node.get_closest_marker("stack")
    kwargs = dict(marker.kwargs) if marker else {}
    kwargs.update(getattr(request, "param", {}))  # parametrize("stack", [{...}], indirect=True)
    image_size = kwargs.pop("image_size", 4 * MiB)
    s = Stack(tmp_path, image_size, **kwargs)
    await s.start()
    yield s
    await s.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "stack(image_size=..., **talos): configure the stack fixture")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MemoryStack:
    """The daemon's app and the fake factory, joined in memory by StubTreq: no sockets.

    For routes, errors and discovery, where no socket behaviour is under test.
    """

    def __init__(self, tmp_path, **talos):
        from treq.testing import StubTreq

        self.fake = FakeFactory(image_size=1 * MiB)
        self.upstream = StubTreq(self.fake.resource())
        settings = {"base_url": "http://factory.test", "cache_directory": str(tmp_path / "cache")}
        self.config = Config(listen="tcp:0", talos=TalosConfig(**{**settings, **talos}))
        self.service, self.app = build(self.config, reactor, http=self.upstream)
        self.client = StubTreq(self.app.resource())

    def _settle(self, d):
        # each flush delivers one hop (daemon -> factory -> daemon); a route makes a few
        for _ in range(200):
            if d.called:
                break
            self.upstream.flush()
            self.client.flush()
        assert d.called, "the in-memory request did not complete"
        return d

    async def request(self, method, path, headers=None, data=None):
        resp = await self._settle(self.client.request(method, "http://daemon.test" + path, headers=headers, data=data))
        body = await self._settle(resp.content())
        return resp, body

    async def get(self, path, **kw):
        return await self.request("GET", path, **kw)


@pytest.fixture
def memory(tmp_path, request):
    marker = request.node.get_closest_marker("stack")
    kwargs = dict(marker.kwargs) if marker else {}
    kwargs.update(getattr(request, "param", {}))  # parametrize("stack", [{...}], indirect=True)
    kwargs.pop("image_size", None)
    return MemoryStack(tmp_path, **kwargs)


@pytest.fixture
def image_reads(monkeypatch):
    """The sizes of the image-file reads of the test's responses: `pread`s and `sendfile`s,
    whichever path serves (talos_twisted.stream, talos_twisted.directsend)."""
    reads = []
    real_pread, real_sendfile = os.pread, os.sendfile

    def pread(fd, n, offset):
        data = real_pread(fd, n, offset)
        reads.append(len(data))
        return data

    def sendfile(out_fd, in_fd, offset, count):
        n = real_sendfile(out_fd, in_fd, offset, count)
        reads.append(n)
        return n

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "sendfile", sendfile)
    return reads
