"""The cache as operators need it, over real sockets: restarts, offline operation, the size
limit, every header, curl, the checksum file as Ironic/IPA read it, the cache listing."""

from __future__ import annotations

import json
import os
import re
import shutil
from email.utils import parsedate_to_datetime
from urllib.parse import urlparse

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from talos_twisted.request import ImageKey
from talos_twisted.schematic import Overlay, Schematic

from .conftest import MiB, sha256
from .rawhttp import RawClient, body_of, connect, exchange, raw_head as _raw_head, request_bytes

EMPTY = Schematic()
QGA = Schematic(extensions=("siderolabs/qemu-guest-agent",))
ISCSI = Schematic(extensions=("siderolabs/iscsi-tools",))
BOTH = Schematic(extensions=("siderolabs/iscsi-tools", "siderolabs/qemu-guest-agent"))
RPI = Schematic(overlay=Overlay("rpi_generic", "siderolabs/sbc-raspberrypi"))
Q_QGA = "?extensions=qemu-guest-agent"
Q_ISCSI = "?extensions=iscsi-tools"
Q_BOTH = "?extensions=qemu-guest-agent,iscsi-tools"
PINNED_CACHE_CONTROL = "max-age=86400"

# An image of the stack's default 4 MiB occupies 516 KiB on disk (sparse, written in 64 KiB
# blocks): room for two, not three.
TWO_IMAGES = 1300 * 1024


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


async def raw(stack, path, method="GET", headers=None):
    return await exchange(stack.url, path, method, headers)


def path_of(stack, url):
    return url[len(stack.url):]


async def raw_head(stack, url):
    return await _raw_head(stack.url, path_of(stack, url))


async def listing(stack):
    resp, body = await stack.get(f"{stack.url}/images/talos/cache")
    assert resp.code == 200 and header(resp, "Content-Type") == "application/json"
    return json.loads(body)


def key_of(schematic, version="v1.11.2", arch="amd64", platform="openstack"):
    return ImageKey(version, arch, schematic.id, platform)


# --- restarts ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_restart_removes_leftovers_keeps_good_entries_and_refetches_the_rest(stack):
    cache = stack.app.cache
    for query in ("", Q_QGA, Q_ISCSI):
        resp, _ = await stack.get(stack.image_url(query=query))
        assert resp.code == 200
    await stack.app.downloads.quiesce()  # hashed and committed after the clients got their bytes
    assert stack.fake.counts["image_get"] == 3
    good = cache.path_for(key_of(EMPTY))
    # a temp file left by a write interrupted next to a good entry
    leftover = good + ".tmp-abc"
    with open(leftover, "wb") as f:
        f.write(b"\x01" * 5000)
    # an entry whose sidecar is lost: it cannot be trusted
    lost = cache.path_for(key_of(ISCSI))
    os.unlink(lost + ".json")
    # an image file without any sidecar, as a crash between rename and sidecar leaves it
    stray = cache.path_for(key_of(QGA, version="v1.11.1", platform="nocloud"))
    os.makedirs(os.path.dirname(stray))
    with open(stray, "wb") as f:
        f.write(b"\x02" * 5000)
    # a download killed half way: only its temp file exists
    interrupted = cache.path_for(key_of(BOTH))
    os.makedirs(os.path.dirname(interrupted), exist_ok=True)
    partial = interrupted + ".tmp-0123456789ab"
    with open(partial, "wb") as f:
        f.write(stack.expected(BOTH.id)[: 1 * MiB])

    await stack.stop_daemon()
    await stack.start_daemon()

    for path in (leftover, lost, stray, partial, interrupted):
        assert not os.path.exists(path), path
    for dirpath, _dirs, files in os.walk(stack.app.cache.images):
        assert not [f for f in files if ".tmp-" in f], dirpath
    doc = await listing(stack)
    assert {e["schematic"] for e in doc["entries"]} == {EMPTY.id, QGA.id}

    for schematic, query in ((EMPTY, ""), (QGA, Q_QGA)):
        resp, body = await stack.get(stack.image_url(query=query))
        assert header(resp, "X-Talos-Cache") == "HIT" and body == stack.expected(schematic.id)
    assert stack.fake.counts["image_get"] == 3
    for schematic, query in ((ISCSI, Q_ISCSI), (BOTH, Q_BOTH)):
        resp, body = await stack.get(stack.image_url(query=query))
        assert header(resp, "X-Talos-Cache") == "MISS" and body == stack.expected(schematic.id)
    assert stack.fake.counts["image_get"] == 5
    resp, body = await stack.get(stack.image_url(query=Q_BOTH))
    assert header(resp, "X-Talos-Cache") == "HIT"


