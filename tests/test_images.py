"""End to end over real sockets: the daemon against the fake factory (issue: foundation)."""

import json

import pytest
import pytest_twisted

from talos_twisted.schematic import Overlay, Schematic

from .conftest import sha256
from .rawhttp import raw_head as _raw_head


async def raw_head(stack, url):
    return await _raw_head(stack.url, url[len(stack.url):])

QGA = Schematic(extensions=("siderolabs/qemu-guest-agent",))
QGA_ID = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


@pytest_twisted.ensureDeferred
async def test_miss_then_hit_without_factory_calls(stack):
    url = stack.image_url(query="?extensions=qemu-guest-agent")
    resp, body = await stack.get(url)
    assert resp.code == 200
    assert header(resp, "X-Talos-Cache") == "MISS"
    assert header(resp, "X-Talos-Schematic") == QGA_ID
    assert header(resp, "X-Talos-Version") == "v1.11.2"
    assert header(resp, "Content-Disposition") == 'attachment; filename="talos-v1.11.2-amd64-openstack.raw"'
    assert body == stack.expected(QGA_ID)
    assert stack.fake.counts["image_get"] == 1
    assert stack.fake.counts["schematics_post"] == 1
    assert stack.fake.schematics[QGA_ID] == QGA.to_yaml()

    calls = sum(stack.fake.counts.values())
    resp, body2 = await stack.get(url)
    assert resp.code == 200 and header(resp, "X-Talos-Cache") == "HIT"
    assert resp.length == len(body)
    assert header(resp, "Accept-Ranges") == "bytes"
    assert header(resp, "ETag") == f'"sha256-{sha256(body)}"'
    assert body2 == body
    assert sum(stack.fake.counts.values()) == calls, "a hit must not call the factory"


@pytest_twisted.ensureDeferred
async def test_ranges_on_a_cached_image(stack):
    url = stack.image_url()
    _, full = await stack.get(url)
    resp, part = await stack.get(url, headers={"Range": "bytes=1000-1999"})
    assert resp.code == 206 and part == full[1000:2000]
    assert header(resp, "Content-Range") == f"bytes 1000-1999/{len(full)}"
    resp, tail = await stack.get(url, headers={"Range": "bytes=-10"})
    assert resp.code == 206 and tail == full[-10:]
    resp, multi = await stack.get(url, headers={"Range": "bytes=0-9,100-109"})
    assert resp.code == 206 and header(resp, "Content-Type").startswith("multipart/byteranges; boundary=")
    assert full[0:10] in multi and full[100:110] in multi and resp.length == len(multi)
    resp, body = await stack.get(url, headers={"Range": f"bytes={len(full)}-"})
    assert resp.code == 416 and header(resp, "Content-Range") == f"bytes */{len(full)}"
    resp, body = await stack.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale-etag"'})
    assert resp.code == 200 and body == full


@pytest_twisted.ensureDeferred
async def test_conditional_requests(stack):
    url = stack.image_url()
    resp, full = await stack.get(url)
    resp, _ = await stack.get(url)
    etag, modified = header(resp, "ETag"), header(resp, "Last-Modified")
    resp, body = await stack.get(url, headers={"If-None-Match": etag})
    assert resp.code == 304 and body == b""
    resp, body = await stack.get(url, headers={"If-Modified-Since": modified})
    assert resp.code == 304
    resp, body = await stack.get(url, headers={"If-None-Match": '"other"'})
    assert resp.code == 200 and body == full


@pytest_twisted.ensureDeferred
async def test_checksum_file_describes_the_served_bytes(stack):
    url = stack.image_url(query="?extensions=qemu-guest-agent")
    # a checksum asked first waits for the download and describes the entry served next
    resp, text = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent", checksum=True))
    assert resp.code == 200
    _, body = await stack.get(url)
    assert text.decode() == f"{sha256(body)}  openstack.raw\n"
    assert stack.fake.counts["image_get"] == 1


