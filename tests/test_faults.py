"""Upstream and local faults, one test each, driven by the fake factory's knobs.

Each asserts what the client received, byte for byte, and what the cache holds afterwards.
"""

import errno
import json
import os
import threading

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import globalLogPublisher

import talos_twisted.writer as writer_module
from talos_twisted import xzparallel
from talos_twisted.schematic import Schematic

from .conftest import MiB, listen
from .rawhttp import assert_aborted, body_of, open_raw

EMPTY_ID = Schematic().id
QGA_ID = Schematic(extensions=("siderolabs/qemu-guest-agent",)).id


def committed(stack, root="cache"):
    base = stack.tmp_path / root / "images"
    if not base.exists():
        return []
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def compressed_size(stack, schematic=EMPTY_ID):
    return len(stack.fake.compressed_image(schematic, "v1.11.2", "openstack", "amd64", stack.config.talos.compression))


async def raw_get(stack, path="/images/talos/v1.11.2/amd64/openstack.raw"):
    return await open_raw(stack.url, path)


# the faults that cross the decoder: with the default zst, and with xz, whose factory-shaped
# body (1 MiB blocks with their sizes) is decoded in the xz pool, the zero blocks remembered
BOTH_COMPRESSIONS = pytest.mark.parametrize(
    "stack", [{"compression": "zst"}, {"compression": "xz"}], indirect=True, ids=["zst", "xz"]
)


def idle_xz_pool(stack):
    """With xz: the pool's threads are a few, whatever the downloads, with no work left."""
    if stack.config.talos.compression != "xz":
        return
    pool = xzparallel._pool
    assert pool is not None and pool._work_queue.qsize() == 0
    names = [t.name for t in threading.enumerate() if t.name.startswith("talos-xz")]
    assert len(names) <= xzparallel.block_workers()


def error_of(body):
    doc = json.loads(body)
    return doc["status"], doc["error"]


# --- metadata -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_metadata_5xx_then_success_is_retried(stack):
    stack.fake.fail_next(2, 500, route="versions")
    resp, body = await stack.get(stack.image_url(version="latest"))
    assert resp.code == 200 and body == stack.expected(EMPTY_ID)
    assert stack.fake.counts["versions"] == 3


@pytest.mark.stack(metadata_ttl=0)
@pytest_twisted.ensureDeferred
async def test_permanent_5xx_serves_the_last_known_answer(stack):
    resp, first = await stack.get(stack.image_url(version="latest"))
    assert resp.code == 200
    for route in ("versions", "extensions", "overlays"):
        stack.fake.fail_next(1000, 500, route=route)
    resp, again = await stack.get(stack.image_url(version="latest"))
    assert resp.code == 200 and resp.headers.getRawHeaders("X-Talos-Cache") == ["HIT"] and again == first
    resp, body = await stack.get(f"{stack.url}/images/talos/versions")
    assert resp.code == 200 and json.loads(body)["latest"] == "v1.11.2"


@pytest_twisted.ensureDeferred
async def test_permanent_5xx_with_nothing_known_is_503_with_retry_after(stack):
    stack.fake.fail_next(1000, 500, route="versions")
    resp, body = await stack.get(stack.image_url(version="latest"))
    status, message = error_of(body)
    assert resp.code == 503 == status and resp.headers.getRawHeaders("Retry-After") == ["30"]
    assert "answered 500 to GET /versions" in message
    assert stack.fake.counts["versions"] == 3  # bounded attempts
    assert committed(stack) == []


@pytest_twisted.ensureDeferred
async def test_factory_connection_refused_is_503(stack):
    port = await listen(stack.fake.resource())
    closed_url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()  # nothing listens there any more
    await stack.stop_daemon()
    await stack.start_daemon(base_url=closed_url, cache_directory=str(stack.tmp_path / "refused"))
    resp, body = await stack.get(stack.image_url())
    status, message = error_of(body)
    assert resp.code == 503 and resp.headers.getRawHeaders("Retry-After") == ["30"]
    assert "unreachable" in message


# --- before the first byte ------------------------------------------------------------


@pytest.mark.stack(build_timeout=0.3, first_byte_timeout=30)
@pytest_twisted.ensureDeferred
async def test_build_longer_than_build_timeout_is_504(stack):
    stack.fake.build_delay = 5.0
    resp, body = await stack.get(stack.image_url())
    status, message = error_of(body)
    assert resp.code == 504 == status and "did not start sending" in message
    assert stack.fake.counts["image_get"] == 3  # retried, bounded
    stack.fake.abort_all()
    await stack.app.downloads.quiesce()
    assert committed(stack) == []


@pytest_twisted.ensureDeferred
async def test_image_5xx_before_the_first_byte_is_retried(stack):
    stack.fake.fail_next(2, 500, route="image")
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 3


# --- mid-stream -----------------------------------------------------------------------