async def go_offline(stack, how):
    if how == "failing":
        for route in ("versions", "extensions", "overlays", "schematics", "image", "blob"):
            stack.fake.fail_next(1000, 503, route=route)
    else:  # the factory's port is closed: connections are refused
        fport = stack.ports[0]
        await fport.stopListening()
        stack.ports.remove(fport)


@pytest.mark.parametrize("how", ["failing", "unreachable"])
@pytest_twisted.ensureDeferred
async def test_offline_restart_serves_latest_from_the_cache(stack, how):
    resp, first = await stack.get(stack.image_url(version="latest", query=Q_QGA))
    assert resp.code == 200 and header(resp, "X-Talos-Version") == "v1.11.2"
    await stack.stop_daemon()
    await go_offline(stack, how)
    await stack.start_daemon()
    url = stack.image_url(version="latest", query=Q_QGA)  # the daemon's new port

    # the versions list and the catalog are the last known ones, kept in the cache directory
    resp, again = await stack.get(url)
    assert resp.code == 200 and header(resp, "X-Talos-Cache") == "HIT"
    assert header(resp, "X-Talos-Version") == "v1.11.2"
    assert header(resp, "Content-Location") == "/images/talos/v1.11.2/amd64/openstack.raw" + Q_QGA
    assert again == first
    resp, pinned = await stack.get(stack.image_url(query=Q_QGA))
    assert header(resp, "X-Talos-Cache") == "HIT" and pinned == first

    # an image not cached cannot be had
    resp, body = await stack.get(stack.image_url(version="latest", query=Q_ISCSI))
    assert resp.code in (502, 503, 504)
    assert header(resp, "Content-Type") == "application/json"
    doc = json.loads(body)
    assert doc["status"] == resp.code and "image factory" in doc["error"]
    if resp.code == 503:
        assert int(header(resp, "Retry-After")) > 0
    never = os.path.dirname(stack.app.cache.path_for(key_of(ISCSI)))
    assert not os.path.isdir(never) or os.listdir(never) == []
    await stack.app.downloads.quiesce()


# --- the size limit -----------------------------------------------------------------


@pytest.mark.stack(max_cache_size=TWO_IMAGES)
@pytest_twisted.ensureDeferred
async def test_max_cache_size_evicts_the_least_recently_used(stack):
    cache = stack.app.cache
    await stack.get(stack.image_url())  # A
    doc = await listing(stack)
    [entry] = doc["entries"]
    usage = entry["disk_usage"]
    assert usage < entry["size"], "images are stored sparse"
    assert 2 * usage <= TWO_IMAGES < 3 * usage, f"TWO_IMAGES must fit two images of {usage} bytes on disk"
    assert doc["max_cache_size"] == TWO_IMAGES

    await stack.get(stack.image_url(query=Q_QGA))  # B
    resp, _ = await stack.get(stack.image_url())  # A again: B is now the least recently used
    assert header(resp, "X-Talos-Cache") == "HIT"
    resp, body = await stack.get(stack.image_url(query=Q_ISCSI))  # C: over the limit, B goes
    assert header(resp, "X-Talos-Cache") == "MISS" and body == stack.expected(ISCSI.id)
    await stack.app.downloads.quiesce()

    doc = await listing(stack)
    assert [e["schematic"] for e in doc["entries"]] == [ISCSI.id, EMPTY.id]  # most recent first
    assert doc["disk_usage"] == 2 * usage <= TWO_IMAGES
    evicted = cache.path_for(key_of(QGA))
    assert not os.path.exists(evicted) and not os.path.exists(evicted + ".json")
    for schematic in (EMPTY, ISCSI):
        assert os.path.exists(cache.path_for(key_of(schematic)))
    resp, body = await stack.get(stack.image_url(query=Q_QGA))
    assert header(resp, "X-Talos-Cache") == "MISS" and body == stack.expected(QGA.id)
    assert stack.fake.counts["image_get"] == 4


