"""A miss's last byte waits for the stream's checks, not for the hash, the fsync or the commit.

The writer hashes the file and syncs it (`ImageWriter.seal`) after the clients have every
byte: these tests hold the seal back, or make it fail, over real sockets.
"""

import errno
import hashlib
import os
import threading

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

import talos_twisted.writer as writer_module
from talos_twisted.schematic import Schematic
from talos_twisted.transfer import State

from .conftest import MiB
from .rawhttp import body_of, open_raw

EMPTY_ID = Schematic().id
PATH = "/images/talos/v1.11.2/amd64/openstack.raw"


def cached_files(stack):
    base = stack.tmp_path / "cache" / "images"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []


async def fetch(stack):
    """One GET of the image over a raw socket, to its end: (body, whether it was complete)."""
    client = await open_raw(stack.url, PATH)
    await client.closed
    return body_of(client)


@pytest.fixture
def held_seal(monkeypatch):
    """Every seal waits (in its thread) until the test lets it go, at most 30 s."""
    gate = threading.Event()
    entered = threading.Event()
    original = writer_module.ImageWriter.seal

    def seal(self):
        entered.set()
        gate.wait(30)
        return original(self)

    monkeypatch.setattr(writer_module.ImageWriter, "seal", seal)
    yield gate, entered
    gate.set()  # never leave a pool thread waiting


@pytest.mark.stack(image_size=16 * MiB, compression="zst")
@pytest_twisted.ensureDeferred
async def test_the_last_byte_does_not_wait_for_the_hash(stack, held_seal):
    gate, entered = held_seal
    data, complete = await fetch(stack)
    # the client is done while the writer has not even started hashing the file
    assert complete and data == stack.expected(EMPTY_ID)
    (download,) = stack.app.downloads.active()
    assert download.state == State.SEALING and entered.is_set()
    assert [p for p in cached_files(stack) if ".tmp-" not in p] == []  # not in the cache yet
    # a client arriving now still gets the whole image, from the download
    resp, again = await stack.get(stack.image_url(), settle=False)
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["JOIN"] and again == data
    gate.set()
    await stack.app.downloads.quiesce()
    resp, hit = await stack.get(stack.image_url())
    digest = hashlib.sha256(data).hexdigest()
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["HIT"] and hit == data
    assert resp.headers.getRawHeaders("ETag") == [f'"sha256-{digest}"']
    resp, checksum = await stack.get(stack.image_url(checksum=True))
    assert checksum.decode() == f"{digest}  openstack.raw\n"


class _FsyncFailsOS:
    """`os` for the writer, whose fsync fails with EIO (a disk that lost the write-back)."""

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.stack(image_size=16 * MiB, compression="zst")
@pytest_twisted.ensureDeferred
async def test_a_seal_that_fails_keeps_nothing_and_the_client_still_has_the_image(stack, monkeypatch, download_failures):
    monkeypatch.setattr(writer_module, "os", _FsyncFailsOS())
    data, complete = await fetch(stack)
    assert complete and data == stack.expected(EMPTY_ID)  # verified bytes, whatever the disk does next
    await stack.app.downloads.quiesce()
    assert len(download_failures) == 1 and "cannot write to the cache: Input/output error" in download_failures[0]
    assert cached_files(stack) == []  # no entry, no temporary file
    monkeypatch.undo()
    resp, again = await stack.get(stack.image_url())
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["MISS"] and again == data
    resp, health = await stack.get(stack.url + "/healthz")
    assert resp.code == 200


@pytest.mark.stack(image_size=16 * MiB, compression="zst")
@pytest_twisted.ensureDeferred
async def test_a_shutdown_while_sealing_keeps_the_image(stack, held_seal):
    gate, entered = held_seal
    assert await fetch(stack) == (stack.expected(EMPTY_ID), True)
    stopping = Deferred.fromCoroutine(stack.stop_daemon())
    assert not stopping.called  # the stop waits for the seal, it does not cancel a complete image
    gate.set()
    await stopping
    await stack.start_daemon()
    resp, hit = await stack.get(stack.image_url())
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["HIT"] and hit == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 1
