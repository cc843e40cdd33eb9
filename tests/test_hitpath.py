"""The hit path (talos_twisted.hitpath): a repeated GET or HEAD of a cached image is answered
without Klein, exactly as the image route answers it, and declines whatever it cannot answer
so (a miss, a stale resolution, a reloaded configuration, a disabled server)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import pytest_twisted

from talos_twisted import web
from talos_twisted.hitpath import TargetMemo
from talos_twisted.schematic import Schematic

from .rawhttp import RawClient, connect, exchange, request_bytes
from .siteserver import until

IMAGE = "/images/talos/v1.11.2/amd64/openstack.raw"


@pytest.fixture
def routed(monkeypatch):
    """How many requests the Klein image route parsed (the hit path parses nothing)."""
    calls = []
    real = web.parse_image_request

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(web, "parse_image_request", counting)
    return calls


def comparable(status, headers, body):
    # a multipart answer's boundary is new each time; Date moves
    boundary = re.search(r"boundary=(\S+)", headers.get("content-type", ""))
    if boundary:
        body = body.replace(boundary.group(1).encode(), b"BOUNDARY")
        headers = {**headers, "content-type": headers["content-type"].replace(boundary.group(1), "BOUNDARY")}
    return status, {k: v for k, v in headers.items() if k != "date"}, body


CASES = [
    ("GET", {}, 200),
    ("HEAD", {}, 200),
    ("GET", {"Range": "bytes=100-1123"}, 206),
    ("GET", {"Range": "bytes=0-9, 5000-5009, -10"}, 206),
    ("GET", {"Range": "bytes=99999999-"}, 416),
    ("GET", {"If-Match": '"other"'}, 412),
    ("GET", {"If-Range": '"other"', "Range": "bytes=0-9"}, 200),
]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method,headers,status", CASES)
async def test_the_hit_path_answers_as_the_route_does(stack, routed, method, headers, status):
    assert (await exchange(stack.url, IMAGE))[0] == 200  # the target is now known
    await stack.app.downloads.quiesce()  # and the image cached
    stack.app.image_targets = TargetMemo()  # the next one goes through the route again
    before = len(routed)
    by_route = await exchange(stack.url, IMAGE, method, headers)
    assert len(routed) == before + 1
    by_hit_path = await exchange(stack.url, IMAGE, method, headers)
    assert len(routed) == before + 1, "the repeated request was answered without the route"
    assert by_route[0] == status
    assert comparable(*by_hit_path) == comparable(*by_route)
    assert by_hit_path[1].get("x-talos-cache") == ("HIT" if status != 416 else None)  # an error drops it


@pytest_twisted.ensureDeferred
async def test_a_conditional_get_and_latest(stack, routed):
    await exchange(stack.url, IMAGE)
    await stack.app.downloads.quiesce()
    _, headers, _ = await exchange(stack.url, IMAGE)
    for path, extra in ((IMAGE, {"If-None-Match": headers["etag"]}), ("/images/talos/latest/amd64/openstack.raw", {})):
        stack.app.image_targets = TargetMemo()
        by_route = await exchange(stack.url, path, "GET", extra)
        n = len(routed)
        by_hit_path = await exchange(stack.url, path, "GET", extra)
        assert len(routed) == n
        assert comparable(*by_hit_path) == comparable(*by_route)
    assert by_hit_path[1]["content-location"] == IMAGE and by_hit_path[1]["cache-control"] == "no-cache"


@pytest_twisted.ensureDeferred
async def test_it_declines_a_miss_a_stale_resolution_a_reload_and_a_disabled_server(stack, routed, monkeypatch):
    app = stack.app
    assert (await exchange(stack.url, IMAGE))[0] == 200
    await app.downloads.quiesce()
    n = len(routed)
    assert (await exchange(stack.url, IMAGE))[0] == 200 and len(routed) == n

    [entry] = app.cache.entries()
    app.cache.remove(entry.key)  # evicted: a miss again, through the route
    status, headers, _ = await exchange(stack.url, IMAGE)
    assert status == 200 and headers["x-talos-cache"] == "MISS" and len(routed) == n + 1

    await app.downloads.quiesce()
    with monkeypatch.context() as m:  # the metadata it was resolved with is stale
        m.setattr(app.factory, "fresh_until", lambda kinds: 0.0)
        await exchange(stack.url, IMAGE)
        assert len(routed) == n + 2

    app.config = replace(app.config)  # a reload: targets parsed under the old one are forgotten
    await exchange(stack.url, IMAGE)
    assert len(routed) == n + 3
    await exchange(stack.url, IMAGE)
    assert len(routed) == n + 3

    app.config = replace(app.config, enabled=False)
    status, headers, body = await exchange(stack.url, IMAGE)
    assert status == 503 and headers["content-type"] == "application/json" and b"disabled" in body


@pytest_twisted.ensureDeferred
@pytest.mark.stack(image_size=64 * 1024 * 1024)
async def test_a_client_gone_mid_body_leaves_nothing_pinned_and_the_server_serving(stack, routed):
    assert (await exchange(stack.url, IMAGE, "HEAD"))[0] == 200
    await until(lambda: stack.app.cache.entries(), what="the image committed")
    await exchange(stack.url, IMAGE, "HEAD")  # the route saw the target: the next GET is a hit-path one
    n = len(routed)

    class Leaving(RawClient):
        def dataReceived(self, data):
            RawClient.dataReceived(self, data)
            self.transport.abortConnection()  # gone after the first bytes of 64 MiB

    client = await connect(stack.url, Leaving(request_bytes("GET", IMAGE)))
    await client.closed
    assert len(routed) == n and client.data.startswith(b"HTTP/1.1 200 OK")
    await until(lambda: not stack.app.cache._pins, what="the entry unpinned")
    assert (await exchange(stack.url, IMAGE, "GET", {"Range": "bytes=0-3"}))[2] == stack.expected(Schematic().id)[:4]


@pytest_twisted.ensureDeferred
@pytest.mark.stack(max_ranges=2)
async def test_max_ranges_is_kept_by_the_route_and_the_hit_path(stack, routed):
    await exchange(stack.url, IMAGE)
    await stack.app.downloads.quiesce()
    n = len(routed)
    stack.app.image_targets = TargetMemo()
    for expect_routed in (n + 1, n + 1):
        status, headers, body = await exchange(stack.url, IMAGE, "GET", {"Range": "bytes=0-0,10-10,20-20"})
        assert len(routed) == expect_routed
        assert status == 200 and len(body) == int(headers["content-length"]), "more than max_ranges: the whole image"
        status, headers, _ = await exchange(stack.url, IMAGE, "GET", {"Range": "bytes=0-0,10-10"})
        assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