@pytest.mark.stack(max_cache_size=TWO_IMAGES)
@pytest_twisted.ensureDeferred
async def test_an_image_larger_than_the_cache_is_streamed_but_not_kept(stack):
    await stack.get(stack.image_url())
    await stack.get(stack.image_url(query=Q_QGA))
    before = await listing(stack)
    stack.fake.data_fraction = 0.6  # same size, far more data: more disk than the whole cache

    url = stack.image_url(query=Q_ISCSI)
    status, headers, body = await raw(stack, path_of(stack, url))
    assert status == 200 and headers["x-talos-cache"] == "MISS"
    # the zstd frame declared the size: a miss has Content-Length like a hit
    assert headers["content-length"] == str(len(body)) and "transfer-encoding" not in headers
    data = body
    assert data == stack.expected(ISCSI.id)
    await stack.app.downloads.quiesce()

    after = await listing(stack)
    assert [e["schematic"] for e in after["entries"]] == [e["schematic"] for e in before["entries"]]
    kept = os.path.dirname(stack.app.cache.path_for(key_of(ISCSI)))
    assert not os.path.isdir(kept) or os.listdir(kept) == []
    resp, again = await stack.get(url)
    assert header(resp, "X-Talos-Cache") == "MISS" and again == data
    assert stack.fake.counts["image_get"] == 4
    # the checksum of an image that cannot be kept is a clear error, not a wrong answer
    resp, text = await stack.get(stack.image_url(query=Q_ISCSI, checksum=True))
    assert resp.code == 507 and json.loads(text)["status"] == 507
    await stack.app.downloads.quiesce()


# --- every header -------------------------------------------------------------------


def check_image_headers(headers, version, cache, schematic=QGA, platform="openstack", arch="amd64"):
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == f'attachment; filename="talos-{version}-{arch}-{platform}.raw"'
    assert headers["x-talos-version"] == version
    assert headers["x-talos-schematic"] == schematic.id
    assert headers["x-talos-cache"] == cache


@pytest_twisted.ensureDeferred
async def test_headers_of_a_pinned_image_miss_then_hit(stack):
    url = stack.image_url(query=Q_QGA)
    expected = stack.expected(QGA.id)
    status, h, body = await raw(stack, path_of(stack, url))
    assert status == 200
    check_image_headers(h, "v1.11.2", "MISS")
    assert h["cache-control"] == PINNED_CACHE_CONTROL
    assert "content-location" not in h
    # streamed while downloading, with the length the zstd frame declared; no validators yet
    assert h["content-length"] == str(len(expected)) and "transfer-encoding" not in h
    assert "etag" not in h and "last-modified" not in h
    assert body == expected

    status, h, body = await raw(stack, path_of(stack, url))
    assert status == 200
    check_image_headers(h, "v1.11.2", "HIT")
    assert h["cache-control"] == PINNED_CACHE_CONTROL and "content-location" not in h
    assert h["content-length"] == str(len(expected)) and body == expected
    assert h["accept-ranges"] == "bytes"
    assert h["etag"] == f'"sha256-{sha256(expected)}"'
    [entry] = stack.app.cache.entries()
    assert parsedate_to_datetime(h["last-modified"]).timestamp() == int(entry.created)

    head_status, head = await raw_head(stack, url)
    assert head_status == 200
    for name in ("content-type", "content-disposition", "content-length", "accept-ranges", "etag",
                 "last-modified", "cache-control", "x-talos-version", "x-talos-schematic", "x-talos-cache"):
        assert head[name] == h[name], name


