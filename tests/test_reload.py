"""SIGHUP reloads what can change safely (here: the prefetch list) and says what changed;
SIGTERM during a transfer leaves no temporary file."""

import os
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

from talos_twisted.testing.fakefactory import FakeFactory

from .conftest import listen

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"


class Daemon(ProcessProtocol):
    def __init__(self):
        self.out = bytearray()
        self.ended = None

    def outReceived(self, data):
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended = reason


async def until(condition, what, seconds=60.0):
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_sighup_applies_a_changed_prefetch_list_and_sigterm_leaves_no_temp_file(tmp_path):
    fake = FakeFactory(image_size=64 * 1024 * 1024)
    port = await listen(fake.resource())
    config = tmp_path / "config.yaml"
    cache = tmp_path / "cache"
    base = f"http://127.0.0.1:{port.getHost().port}"
    config.write_text(f"listen: tcp:0:interface=127.0.0.1\ntalos:\n  base_url: {base}\n"
                      f"  cache_directory: {cache}\n  prefetch: []\n")
    daemon = Daemon()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = reactor.spawnProcess(daemon, str(TWISTD), [str(TWISTD), "--nodaemon", "--pidfile=", "talos-images",
                                                      "--config", str(config)], env=env, path=str(tmp_path))
    try:
        await until(lambda: b"listening on" in daemon.out, "the start-up line")
        assert fake.counts["image_get"] == 0
        config.write_text(config.read_text().replace("  prefetch: []\n",
                          "  prefetch:\n    - {version: v1.11.2, arch: amd64, platform: openstack}\n"))
        fake.rate_limit = 64 * 1024  # the prefetch download is still running at SIGTERM
        proc.signalProcess("HUP")
        await until(lambda: fake.counts["image_get"] == 1, "the prefetch started by the reload")
        assert b"configuration reloaded: prefetch applied" in daemon.out
        await until(lambda: list(cache.rglob("*.tmp-*")), "the download's temporary file")
        proc.signalProcess("TERM")
        await until(lambda: daemon.ended is not None, "the daemon to stop")
        assert not list(cache.rglob("*.tmp-*")), "a temporary file outlived the daemon"
        assert b"Traceback" not in daemon.out, daemon.out.decode(errors="replace")[-2000:]
    finally:
        if daemon.ended is None:
            proc.signalProcess("KILL")
            await until(lambda: daemon.ended is not None, "the daemon to be killed")
        fake.abort_all()
        await port.stopListening()
