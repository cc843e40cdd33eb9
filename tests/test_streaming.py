"""One download, many clients: coalescing, read-while-writer, backpressure, faults."""


import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.logger import globalLogPublisher

from talos_twisted.schematic import Schematic

from .conftest import MiB, sha256
from .rawhttp import RawClient, assert_aborted, body_of, connect as _connect, request_bytes

EMPTY_ID = Schematic().id


def raw_request(stack, path="/images/talos/v1.11.2/amd64/openstack.raw"):
    return request_bytes("GET", path)


async def connect(stack, client):
    return await _connect(stack.url, client)


def committed_files(stack):
    root = stack.tmp_path / "cache" / "images"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_clients_one_download(stack):
    stack.fake.rate_limit = 2 * MiB  # the download lasts long enough for all to join it
    results = await gatherResults([Deferred.fromCoroutine(stack.get(stack.image_url())) for _ in range(20)])
    expected = stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 1
    assert all(body == expected for _, body in results)
    outcomes = sorted(r.headers.getRawHeaders("X-Talos-Cache")[0] for r, _ in results)
    assert outcomes.count("MISS") == 1 and outcomes.count("JOIN") + outcomes.count("HIT") == 19


@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_clients_read_while_the_download_runs(stack):
    stack.fake.rate_limit = 1 * MiB
    client = await connect(stack, RawClient(raw_request(stack)))
    await client.got_some
    [download] = stack.app.downloads.active()
    assert download.state.value == "streaming", "the first byte must not wait for the whole download"
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(EMPTY_ID)


@pytest.mark.stack(image_size=64 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_stalled_client_does_not_hold_back_a_fast_one(stack):
    slow = await connect(stack, RawClient(raw_request(stack)))
    await slow.got_some
    slow.pause()  # stops reading: its socket fills and its producer is paused
    [download] = stack.app.downloads.active()
    resp, body = await stack.get(stack.image_url())
    assert body == stack.expected(EMPTY_ID)
    await download.ended.when()
    assert download.state.value == "committed"
    assert len(slow.data) < 48 * MiB, "the slow client must be held back by its own socket"
    slow.resume()
    await slow.closed
    data, complete = body_of(slow)
    assert complete and data == stack.expected(EMPTY_ID)


@pytest.mark.stack(image_size=32 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_client_that_disconnects_does_not_stop_the_download(stack):
    stack.fake.rate_limit = 4 * MiB
    client = await connect(stack, RawClient(raw_request(stack)))
    await client.got_some
    [download] = stack.app.downloads.active()
    client.transport.loseConnection()
    await client.closed
    await download.ended.when()
    assert download.state.value == "committed"
    resp, body = await stack.get(stack.image_url())
    assert resp.headers.getRawHeaders("X-Talos-Cache") == ["HIT"] and body == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 1


@pytest.mark.parametrize("fault", ["cut", "corrupt", "short"])
# a window shorter than any resume delay: the second failure without progress is the last
@pytest.mark.stack(image_size=32 * MiB, resume_window=0.001)
@pytest_twisted.ensureDeferred
async def test_a_failed_download_aborts_its_clients_and_keeps_nothing(stack, fault):
    size = len(stack.fake.compressed_image(EMPTY_ID, "v1.11.2", "openstack", "amd64", stack.config.talos.compression))
    stack.fake.rate_limit = 2 * MiB
    # persistent faults: every resumed attempt breaks off again, so the daemon gives up
    if fault == "cut":
        stack.fake.cut_next(size // 2, times=2)
    elif fault == "short":
        stack.fake.short_next(size // 2, times=2)
    else:
        stack.fake.corrupt_next()
    clients = [await connect(stack, RawClient(raw_request(stack))) for _ in range(2)]
    await DeferredList([c.closed for c in clients])
    await stack.app.downloads.quiesce()
    for c in clients:
        assert_aborted(c)
    assert committed_files(stack) == []
    # the next request downloads afresh and gets the exact image
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(EMPTY_ID)
    attempts = 1 if fault == "corrupt" else 1 + 1  # the first try and one resume
    assert stack.fake.counts["image_get"] == attempts + 1


@pytest.mark.stack(first_byte_timeout=0.3)
@pytest_twisted.ensureDeferred
async def test_first_byte_timeout_then_served_later(stack):
    stack.fake.build_delay = 1.0
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 503 and resp.headers.getRawHeaders("Retry-After") == ["30"]
    [download] = stack.app.downloads.active()
    await download.ended.when()
    assert download.state.value == "committed"
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(EMPTY_ID)
    assert stack.fake.counts["image_get"] == 1


@pytest.mark.stack(image_size=64 * MiB)
@pytest_twisted.ensureDeferred
async def test_reactor_stays_responsive_during_decompression(stack):
    stack.fake.compressed_image(EMPTY_ID, "v1.11.2", "openstack", "amd64", stack.config.talos.compression)  # pre-build in the fake
    transfer = Deferred.fromCoroutine(stack.get(stack.image_url()))
    worst = 0.0
    while not transfer.called:
        t0 = reactor.seconds()
        resp, _ = await stack.get(stack.url + "/healthz")
        worst = max(worst, reactor.seconds() - t0)
        assert resp.code == 200
    resp, body = await transfer
    assert body == stack.expected(EMPTY_ID)
    assert worst < 1.0, f"/healthz took {worst:.2f}s during a download"


@pytest.mark.stack(image_size=64 * MiB, client_stall_timeout=0.5)
@pytest_twisted.ensureDeferred
async def test_a_stalled_client_is_aborted_and_the_download_completes(stack):
    slow = await connect(stack, RawClient(raw_request(stack)))
    await slow.got_some
    aborted = Deferred()

    def observe(event):
        if "read nothing" in event.get("log_format", "") and not aborted.called:
            aborted.callback(None)

    globalLogPublisher.addObserver(observe)
    slow.pause()
    [download] = stack.app.downloads.active()
    try:
        await aborted  # the daemon gives up on it
    finally:
        globalLogPublisher.removeObserver(observe)
    slow.resume()  # a paused socket only notices the reset when it reads again
    await slow.closed
    assert not slow.reason.check(ConnectionDone)
    _, complete = body_of(slow)
    assert not complete
    await download.ended.when()
    assert download.state.value == "committed"


@pytest.mark.stack(checksum_wait=0.3)
@pytest_twisted.ensureDeferred
async def test_checksum_of_a_slow_download_is_503_then_served(stack):
    stack.fake.build_delay = 1.0
    resp, body = await stack.get(stack.image_url(checksum=True))
    assert resp.code == 503 and resp.headers.getRawHeaders("Retry-After") == ["30"]
    [download] = stack.app.downloads.active()
    await download.ended.when()
    resp, text = await stack.get(stack.image_url(checksum=True))
    _, body = await stack.get(stack.image_url())
    assert text.decode() == f"{sha256(body)}  openstack.raw\n"
    assert stack.fake.counts["image_get"] == 1