@pytest_twisted.ensureDeferred
async def test_headers_of_latest_miss_then_hit(stack):
    url = stack.image_url(version="latest", arch="arm64", platform="metal", query="?overlay=rpi-generic")
    expected = stack.expected(RPI.id, platform="metal", arch="arm64")
    pinned = "/images/talos/v1.11.2/arm64/metal.raw?overlay=rpi-generic"
    for cache in ("MISS", "HIT"):
        status, h, body = await raw(stack, path_of(stack, url))
        assert status == 200
        check_image_headers(h, "v1.11.2", cache, schematic=RPI, platform="metal", arch="arm64")
        # `latest` moves: caches must revalidate; the pinned URL names these bytes for good
        assert h["cache-control"] == "no-cache"
        assert h["content-location"] == pinned
        assert body == expected
    assert h["etag"] == f'"sha256-{sha256(expected)}"'
    status, hp, _ = await raw(stack, pinned)
    assert hp["x-talos-cache"] == "HIT" and hp["etag"] == h["etag"]
    assert hp["cache-control"] == PINNED_CACHE_CONTROL and "content-location" not in hp


@pytest_twisted.ensureDeferred
async def test_join_while_downloading(stack):
    url = stack.image_url(query=Q_QGA)
    stack.fake.rate_limit = 16 * 1024  # slow enough that the download is still running
    first = await connect(stack.url, RawClient(request_bytes("GET", path_of(stack, url))))
    await first.got_some  # streaming has begun
    [download] = stack.app.downloads.active()
    assert not download.ended.fired
    second = await connect(stack.url, RawClient(first.request_bytes))
    await second.got_some
    stack.fake.rate_limit = 0
    await first.closed
    await second.closed
    for client, cache in ((first, "MISS"), (second, "JOIN")):
        head, body = client.split()
        assert head.startswith(b"HTTP/1.1 200")
        assert f"X-Talos-Cache: {cache}".encode() in head
        assert body_of(client) == (stack.expected(QGA.id), True)
    assert stack.fake.counts["image_get"] == 1


@pytest_twisted.ensureDeferred
async def test_conditional_requests_answer_304(stack):
    url = stack.image_url(version="latest", query=Q_QGA)
    await stack.get(url)
    await stack.app.downloads.quiesce()
    status, h, full = await raw(stack, path_of(stack, url))
    etag, modified = h["etag"], h["last-modified"]
    earlier = "Mon, 01 Jan 2001 00:00:00 GMT"
    for conditions in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", {etag}'},
        {"If-None-Match": "W/" + etag},  # If-None-Match compares weakly
        {"If-None-Match": "*"},
        {"If-Modified-Since": modified},
    ):
        status, h304, body = await raw(stack, path_of(stack, url), headers=conditions)
        assert status == 304 and body == b"", conditions
        # a 304 carries what a 200 would have for the cache to update its copy
        assert h304["etag"] == etag and h304["cache-control"] == "no-cache"
        assert h304["content-location"] == h["content-location"]
        assert h304["x-talos-version"] == "v1.11.2"
        # ... but no metadata of a body it does not have (RFC 9110 §15.4.5; REDbot warns)
        assert not {"content-type", "content-disposition", "content-length"} & set(h304), h304
    for conditions in (
        {"If-None-Match": '"other"'},
        {"If-Modified-Since": earlier},
        {"If-None-Match": '"other"', "If-Modified-Since": modified},  # If-None-Match wins
    ):
        status, _, body = await raw(stack, path_of(stack, url), headers=conditions)
        assert status == 200 and body == full, conditions


