"""The status document (`/status.json`) and the page's routes, without a browser."""

import json
import re
import time
from html.parser import HTMLParser

import pytest_twisted

from talos_twisted import status
from talos_twisted.cache import CacheStore
from talos_twisted.request import ImageKey, ResolvedImage
from talos_twisted.schematic import Overlay, Schematic
from talos_twisted.status_page import PAGE_HTML

from .conftest import sha256

SID = "ab" * 32


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


class FakeClock:
    def __init__(self, now):
        self.now = now

    def seconds(self):
        return self.now


class FakeDownload:
    def __init__(self, image):
        self.image, self.key = image, image.key


class FakeDownloads:
    def __init__(self, described, images=()):
        self.described = described
        self.images = images

    def describe(self):
        return self.described

    def active(self):
        return [FakeDownload(i) for i in self.images]


class FakeFactory:
    base_url = "http://factory.test"
    last_success = 100.0
    last_error = None

    def __init__(self, known):
        self._known = known

    def known(self, name):
        return self._known.get(name)


def committed(tmp_path, info, now=1000.0):
    cache = CacheStore(str(tmp_path / "cache"), now=lambda: now)
    cache.check_root()
    key = ImageKey("v1.11.2", "arm64", SID, "metal")
    temp, fd = cache.open_temp(key)
    with open(fd, "wb", closefd=True) as f:
        f.write(b"x" * 4096)
    cache.commit(key, temp, 4096, sha256(b"x" * 4096), info)
    return cache


def download(**over):
    d = {
        "key": "v1.11.2/amd64/abababababab/openstack", "version": "v1.11.2", "arch": "amd64",
        "platform": "openstack", "schematic": SID, "url_path": "/images/talos/v1.11.2/amd64/openstack.raw",
        "state": "streaming", "bytes": 1000, "compressed_bytes": 100, "size": None, "elapsed": 2.0, "rate": 500,
        "followers": 1,
    }
    return {**d, **over}


def test_document_shape(tmp_path):
    cache = committed(tmp_path, {"extensions": ["siderolabs/iscsi-tools", "siderolabs/qemu-guest-agent"],
                                 "overlay": "rpi_generic", "version": "v1.11.2"})
    running = ResolvedImage("v1.11.2", "amd64", "openstack", Schematic(
        extensions=("siderolabs/qemu-guest-agent",), overlay=Overlay("rpi_generic", "siderolabs/sbc-raspberrypi")))
    doc = status.document(
        cache, FakeDownloads([download(), download(key="k2", size=3000, schematic=running.schematic.id)], [running]),
        FakeFactory({"versions": ["v1.10.7", "v1.11.2", "v1.12.0-alpha.1"]}), FakeClock(1060.0),
        platforms=("metal",),
    )
    assert set(doc) == {"server_time", "entries", "downloads", "factory", "platforms", "arches", "cache"}
    assert doc["server_time"] == 1060.0
    [entry] = doc["entries"]
    assert entry["url_path"] == (
        "/images/talos/v1.11.2/arm64/metal.raw?extensions=siderolabs/iscsi-tools,siderolabs/qemu-guest-agent"
        "&overlay=rpi_generic"
    )
    assert entry["schematic"] == SID and entry["size"] == 4096 and entry["sha256"] == sha256(b"x" * 4096)
    assert entry["age"] == 60.0 and entry["idle"] == 60.0 and entry["created"] == 1000.0
    unknown, known = doc["downloads"]
    # no final size, no ETA: the page shows an indeterminate bar
    assert unknown["eta"] is None and unknown["fraction"] is None and unknown["followers"] == 1
    assert known["eta"] == 4.0 and abs(known["fraction"] - 1 / 3) < 1e-9
    # the URL a client asks for it by: the query names what the schematic holds
    assert unknown["url_path"] == "/images/talos/v1.11.2/amd64/openstack.raw"
    assert known["url_path"] == (
        "/images/talos/v1.11.2/amd64/openstack.raw?extensions=siderolabs/qemu-guest-agent&overlay=rpi_generic"
    )
    assert known["extensions"] == ["siderolabs/qemu-guest-agent"] and known["overlay"] == "rpi_generic"
    assert doc["factory"] == {"base_url": "http://factory.test", "versions_known": 3, "latest": "v1.11.2",
                              "health": {"ok": True, "at": 100.0, "error": None}}
    assert doc["platforms"] == ["metal"] and doc["arches"] == ["amd64", "arm64"]
    assert doc["cache"]["count"] == 1 and doc["cache"]["disk_usage"] == cache.total_usage
    json.dumps(doc)  # what the route does with it


