"""SIGTERM stops gracefully (`shutdown_grace`): the port closes at once, running transfers
finish within the grace, what is left afterwards is cancelled; never a temporary file left.

The daemon is a real `twistd talos-images` child (the helpers of tests/test_reload.py); the
fake factory and the clients run in this test's reactor.
"""

import hashlib
import json
import os
import socket
import time

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from talos_twisted.testing.fakefactory import FakeFactory

from .conftest import MiB, listen
from .test_reload import ROOT, TWISTD, Daemon

IMAGE = "/images/talos/v1.11.2/amd64/openstack.raw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Body(Protocol):
    """Collects a response body as it arrives; `done` fires with how it ended."""

    def __init__(self):
        from twisted.internet.defer import Deferred

        self.data = bytearray()
        self.done = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason  # ResponseDone, or ResponseFailed / PotentialDataLoss when cut
        self.done.callback(None)


class Setup:
    def __init__(self, tmp_path, grace, image_size):
        self.tmp_path = tmp_path
        self.grace = grace
        self.fake = FakeFactory(image_size=image_size)
        self.cache = tmp_path / "cache"
        self.daemon = Daemon()
        self.proc = None
        self.ports = []
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    async def start(self):
        fport = await listen(self.fake.resource())
        self.ports.append(fport)
        self.port = free_port()
        config = self.tmp_path / "config.yaml"
        config.write_text(
            f"listen: tcp:{self.port}:interface=127.0.0.1\ntalos:\n"
            f"  base_url: http://127.0.0.1:{fport.getHost().port}\n  cache_directory: {self.cache}\n"
            f"  shutdown_grace: {self.grace}\n  scrub_rate: 0\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = reactor.spawnProcess(
            self.daemon, str(TWISTD), [str(TWISTD), "--nodaemon", "--pidfile=", "talos-images", "--config", str(config)],
            env=env, path=str(self.tmp_path),
        )
        await self.daemon.seen(b"listening on")

    async def get_streaming(self):
        """A GET of the image whose body is collected as it comes."""
        resp = await self.http.get(f"http://127.0.0.1:{self.port}{IMAGE}", unbuffered=True)
        body = Body()
        resp.deliverBody(body)
        return resp, body

    async def assert_refused(self):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
        with pytest.raises(ConnectionRefusedError):
            await connectProtocol(endpoint, Protocol())

    def temp_files(self):
        return list(self.cache.rglob("*.tmp-*"))

    def committed(self):
        return list(self.cache.rglob("openstack.raw"))

    def assert_clean_exit(self):
        """twistd's own end after a SIGTERM: the shutdown ran to its end, then twistd ends
        with the signal it got (Twisted does so on purpose; systemd counts SIGTERM as a
        clean exit), never killed by something else, never an exit status of failure."""
        reason = self.daemon.reason.value
        assert (reason.exitCode, reason.signal) in ((0, None), (None, 15)), (reason, self.tail())
        assert b"Server Shut Down." in self.daemon.out, self.tail()

    def tail(self):
        return self.daemon.out.decode(errors="replace")[-3000:]

    async def close(self):
        if self.proc is not None and not self.daemon.ended.called:
            self.proc.signalProcess("KILL")
            await self.daemon.ended
        self.fake.abort_all()
        await self.pool.closeCachedConnections()
        for p in self.ports:
            await p.stopListening()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_running_download_and_its_client_finish(tmp_path):
    s = Setup(tmp_path, "20s", 24 * MiB)
    try:
        await s.start()
        s.fake.rate_limit = 32 * 1024  # minutes at this pace: still running at SIGTERM
        resp, body = await s.get_streaming()
        assert resp.code == 200 and resp.headers.getRawHeaders(b"x-talos-cache") == [b"MISS"]
        schematic = resp.headers.getRawHeaders(b"x-talos-schematic")[0].decode()
        await s.daemon.seen(b"downloading v1.11.2/amd64/")
        assert s.temp_files()
        s.proc.signalProcess("TERM")
        await s.daemon.seen(b"shutting down: waiting up to 20s for 1 downloads and 1 clients being served")
        await s.assert_refused()  # the port closed before the wait began
        assert not s.daemon.ended.called and not body.done.called
        s.fake.rate_limit = 0  # the rest of the transfer comes at once, within the grace
        await body.done
        await s.daemon.ended
        expected = s.fake.raw_image(schematic, "v1.11.2", "openstack", "amd64")
        assert len(body.data) == len(expected) and hashlib.sha256(body.data).hexdigest() == hashlib.sha256(expected).hexdigest()
        s.assert_clean_exit()
        assert not s.temp_files(), "a temporary file outlived the daemon"
        [image] = s.committed()
        sidecar = json.loads(image.with_name("openstack.raw.json").read_text())
        assert sidecar["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest()
        assert b"shutting down: every transfer finished" in s.daemon.out, s.tail()
        assert b"cancelling" not in s.daemon.out and b"Traceback" not in s.daemon.out, s.tail()
    finally:
        await s.close()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_sigterm_cancels_what_outlasts_a_short_grace(tmp_path):
    s = Setup(tmp_path, "1s", 24 * MiB)
    try:
        await s.start()
        s.fake.rate_limit = 32 * 1024  # never done within the grace
        resp, body = await s.get_streaming()
        await s.daemon.seen(b"downloading v1.11.2/amd64/")
        assert s.temp_files()
        sent = time.monotonic()
        s.proc.signalProcess("TERM")
        await s.daemon.seen(b"shutting down: waiting up to 1s for 1 downloads")
        await s.assert_refused()
        await s.daemon.ended
        took = time.monotonic() - sent
        assert took < 1 + 4, f"exited {took:.1f}s after SIGTERM with shutdown_grace 1s"
        s.assert_clean_exit()
        await body.done
        assert body.reason.check(ResponseFailed), body.reason  # cut short: never a body that looks complete
        assert not s.temp_files(), "a temporary file outlived the daemon"
        assert not s.committed(), "a partial image was kept"
        out = s.daemon.out
        assert b"shutting down: the grace of 1s is over" in out, s.tail()
        assert b"shutting down: cancelling 1 downloads (v1.11.2/amd64/" in out, s.tail()
        assert b"Traceback" not in out, s.tail()
    finally:
        await s.close()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_shutdown_grace_zero_cancels_at_once(tmp_path):
    s = Setup(tmp_path, "0", 24 * MiB)
    try:
        await s.start()
        s.fake.rate_limit = 32 * 1024
        resp, body = await s.get_streaming()
        await s.daemon.seen(b"downloading v1.11.2/amd64/")
        sent = time.monotonic()
        s.proc.signalProcess("TERM")
        await s.daemon.ended
        assert time.monotonic() - sent < 3
        s.assert_clean_exit()
        await body.done
        assert not s.temp_files() and not s.committed()
        assert b"waiting up to" not in s.daemon.out and b"shutting down: cancelling 1 downloads" in s.daemon.out
    finally:
        await s.close()
