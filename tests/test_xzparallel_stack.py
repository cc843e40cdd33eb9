"""The daemon's xz downloads with blocks decoded in the pool: faults end as they did before.

The same faults as tests/test_faults.py, with `compression: xz` and the fake's
factory-shaped body (1 MiB blocks with their sizes: decoded in the pool, the zero ones
remembered), so a resume, a re-download checked against the file, a corrupt byte and a
full disk all cross the thread boundary of the parallel decoder.
"""

import threading

import pytest
import pytest_twisted

import talos_twisted.writer as writer_module
from talos_twisted import decompress, xzparallel

from .conftest import MiB
from .rawhttp import assert_aborted, body_of
from .test_faults import EMPTY_ID, _DiskFullOS, committed, compressed_size, raw_get

XZ = dict(image_size=32 * MiB, compression="xz")


def idle_pool():
    """The xz pool's threads: a few, whatever the downloads, and no work left for them."""
    pool = xzparallel._pool
    assert pool is not None and pool._work_queue.qsize() == 0
    names = [t.name for t in threading.enumerate() if t.name.startswith("talos-xz")]
    assert len(names) <= xzparallel.block_workers()


@pytest.mark.stack(**XZ)
@pytest_twisted.ensureDeferred
async def test_xz_miss_is_the_image_and_is_decoded_in_the_pool(stack, monkeypatch):
    decoders = []
    real = decompress.make_decoder

    def spy(*args, **kwargs):
        decoders.append(real(*args, **kwargs))
        return decoders[-1]

    monkeypatch.setattr("talos_twisted.download.make_decoder", spy)
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(EMPTY_ID)
    [dec] = decoders
    assert not dec.sequential and dec.blocks_remembered > dec.blocks_decoded > 0
    idle_pool()


@pytest.mark.stack(**XZ)
@pytest_twisted.ensureDeferred
async def test_xz_cut_without_range_support_redownloads_and_verifies(stack):
    stack.fake.cut_next(compressed_size(stack) // 2)
    client = await raw_get(stack)
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 2
    await stack.sealed()
    resp, body = await stack.get(stack.image_url())
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["HIT"] and body == data


@pytest.mark.stack(**XZ)
@pytest_twisted.ensureDeferred
async def test_xz_cut_with_range_support_resumes_at_the_offset(stack):
    stack.fake.redirect = True
    size = compressed_size(stack)
    stack.fake.cut_next(size // 2)
    client = await raw_get(stack)
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 1


@pytest.mark.stack(**XZ)
@pytest_twisted.ensureDeferred
async def test_xz_cut_then_a_different_image_aborts_and_keeps_nothing(stack, download_failures):
    stack.fake.reproducible = False
    stack.fake.cut_next(compressed_size(stack) // 2)
    client = await raw_get(stack)
    await client.closed
    assert_aborted(client)
    assert len(download_failures) == 1 and "different image" in download_failures[0]
    await stack.app.downloads.quiesce()
    assert committed(stack) == []
    idle_pool()


@pytest.mark.stack(**XZ)
@pytest_twisted.ensureDeferred
async def test_xz_corrupt_byte_aborts_and_keeps_nothing(stack, download_failures):
    stack.fake.corrupt_next()
    client = await raw_get(stack)
    await client.closed
    assert_aborted(client)
    assert len(download_failures) == 1 and "corrupt" in download_failures[0]
    await stack.app.downloads.quiesce()
    assert committed(stack) == []
    idle_pool()


@pytest.mark.stack(**XZ)
@pytest_twisted.ensureDeferred
async def test_xz_disk_full_fails_the_download_cleanly(stack, monkeypatch, download_failures):
    monkeypatch.setattr(writer_module, "os", _DiskFullOS(8 * MiB))
    client = await raw_get(stack)
    await client.closed
    assert_aborted(client)
    assert len(download_failures) == 1 and "cannot write to the cache" in download_failures[0]
    await stack.app.downloads.quiesce()
    assert [p for p in committed(stack) if ".tmp-" in p] == []
    idle_pool()