@BOTH_COMPRESSIONS
@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_cut_without_range_support_redownloads_and_verifies(stack):
    stack.fake.cut_next(compressed_size(stack) // 2)
    client = await raw_get(stack)
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 2
    await stack.sealed()
    resp, body = await stack.get(stack.image_url())
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["HIT"] and body == data


@BOTH_COMPRESSIONS
@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_cut_with_range_support_resumes_at_the_offset(stack):
    stack.fake.redirect = True
    size = compressed_size(stack)
    stack.fake.cut_next(size // 2)
    client = await raw_get(stack)
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 1, "a Range resume needs no new build"
    ranges = [h.get("range") for m, p, h in stack.fake.requests if p.startswith("/blob/") and h.get("range")]
    # the resume: one open range from the offset (with xz, a closed one reads the index too)
    assert [r for r in ranges if r.endswith("-")] == [f"bytes={size // 2}-"]


@pytest.mark.stack(image_size=32 * MiB, idle_timeout=0.3)
@pytest_twisted.ensureDeferred
async def test_body_stall_hits_the_idle_timeout_and_resumes(stack):
    stack.fake.stall_next(compressed_size(stack) // 3)
    client = await raw_get(stack)
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 2


@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_short_body_against_content_length_is_resumed(stack):
    stack.fake.short_next(compressed_size(stack) // 2)
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 2


@BOTH_COMPRESSIONS
@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_cut_then_a_different_image_aborts_and_keeps_nothing(stack, download_failures):
    size = compressed_size(stack)
    stack.fake.reproducible = False  # the rebuild after the cut produces other bytes
    stack.fake.cut_next(size // 2)
    client = await raw_get(stack)
    await client.closed
    assert_aborted(client)
    assert len(download_failures) == 1 and "different image" in download_failures[0]
    await stack.app.downloads.quiesce()
    assert committed(stack) == []
    assert stack.fake.counts["image_get"] == 2  # no further resume: a changed image is final
    # the next request gets a new build, whole
    resp, fresh = await stack.get(stack.image_url())
    assert resp.code == 200 and fresh == stack.expected(EMPTY_ID)
    idle_xz_pool(stack)


@BOTH_COMPRESSIONS
@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_corrupt_byte_aborts_and_keeps_nothing(stack, download_failures):
    stack.fake.corrupt_next()
    client = await raw_get(stack)
    await client.closed
    assert_aborted(client)
    assert len(download_failures) == 1 and "corrupt" in download_failures[0]
    await stack.app.downloads.quiesce()
    assert committed(stack) == []
    idle_xz_pool(stack)


# --- local faults ---------------------------------------------------------------------


class _DiskFullOS:
    """`os` for the writer, whose pwrite fails with ENOSPC past a byte budget."""

    def __init__(self, budget):
        self.budget = budget

    def __getattr__(self, name):
        return getattr(os, name)

    def pwrite(self, fd, data, offset):
        if offset + len(data) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.pwrite(fd, data, offset)


@BOTH_COMPRESSIONS
@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_disk_full_fails_the_download_cleanly_and_hits_still_serve(stack, monkeypatch, download_failures):
    resp, cached = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent"))
    monkeypatch.setattr(writer_module, "os", _DiskFullOS(8 * MiB))
    client = await raw_get(stack)
    await client.closed
    assert_aborted(client)
    assert len(download_failures) == 1 and "cannot write to the cache" in download_failures[0]
    await stack.app.downloads.quiesce()
    assert [p for p in committed(stack) if ".tmp-" in p] == []
    assert not any(EMPTY_ID in p for p in committed(stack))
    resp, again = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent"))
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["HIT"] and again == cached
    resp, health = await stack.get(stack.url + "/healthz")
    assert resp.code == 200
    idle_xz_pool(stack)


@pytest.mark.stack(max_downloads=1)
@pytest_twisted.ensureDeferred
async def test_downloads_beyond_the_limit_wait_their_turn(stack):
    stack.fake.build_delay = 0.3
    events = []

    def observe(event):
        fmt = event.get("log_format", "")
        if fmt.startswith("downloading {key}") or fmt.startswith("cached {key}"):
            events.append((fmt.split()[0], event["key"]))

    globalLogPublisher.addObserver(observe)
    try:
        first = Deferred.fromCoroutine(stack.get(stack.image_url()))
        second = Deferred.fromCoroutine(stack.get(stack.image_url(query="?extensions=qemu-guest-agent")))
        results = await DeferredList([first, second], fireOnOneErrback=True)
        await stack.app.downloads.quiesce()
    finally:
        globalLogPublisher.removeObserver(observe)
    (_, b1), (_, b2) = [r for _, r in results]
    assert b1 == stack.expected(EMPTY_ID) and b2 == stack.expected(QGA_ID)
    # one at a time: each download started only after the previous one was cached
    assert [kind for kind, _ in events] == ["downloading", "cached", "downloading", "cached"]
    assert events[0][1] == events[1][1] != events[2][1] == events[3][1]


@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_after_a_fresh_download_a_resume_uses_that_downloads_own_url(stack):
    # the first redirect's URL expires (a presigned URL): its Range resume gets 404 and the
    # image is fetched again, from a new URL; a break in that one resumes from the new URL
    stack.fake.redirect = True
    size = compressed_size(stack)
    stack.fake.expire_next_blob()
    stack.fake.cut_next(size // 3, times=2)
    client = await raw_get(stack)
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(EMPTY_ID)
    blobs = [(p, h.get("range")) for m, p, h in stack.fake.requests if m == "GET" and p.startswith("/blob/")]
    first, second = blobs[0][0], blobs[2][0]
    assert first != second
    assert blobs == [(first, None), (first, f"bytes={size // 3}-"), (second, None), (second, f"bytes={size // 3}-")]
    assert stack.fake.counts["image_get"] == 2