@pytest_twisted.ensureDeferred
async def test_if_range(stack):
    url = stack.image_url()
    _, full = await stack.get(url)
    await stack.app.downloads.quiesce()
    status, h, _ = await raw(stack, path_of(stack, url), method="HEAD")
    etag, modified = h["etag"], h["last-modified"]
    rng = {"Range": "bytes=10-19"}
    status, h, body = await raw(stack, path_of(stack, url), headers={**rng, "If-Range": etag})
    assert status == 206 and body == full[10:20] and h["content-range"] == f"bytes 10-19/{len(full)}"
    status, h, body = await raw(stack, path_of(stack, url), headers={**rng, "If-Range": modified})
    assert status == 206 and body == full[10:20]
    for stale in ('"sha256-0000"', "W/" + etag, "Mon, 01 Jan 2001 00:00:00 GMT"):
        status, h, body = await raw(stack, path_of(stack, url), headers={**rng, "If-Range": stale})
        assert status == 200 and body == full and h["content-length"] == str(len(full)), stale


def parse_byteranges(content_type: str, body: bytes) -> list[tuple[int, int, int, bytes]]:
    """A strict multipart/byteranges parser: [(first, last, size, data)]."""
    m = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", content_type)
    assert m, content_type
    delimiter = b"--" + m.group(1).encode()
    parts = []
    pos = body.index(delimiter)
    assert body[:pos].strip(b"\r\n") == b"", "only line breaks before the first boundary"
    while True:
        pos += len(delimiter)
        if body[pos:pos + 2] == b"--":
            assert body[pos + 2:].strip(b"\r\n") == b""
            return parts
        assert body[pos:pos + 2] == b"\r\n"
        end_of_head = body.index(b"\r\n\r\n", pos)
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in body[pos + 2:end_of_head].decode().split("\r\n"))
        )
        assert headers["content-type"] == "application/octet-stream"
        cr = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers["content-range"])
        first, last, size = (int(x) for x in cr.groups())
        start = end_of_head + 4
        data = body[start:start + last - first + 1]
        parts.append((first, last, size, data))
        pos = start + len(data)
        assert body[pos:pos + 2] == b"\r\n"
        pos += 2
        assert body[pos:pos + len(delimiter)] == delimiter


@pytest_twisted.ensureDeferred
async def test_ranges_single_multiple_and_unsatisfiable(stack):
    url = stack.image_url(query=Q_QGA)
    _, full = await stack.get(url)
    size = len(full)
    path = path_of(stack, url)

    status, h, body = await raw(stack, path, headers={"Range": "bytes=65536-65599"})
    assert status == 206 and body == full[65536:65600]
    assert h["content-range"] == f"bytes 65536-65599/{size}" and h["content-length"] == "64"
    assert h["content-type"] == "application/octet-stream" and h["x-talos-cache"] == "HIT"

    # sorted, and overlapping ranges coalesced (0-9 with 5-20): never more bytes than asked
    spec = [(0, 20), (100, 199), (65530, 65545), (size - 16, size - 1)]
    header_value = "bytes=0-9,100-199,-16,65530-65545,5-20"
    status, h, body = await raw(stack, path, headers={"Range": header_value})
    assert status == 206 and "content-range" not in h
    assert h["content-length"] == str(len(body))
    parts = parse_byteranges(h["content-type"], body)
    assert [(a, b) for a, b, _, _ in parts] == spec
    for first, last, total, data in parts:
        assert total == size and data == full[first:last + 1]

    # a range past the end is clamped; one entirely past it alone is 416
    status, h, body = await raw(stack, path, headers={"Range": f"bytes={size - 10}-{size + 100}"})
    assert status == 206 and body == full[-10:]
    for unsatisfiable in (f"bytes={size}-", f"bytes={size}-{size + 10}", "bytes=-0"):
        status, h, body = await raw(stack, path, headers={"Range": unsatisfiable})
        assert status == 416, unsatisfiable
        assert h["content-range"] == f"bytes */{size}"
        assert h["content-type"] == "application/json" and json.loads(body)["status"] == 416
    # malformed or other units are ignored: the whole image
    for ignored in ("bytes=abc", "items=0-9", "bytes=20-10"):
        status, h, body = await raw(stack, path, headers={"Range": ignored})
        assert status == 200 and body == full, ignored


