"""SIGHUP reloads what can change safely (here: the prefetch list) and says what changed;
SIGTERM during a transfer leaves no temporary file."""

import os
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.defer import Deferred

from talos_twisted.testing.fakefactory import FakeFactory

from .conftest import listen

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"


class Daemon(ProcessProtocol):
    """twistd as a child: its output, Deferreds for lines to come, and its end."""

    def __init__(self):
        self.out = bytearray()
        self.ended: Deferred = Deferred()
        self._waiting: list[tuple[bytes, Deferred]] = []

    def seen(self, text: bytes) -> Deferred:
        """Fires once `text` has appeared in the output (at once if it has)."""
        d = Deferred()
        self._waiting.append((text, d))
        self._check()
        return d

    def _check(self):
        for text, d in list(self._waiting):
            if text in self.out:
                self._waiting.remove((text, d))
                d.callback(None)

    def outReceived(self, data):
        self.out += data
        self._check()

    errReceived = outReceived

    def processEnded(self, reason):
        self.reason = reason  # signalled: a ProcessTerminated, not an error of the test
        self.ended.callback(None)


@pytest_twisted.ensureDeferred
async def test_sighup_applies_a_changed_prefetch_list_and_sigterm_leaves_no_temp_file(tmp_path):
    fake = FakeFactory(image_size=64 * 1024 * 1024)
    port = await listen(fake.resource())
    config = tmp_path / "config.yaml"
    cache = tmp_path / "cache"
    base = f"http://127.0.0.1:{port.getHost().port}"
    config.write_text(f"listen: tcp:0:interface=127.0.0.1\ntalos:\n  base_url: {base}\n"
                      f"  cache_directory: {cache}\n  prefetch: []\n"
                      "  shutdown_grace: 0\n")  # SIGTERM cancels the download (tests/test_shutdown.py: a grace)
    daemon = Daemon()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = reactor.spawnProcess(daemon, str(TWISTD), [str(TWISTD), "--nodaemon", "--pidfile=", "talos-images",
                                                      "--config", str(config)], env=env, path=str(tmp_path))
    try:
        await daemon.seen(b"listening on")  # each wait is bounded by the test's timeout
        assert fake.counts["image_get"] == 0
        config.write_text(config.read_text().replace("  prefetch: []\n",
                          "  prefetch:\n    - {version: v1.11.2, arch: amd64, platform: openstack}\n"))
        fake.rate_limit = 64 * 1024  # the prefetch download is still running at SIGTERM
        proc.signalProcess("HUP")
        await daemon.seen(b"configuration reloaded: prefetch applied")
        # logged once its temporary file exists and the factory has answered
        await daemon.seen(b"downloading v1.11.2/amd64/")
        assert fake.counts["image_get"] == 1 and list(cache.rglob("*.tmp-*"))
        proc.signalProcess("TERM")
        await daemon.ended
        assert not list(cache.rglob("*.tmp-*")), "a temporary file outlived the daemon"
        assert b"Traceback" not in daemon.out, daemon.out.decode(errors="replace")[-2000:]
    finally:
        if not daemon.ended.called:
            proc.signalProcess("KILL")
            await daemon.ended
        fake.abort_all()
        await port.stopListening()