@pytest_twisted.ensureDeferred
async def test_latest_resolves_to_newest_stable(stack):
    resp, body = await stack.get(stack.image_url(version="latest", query="?extensions=qemu-guest-agent"))
    assert resp.code == 200 and header(resp, "X-Talos-Version") == "v1.11.2"
    assert header(resp, "Content-Location") == "/images/talos/v1.11.2/amd64/openstack.raw?extensions=qemu-guest-agent"
    assert header(resp, "Cache-Control") == "no-cache"
    await stack.app.downloads.quiesce()
    resp, pinned = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent"))
    assert header(resp, "X-Talos-Cache") == "HIT" and pinned == body
    resp, body = await stack.get(f"{stack.url}/images/talos/versions")
    doc = json.loads(body)
    assert doc["latest"] == "v1.11.2" and "v1.12.0-beta.0" in doc["versions"]


@pytest_twisted.ensureDeferred
async def test_extension_names_are_resolved_deduplicated_and_sorted(stack):
    resp, a = await stack.get(stack.image_url(query="?extensions=siderolabs/iscsi-tools,qemu-guest-agent"))
    await stack.app.downloads.quiesce()
    resp2, b = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent,iscsi-tools,iscsi-tools"))
    assert header(resp2, "X-Talos-Cache") == "HIT" and a == b
    expected = Schematic(extensions=("siderolabs/iscsi-tools", "siderolabs/qemu-guest-agent"))
    assert header(resp, "X-Talos-Schematic") == expected.id
    assert stack.fake.counts["image_get"] == 1


@pytest.mark.stack(default_extensions=("qemu-guest-agent",))
@pytest_twisted.ensureDeferred
async def test_default_extensions_are_merged(stack):
    resp, body = await stack.get(stack.image_url())
    assert header(resp, "X-Talos-Schematic") == QGA_ID
    await stack.app.downloads.quiesce()
    resp, body = await stack.get(stack.image_url(query="?extensions=siderolabs/qemu-guest-agent"))
    assert header(resp, "X-Talos-Cache") == "HIT"


@pytest_twisted.ensureDeferred
async def test_overlay_goes_into_the_schematic(stack):
    resp, body = await stack.get(stack.image_url(arch="arm64", platform="metal", query="?overlay=rpi-generic"))
    assert resp.code == 200
    rpi = Schematic(overlay=Overlay("rpi_generic", "siderolabs/sbc-raspberrypi"))
    assert header(resp, "X-Talos-Schematic") == rpi.id == "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9"
    assert body == stack.fake.raw_image(rpi.id, "v1.11.2", "metal", "arm64")


@pytest.mark.parametrize("compression", ["xz", "none"])
@pytest_twisted.ensureDeferred
async def test_other_download_formats(stack, compression):
    await stack.stop_daemon()
    await stack.start_daemon(compression=compression, cache_directory=str(stack.tmp_path / compression))
    resp, body = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent"))
    assert resp.code == 200 and body == stack.expected(QGA_ID)
    suffix = {"xz": ".raw.xz", "none": ".raw"}[compression]
    assert any(p.endswith("openstack-amd64" + suffix) for _, p, _ in stack.fake.requests)


@pytest_twisted.ensureDeferred
async def test_redirects_are_followed(stack):
    stack.fake.redirect = True
    resp, body = await stack.get(stack.image_url())
    assert resp.code == 200 and body == stack.expected(Schematic().id)
    assert stack.fake.counts["blob"] == 1


@pytest_twisted.ensureDeferred
async def test_head_hit_has_full_headers_and_miss_warms_the_cache(stack):
    url = stack.image_url(query="?extensions=qemu-guest-agent")
    status, headers = await raw_head(stack, url)
    assert status == 200 and headers["content-length"] == str(len(stack.expected(QGA_ID)))
    assert headers["x-talos-cache"] == "MISS" and "etag" not in headers
    [download] = stack.app.downloads.active()
    await download.ended.when()
    status, headers = await raw_head(stack, url)
    assert status == 200 and headers["x-talos-cache"] == "HIT"
    assert headers["content-length"] == str(len(stack.expected(QGA_ID)))
    assert headers["accept-ranges"] == "bytes" and headers["etag"].startswith('"sha256-')
    assert stack.fake.counts["image_get"] == 1