# --- curl ----------------------------------------------------------------------------


async def curl(*args):
    """Run the real curl without blocking the reactor (which serves it)."""
    exe = shutil.which("curl")
    assert exe, "curl is needed for these tests"
    out, err, code = await getProcessOutputAndValue(
        exe, ("--noproxy", "*", "--silent", "--show-error", "--max-time", "60", *args),
        env=dict(os.environ), reactor=reactor,
    )
    assert code == 0, err.decode(errors="replace")
    return out


def curl_headers(out: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = out.decode("latin-1").strip().split("\r\n")
    return int(status_line.split()[1]), {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)
    }


@pytest_twisted.ensureDeferred
async def test_curl(stack, tmp_path):
    url = stack.image_url(query=Q_QGA)
    expected = stack.expected(QGA.id)

    # HEAD of a miss: 200 with the length the zstd frame declared; the download goes on
    status, h = curl_headers(await curl("-I", url))
    assert status == 200 and h["content-length"] == str(len(expected)) and h["x-talos-cache"] == "MISS"
    await stack.app.downloads.quiesce()

    # a miss downloaded with -o is the exact image
    other = stack.image_url(query=Q_ISCSI)
    target = tmp_path / "openstack.raw"
    out = await curl("-o", str(target), "-D", "-", other)
    status, h = curl_headers(out)
    assert status == 200 and h["x-talos-cache"] == "MISS"
    assert target.read_bytes() == stack.expected(ISCSI.id)

    status, h = curl_headers(await curl("-I", url))
    assert status == 200 and h["x-talos-cache"] == "HIT"
    assert h["content-length"] == str(len(expected)) and h["accept-ranges"] == "bytes"

    assert await curl("-r", "100-199", url) == expected[100:200]
    assert stack.fake.counts["image_get"] == 2


# --- the checksum file, read as Ironic / IPA do --------------------------------------

_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}