def test_entry_without_recorded_extensions_has_no_url(tmp_path):
    cache = committed(tmp_path, {})
    doc = status.document(cache, FakeDownloads([]), FakeFactory({}), FakeClock(1000.0))
    [entry] = doc["entries"]
    assert entry["url_path"] is None and entry["extensions"] == [] and entry["overlay"] is None
    assert doc["factory"]["latest"] is None and doc["factory"]["versions_known"] == 0
    assert doc["platforms"] == list(status.DEFAULT_PLATFORMS)


def test_entry_without_extensions_has_a_plain_url(tmp_path):
    cache = committed(tmp_path, {"extensions": [], "overlay": None})
    [entry] = status.document(cache, FakeDownloads([]), FakeFactory({}), FakeClock(1000.0))["entries"]
    assert entry["url_path"] == "/images/talos/v1.11.2/arm64/metal.raw"


@pytest_twisted.ensureDeferred
async def test_status_json_in_memory(memory):
    resp, body = await memory.get("/status.json")
    assert resp.code == 200 and header(resp, "Content-Type") == "application/json"
    assert header(resp, "Cache-Control") == "no-store"
    doc = json.loads(body)
    assert doc["entries"] == [] and doc["downloads"] == []
    assert abs(doc["server_time"] - time.time()) < 60
    assert doc["factory"]["base_url"] == "http://factory.test"
    await memory.get("/images/talos/versions")  # the factory's versions become known
    doc = json.loads((await memory.get("/status.json"))[1])
    assert doc["factory"]["latest"] == "v1.11.2" and doc["factory"]["versions_known"] > 1
    assert "openstack" in doc["platforms"] and doc["arches"] == ["amd64", "arm64"]


@pytest_twisted.ensureDeferred
async def test_entry_url_path_asks_for_the_same_image(stack):
    query = "?overlay=rpi-generic&extensions=qemu-guest-agent"  # as a user types it: the URL is the canonical form
    resp, body = await stack.get(stack.image_url(arch="arm64", query=query))
    assert resp.code == 200
    sid = header(resp, "X-Talos-Schematic")
    await stack.app.downloads.quiesce()  # the last byte streams out before the entry is committed
    resp, raw = await stack.get(stack.url + "/status.json")
    [entry] = json.loads(raw)["entries"]
    assert entry["schematic"] == sid and entry["sha256"] == sha256(body)
    assert entry["extensions"] == ["siderolabs/qemu-guest-agent"] and entry["overlay"] == "rpi_generic"
    resp, again = await stack.get(stack.url + entry["url_path"])
    assert header(resp, "X-Talos-Cache") == "HIT" and header(resp, "X-Talos-Schematic") == sid
    assert again == body


@pytest_twisted.ensureDeferred
async def test_page_and_favicon_routes(memory):
    resp, body = await memory.get("/")
    assert resp.code == 200 and header(resp, "Content-Type") == "text/html; charset=utf-8"
    assert body.startswith(b"<!doctype html>") and b"/status.json" in body
    resp, icon = await memory.get("/favicon.ico")
    assert resp.code == 200 and header(resp, "Content-Type") == "image/svg+xml"
    assert icon.startswith(b"<svg") and icon.rstrip().endswith(b"</svg>")


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href", "action", "srcset")]


def test_page_has_no_external_reference():
    assert not re.search(r"https?://", PAGE_HTML, re.IGNORECASE)
    parser = Refs()
    parser.feed(PAGE_HTML)
    assert parser.refs == [("link", "href", "/favicon.ico")]
    assert "//" not in "".join(v for _, _, v in parser.refs)


def test_page_never_parses_data_as_html():
    # data goes in with textContent / setAttribute: no HTML sink appears in the script at all
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in PAGE_HTML, sink