def ironic_checksum(text: str, image_url: str) -> tuple[str, str]:
    """(algorithm, hex) from a checksum file, by the rules of Ironic / IPA: one bare hex
    value, or `<hex>  <name>` lines of which the one naming the basename of the image URL's
    path (query left out; a leading `*` marks binary mode) counts; the algorithm follows
    from the length."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    assert lines, "empty checksum file"
    value = None
    if len(lines) == 1 and " " not in lines[0]:
        value = lines[0]
    else:
        expected_name = os.path.basename(urlparse(image_url).path)
        for line in lines:
            checksum, name = line.split(None, 1)
            if name.strip().lstrip("*") == expected_name:
                value = checksum.strip()
                break
    assert value is not None, f"no checksum for {image_url} in {text!r}"
    assert re.fullmatch(r"[0-9a-fA-F]+", value) and len(value) in _ALGORITHMS, value
    return _ALGORITHMS[len(value)], value.lower()


@pytest.mark.parametrize("version,arch,platform,query,schematic", [
    ("latest", "amd64", "openstack", Q_QGA, QGA),
    ("v1.11.2", "arm64", "metal", "?overlay=rpi_generic", RPI),
])
@pytest_twisted.ensureDeferred
async def test_checksum_file_as_ironic_reads_it(stack, version, arch, platform, query, schematic):
    image_url = stack.image_url(version=version, arch=arch, platform=platform, query=query)
    # Ironic asks for the checksum first (it waits for the download), then IPA the image
    resp, text = await stack.get(stack.image_url(version=version, arch=arch, platform=platform, query=query,
                                                 checksum=True))
    assert resp.code == 200 and header(resp, "Content-Type") == "text/plain; charset=utf-8"
    resp, image = await stack.get(image_url)
    assert resp.code == 200
    algorithm, value = ironic_checksum(text.decode(), image_url)
    assert algorithm == "sha256" and value == sha256(image)
    assert image == stack.expected(schematic.id, platform=platform, arch=arch)
    assert text.decode() == f"{value}  {platform}.raw\n"
    assert header(resp, "ETag") == f'"sha256-{value}"'


@pytest_twisted.ensureDeferred
async def test_head_of_a_checksum_never_waits(stack):
    stack.fake.rate_limit = 16 * 1024  # the download takes seconds
    url = stack.image_url(query=Q_QGA, checksum=True)
    status, h = await raw_head(stack, url)
    assert status == 200 and "etag" not in h and "content-length" not in h
    assert h["content-type"] == "text/plain; charset=utf-8" and h["x-talos-schematic"] == QGA.id
    [download] = stack.app.downloads.active()
    assert not download.ended.fired, "answered before the download ended"
    stack.fake.rate_limit = 0
    await download.ended.when()
    status, h = await raw_head(stack, url)
    # the .sha256 is its own representation, with a strong ETag of its own
    assert status == 200 and h["etag"] == f'"sha256sum-{sha256(stack.expected(QGA.id))}"'
    resp, text = await stack.get(url)
    assert text.decode() == f"{sha256(stack.expected(QGA.id))}  openstack.raw\n"
    assert stack.fake.counts["image_get"] == 1


def test_the_ironic_rules_helper():
    url = "http://h/images/talos/latest/amd64/openstack.raw?extensions=a"
    assert ironic_checksum("a" * 64 + "\n", url) == ("sha256", "a" * 64)
    text = f"{'b' * 64}  metal.raw\n{'c' * 64} *openstack.raw\n"
    assert ironic_checksum(text, url) == ("sha256", "c" * 64)
    assert ironic_checksum("d" * 32, url)[0] == "md5"


# --- the cache listing ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cache_listing(stack):
    doc = await listing(stack)
    assert doc["entries"] == [] and doc["disk_usage"] == 0 and doc["downloads"] == []
    _, empty_image = await stack.get(stack.image_url())
    _, qga_image = await stack.get(stack.image_url(arch="arm64", platform="metal", query=Q_QGA + "&overlay=rpi_generic"))
    await stack.app.downloads.quiesce()
    doc = await listing(stack)
    entries = {e["schematic"]: e for e in doc["entries"]}
    assert len(entries) == 2
    rpi_qga = Schematic(extensions=QGA.extensions, overlay=RPI.overlay)
    e = entries[rpi_qga.id]
    assert (e["version"], e["arch"], e["platform"]) == ("v1.11.2", "arm64", "metal")
    assert e["extensions"] == ["siderolabs/qemu-guest-agent"] and e["overlay"] == "rpi_generic"
    assert e["size"] == len(qga_image) and e["sha256"] == sha256(qga_image)
    assert entries[EMPTY.id]["sha256"] == sha256(empty_image) and entries[EMPTY.id]["extensions"] == []
    assert doc["disk_usage"] == sum(x["disk_usage"] for x in doc["entries"])
    for x in doc["entries"]:
        assert x["created"] <= x["last_access"]
    # most recently used first; a hit moves an entry up and updates its last access
    assert [x["schematic"] for x in doc["entries"]] == [rpi_qga.id, EMPTY.id]
    old = entries[EMPTY.id]["last_access"]
    await stack.get(stack.image_url())
    doc = await listing(stack)
    assert [x["schematic"] for x in doc["entries"]] == [EMPTY.id, rpi_qga.id]
    assert doc["entries"][0]["last_access"] > old

    # a running download is listed
    stack.fake.rate_limit = 16 * 1024
    status, _ = await raw_head(stack, stack.image_url(query=Q_ISCSI))
    assert status == 200
    doc = await listing(stack)
    assert doc["downloads"] == [str(key_of(ISCSI))]
    stack.fake.rate_limit = 0
    await stack.app.downloads.quiesce()
    doc = await listing(stack)
    assert doc["downloads"] == [] and len(doc["entries"]) == 3
