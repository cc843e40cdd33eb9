"""The fake factory: routes and errors as in docs/factory-api.md, images, fault knobs, tap."""

from __future__ import annotations

import hashlib
import importlib
import json
import lzma
import subprocess

import pytest
import pytest_twisted
import treq
import zstandard
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.server import Site

from talos_twisted.testing.fakefactory import DEFAULT_VERSIONS, FakeFactory, Options, makeService
from talos_twisted.decompress import make_decoder
from talos_twisted.testing.fakefactory.faults import BodyProducer
from talos_twisted.versions import Version

from .rawhttp import RawClient, connect, exchange, request_bytes

pytestmark = pytest.mark.timeout(20)

KiB = 1024
MiB = 1024 * KiB
QGA_ID = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"
QGA_YAML = (
    "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/qemu-guest-agent\n"
)
BASE = "http://factory.test"


async def until(condition, timeout: float = 10.0) -> None:
    """Wait until `condition()` holds, checking at every reactor turn; fail after `timeout`."""
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not reached in time"
        await deferLater(reactor, 0.01, lambda: None)


def xz_streams(data: bytes) -> tuple[bytes, int]:
    out, n = [], 0
    while data:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out.append(d.decompress(data))
        assert d.eof
        data, n = d.unused_data, n + 1
    return b"".join(out), n


def zstd_frames(data: bytes) -> tuple[bytes, int]:
    out, n = [], 0
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        assert d.eof
        data, n = d.unused_data, n + 1
    return b"".join(out), n


def image_url(base=BASE, sid=QGA_ID, version="v1.11.2", path="openstack-amd64.raw.xz"):
    return f"{base}/image/{sid}/{version}/{path}"


def stub_with_schematic(**kw) -> tuple[FakeFactory, StubTreq]:
    fake = FakeFactory(**kw)
    fake.add_schematic(QGA_YAML)
    return fake, StubTreq(fake.resource())


async def get(http, url, **kw):
    resp = await http.get(url, **kw)
    return resp, await resp.content()


# -- metadata routes ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_versions_ascending_with_prereleases():
    fake = FakeFactory()
    resp, body = await get(StubTreq(fake.resource()), f"{BASE}/versions")
    assert resp.code == 200
    assert resp.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    versions = json.loads(body)
    assert versions == DEFAULT_VERSIONS == fake.versions
    parsed = [Version.parse(v) for v in versions]
    assert parsed == sorted(parsed)
    assert max(v for v in parsed if v.stable) == Version.parse("v1.11.2")
    assert all(v.minor == 12 for v in parsed if not v.stable)
    assert fake.counts["versions"] == 1


@pytest_twisted.ensureDeferred
async def test_extensions_catalog():
    http = StubTreq(FakeFactory().resource())
    resp, body = await get(http, f"{BASE}/version/v1.11.2/extensions/official")
    assert resp.code == 200
    exts = json.loads(body)
    names = [e["name"] for e in exts]
    for needed in (
        "siderolabs/qemu-guest-agent",
        "siderolabs/iscsi-tools",
        "siderolabs/util-linux-tools",
        "siderolabs/nvidia-open-gpu-kernel-modules-lts",
        "siderolabs/amd-ucode",
        "siderolabs/intel-ucode",
        "siderolabs/gvisor",
        "siderolabs/drbd",
        "siderolabs/newt",
    ):
        assert needed in names
    assert names != sorted(names)
    for e in exts:
        assert set(e) == {"name", "ref", "digest", "author", "description"}
        assert e["ref"].startswith("ghcr.io/" + e["name"] + ":")
        assert e["digest"].startswith("sha256:") and len(e["digest"]) == 71
    qga = next(e for e in exts if e["name"] == "siderolabs/qemu-guest-agent")
    assert qga["author"] == "Markus Reiter"
    # leading v optional; newt only from v1.11.0 on
    _, older = await get(http, f"{BASE}/version/1.10.7/extensions/official")
    older_names = [e["name"] for e in json.loads(older)]
    assert "siderolabs/newt" not in older_names and "siderolabs/qemu-guest-agent" in older_names


@pytest_twisted.ensureDeferred
async def test_overlays_catalog():
    http = StubTreq(FakeFactory().resource())
    _, body = await get(http, f"{BASE}/version/v1.11.2/overlays/official")
    overlays = {o["name"]: o for o in json.loads(body)}
    assert {n: o["image"] for n, o in overlays.items()} == {
        "rpi_generic": "siderolabs/sbc-raspberrypi",
        "rock4cplus": "siderolabs/sbc-rockchip",
        "jetson_nano": "siderolabs/sbc-jetson",
    }
    assert all(set(o) == {"name", "image", "ref", "digest"} for o in overlays.values())
    resp, body = await get(http, f"{BASE}/version/v1.6.7/overlays/official")
    assert resp.code == 200 and json.loads(body) == []


@pytest_twisted.ensureDeferred
async def test_catalog_version_errors():
    http = StubTreq(FakeFactory().resource())
    resp, body = await get(http, f"{BASE}/version/1.99.0/extensions/official")
    assert resp.code == 404 and body == b"version 1.99.0 is not available\n"
    assert resp.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    resp, body = await get(http, f"{BASE}/version/v1.x/overlays/official")
    assert resp.code == 500 and body.endswith(b"\n") and body.count(b"\n") == 1


@pytest_twisted.ensureDeferred
async def test_post_and_get_schematic():
    fake = FakeFactory()
    http = StubTreq(fake.resource())
    resp, body = await get(http, f"{BASE}/schematics/{QGA_ID}")
    assert resp.code == 404 and body == b"schematic not found\n"
    for doc in (
        b"customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/qemu-guest-agent]\n",
        json.dumps(
            {"customization": {"systemExtensions": {"officialExtensions": ["siderolabs/qemu-guest-agent"]}}}
        ).encode(),
    ):
        resp = await http.post(f"{BASE}/schematics", data=doc)
        assert resp.code == 201
        assert resp.headers.getRawHeaders("content-type") == ["application/json"]
        assert json.loads(await resp.content()) == {"id": QGA_ID, "schematic": QGA_YAML}
    assert fake.schematics == {QGA_ID: QGA_YAML}
    resp, body = await get(http, f"{BASE}/schematics/{QGA_ID}")
    assert resp.code == 200 and body == QGA_YAML.encode()
    assert fake.counts["schematics_post"] == 2 and fake.counts["schematics_get"] == 2


@pytest_twisted.ensureDeferred
async def test_post_schematic_unknown_field_is_400():
    http = StubTreq(FakeFactory().resource())
    resp = await http.post(f"{BASE}/schematics", data=b"customization:\n  systemExtension: {}\n")
    body = await resp.content()
    assert resp.code == 400
    assert b"systemExtension" in body and body.count(b"\n") == 1


@pytest_twisted.ensureDeferred
async def test_unknown_route_method_and_request_id():
    http = StubTreq(FakeFactory().resource())
    resp, body = await get(http, f"{BASE}/nothing/here")
    assert resp.code == 404 and body == b"404 page not found\n"
    assert len(resp.headers.getRawHeaders("x-request-id")[0]) >= 16
    resp = await http.post(f"{BASE}/versions", data=b"")
    assert resp.code == 405
    resp, _ = await get(http, f"{BASE}/versions", headers={"X-Request-ID": "abc-123"})
    assert resp.headers.getRawHeaders("x-request-id") == ["abc-123"]


# -- images ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_image_bodies_decompress_to_raw_image():
    fake, http = stub_with_schematic(image_size=2 * MiB)
    raw = fake.raw_image(QGA_ID, "v1.11.2", "openstack", "amd64")
    assert len(raw) == fake.raw_size() == 2 * MiB
    resp, body = await get(http, image_url())
    assert resp.code == 200
    h = resp.headers
    assert h.getRawHeaders("content-type") == ["application/x-xz"]
    assert resp.length == len(body)  # Twisted moves Content-Length to .length
    assert h.getRawHeaders("content-disposition") == ['attachment; filename="openstack-amd64.raw.xz"']
    for absent in ("etag", "last-modified", "accept-ranges"):
        assert not h.hasHeader(absent)
    data, streams = xz_streams(body)
    assert data == raw and streams == 1  # factory-shaped by default
    assert body == fake.compressed_image(QGA_ID, "v1.11.2", "openstack", "amd64", "xz")

    resp, body = await get(http, image_url(path="openstack-amd64.raw.zst"))
    assert resp.headers.getRawHeaders("content-type") == ["application/zstd"]
    data, frames = zstd_frames(body)
    assert data == raw and frames == 1

    fake.body_shape = "multi"
    _, body = await get(http, image_url())
    data, streams = xz_streams(body)
    assert data == raw and streams > 1
    _, body = await get(http, image_url(path="openstack-amd64.raw.zst"))
    data, frames = zstd_frames(body)
    assert data == raw and frames > 1
    fake.body_shape = "factory"

    resp, body = await get(http, image_url(path="openstack-x86_64.raw"))  # alias, uncompressed
    assert body == raw
    assert hashlib.sha256(body).hexdigest() == fake.raw_sha256(QGA_ID, "v1.11.2", "openstack", "amd64")
    assert fake.counts["image_get"] == 5


@pytest_twisted.ensureDeferred
async def test_image_errors():
    fake, http = stub_with_schematic(image_size=1 * MiB)
    newt = fake.add_schematic("customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/newt]\n")
    rpi = fake.add_schematic("overlay: {image: siderolabs/sbc-raspberrypi, name: rpi_generic}\n")
    cases = [
        (image_url(sid="0" * 64), 404, b'schematic ID "' + b"0" * 64 + b'" not found\n'),
        (image_url(version="v1.x.2"), 500, None),
        (image_url(version="v1.99.0"), 404, b"version 1.99.0 is not available\n"),
        (image_url(path="openstack-amd64.img"), 400, None),
        (image_url(path="openstack-riscv64.raw"), 400, None),
        (
            image_url(sid=newt, version="v1.10.7"),
            400,
            b'official extension "siderolabs/newt" is not available for Talos version v1.10.7\n',
        ),
        (image_url(sid=rpi, version="v1.6.7", path="metal-arm64.raw.xz"), 400, None),
    ]
    for url, code, text in cases:
        resp, body = await get(http, url)
        assert resp.code == code, url
        assert resp.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
        assert body.endswith(b"\n") and body.count(b"\n") == 1
        if text is not None:
            assert body == text
    resp, _ = await get(http, image_url(sid=newt, version="v1.11.0"))
    assert resp.code == 200
    resp, _ = await get(http, image_url(sid=rpi, version="1.7.7", path="metal-arm64.raw.xz"))
    assert resp.code == 200


@pytest_twisted.ensureDeferred
async def test_fail_next():
    fake, http = stub_with_schematic(image_size=1 * MiB)
    fake.fail_next(2, status=503, route="versions")
    fake.fail_next(route="image")
    for _ in range(2):
        resp, body = await get(http, f"{BASE}/versions")
        assert resp.code == 503 and body.count(b"\n") == 1
    resp, _ = await get(http, f"{BASE}/versions")
    assert resp.code == 200
    resp, _ = await get(http, image_url())
    assert resp.code == 500
    resp, _ = await get(http, image_url())
    assert resp.code == 200
    assert fake.counts["versions"] == 3 and fake.counts["image_get"] == 2
    with pytest.raises(ValueError):
        fake.fail_next(route="nope")


@pytest_twisted.ensureDeferred
async def test_corrupt_next_breaks_decompression():
    fake, http = stub_with_schematic(image_size=1 * MiB)
    good = fake.compressed_image(QGA_ID, "v1.11.2", "openstack", "amd64", "xz")
    fake.corrupt_next(times=2)
    _, body = await get(http, image_url())
    assert len(body) == len(good)
    assert [i for i in range(len(good)) if body[i] != good[i]] == [len(good) // 2]
    with pytest.raises(lzma.LZMAError):
        xz_streams(body)
    _, body = await get(http, image_url(path="openstack-amd64.raw.zst"))
    with pytest.raises(zstandard.ZstdError):
        zstd_frames(body)
    _, body = await get(http, image_url())
    assert body == good


@pytest_twisted.ensureDeferred
async def test_build_delay_with_clock():
    clock = Clock()
    fake, http = stub_with_schematic(clock=clock, image_size=1 * MiB)
    fake.build_delay = 30.0
    seen = []
    d = http.get(image_url())
    d.addCallback(lambda r: seen.append(r) or r)
    http.head(image_url()).addCallback(seen.append)
    clock.advance(29.9)
    http.flush()
    assert seen == []
    assert fake.counts["image_get"] == 1 and fake.counts["image_head"] == 1
    clock.advance(0.2)
    http.flush()
    assert sorted(r.code for r in seen) == [200, 200]
    resp = await d
    assert xz_streams(await resp.content())[0] == fake.raw_image(QGA_ID, "v1.11.2", "openstack", "amd64")
    assert not clock.getDelayedCalls()


def test_images_are_deterministic_and_generation_changes_them():
    a, b = FakeFactory(image_size=1 * MiB), FakeFactory(image_size=1 * MiB)
    args = (QGA_ID, "v1.11.2", "openstack", "amd64")
    raw = a.raw_image(*args)
    assert raw == b.raw_image(*args)
    assert a.compressed_image(*args, "xz") == b.compressed_image(*args, "xz")
    assert raw.count(0) > 0.9 * len(raw) and raw.endswith(bytes(4096)) and raw[:512] != bytes(512)
    assert raw != a.raw_image("0" * 64, "v1.11.2", "openstack", "amd64")
    assert raw != a.raw_image(QGA_ID, "v1.11.1", "openstack", "amd64")
    assert raw != a.raw_image(QGA_ID, "v1.11.2", "openstack", "arm64")
    assert raw == a.raw_image(QGA_ID, "1.11.2", "openstack", "x86_64")
    sha = a.raw_sha256(*args)
    a.generation += 1
    assert a.raw_image(*args) != raw and len(a.raw_image(*args)) == len(raw)
    assert a.raw_sha256(*args) != sha
    assert a.raw_sha256(*args) == hashlib.sha256(a.raw_image(*args)).hexdigest()


# -- body shapes ---------------------------------------------------------------------------

ODD_SIZE = 3 * MiB + 12345  # the last xz block and zstd input are not a whole MiB


def shaped(shape: str, compression: str, size: int = ODD_SIZE, path: str = "metal") -> tuple[bytes, bytes]:
    """(raw image, compressed body) of a fake with ``body_shape = shape``."""
    fake = FakeFactory(image_size=size)
    fake.body_shape = shape
    fake.add_schematic(QGA_YAML)
    args = (QGA_ID, "v1.11.2", path, "amd64")
    return fake.raw_image(*args), fake.compressed_image(*args, compression)


def xz_list(tmp_path, blob: bytes) -> dict[str, list[list[str]]]:
    path = tmp_path / "body.xz"
    path.write_bytes(blob)
    out = subprocess.run(["xz", "--robot", "--list", "-vv", str(path)], stdout=subprocess.PIPE, check=True, text=True)
    rows: dict[str, list[list[str]]] = {}
    for line in out.stdout.splitlines():
        rows.setdefault(line.split("\t")[0], []).append(line.split("\t"))
    return rows


def zstd_list(tmp_path, blob: bytes) -> str:
    path = tmp_path / "body.zst"
    path.write_bytes(blob)
    return subprocess.run(["zstd", "-lv", str(path)], stdout=subprocess.PIPE, check=True, text=True).stdout


def test_default_xz_body_is_one_stream_of_1mib_blocks_with_sizes(tmp_path):
    raw, body = shaped("factory", "xz")
    assert FakeFactory.body_shape == "factory"
    rows = xz_list(tmp_path, body)
    assert len(rows["stream"]) == 1 and rows["stream"][0][8] == "CRC64"
    blocks = rows["block"]
    assert [int(r[7]) for r in blocks] == [MiB, MiB, MiB, 12345]  # uncompressed size of each block
    assert [r[12] for r in blocks] == ["cu"] * 4  # compressed and uncompressed sizes in every header
    assert all(r[15] == "--lzma2=dict=256KiB" for r in blocks)  # xz -0
    assert rows["summary"][0][2] == "yes"  # what lets xz -T0 (and a splitter) decode blocks in parallel
    assert lzma.decompress(body) == raw
    assert shaped("factory", "xz")[1] == body  # deterministic


def test_default_zst_body_is_one_frame_with_content_size(tmp_path):
    raw, body = shaped("factory", "zst")
    params = zstandard.get_frame_parameters(body)
    assert params.content_size == ODD_SIZE and params.has_checksum
    listing = zstd_list(tmp_path, body)
    assert "# Zstandard Frames: 1\n" in listing and f"({ODD_SIZE} B)" in listing
    data, frames = zstd_frames(body)
    assert data == raw and frames == 1
    assert shaped("factory", "zst")[1] == body  # deterministic


def test_body_shape_multi_has_several_streams_and_frames(tmp_path):
    raw, xz_body = shaped("multi", "xz")
    rows = xz_list(tmp_path, xz_body)
    assert len(rows["stream"]) > 1 and xz_streams(xz_body) == (raw, len(rows["stream"]))
    _, zst_body = shaped("multi", "zst")
    data, frames = zstd_frames(zst_body)
    assert data == raw and frames > 1
    assert zstandard.get_frame_parameters(zst_body).content_size < ODD_SIZE  # the first frame's only


def test_body_shape_no_sizes(tmp_path):
    raw, xz_body = shaped("no-sizes", "xz")
    rows = xz_list(tmp_path, xz_body)
    assert len(rows["stream"]) == 1 and [r[12] for r in rows["block"]] == ["--"]  # one block, like xz -T1
    assert rows["summary"][0][2] == "no" and lzma.decompress(xz_body) == raw
    _, zst_body = shaped("no-sizes", "zst")
    assert zstandard.get_frame_parameters(zst_body).content_size == zstandard.CONTENTSIZE_UNKNOWN
    data, frames = zstd_frames(zst_body)
    assert data == raw and frames == 1


def test_body_shape_is_validated_and_boot_assets_keep_one_stream():
    fake = FakeFactory(image_size=MiB)
    fake.add_schematic(QGA_YAML)
    fake.body_shape = "zip"
    with pytest.raises(ValueError, match="body_shape"):
        fake.compressed_image(QGA_ID, "v1.11.2", "metal", "amd64", "xz")
    for shape in ("factory", "multi", "no-sizes"):
        fake.body_shape = shape
        initramfs = fake.asset(QGA_ID, "v1.11.2", "initramfs-amd64.xz")
        assert xz_streams(initramfs)[1] == 1


@pytest.mark.parametrize("shape", ["factory", "multi", "no-sizes"])
@pytest.mark.parametrize("compression", ["xz", "zst"])
def test_daemon_decoders_decode_every_shape(shape, compression):
    raw, body = shaped(shape, compression)
    decoder = make_decoder(compression)
    out = bytearray()
    for i in range(0, len(body), 4099):  # pieces that cut through every header
        for piece in decoder.feed(body[i : i + 4099]):
            out += piece
    decoder.finish()
    assert bytes(out) == raw


# -- over a real socket --------------------------------------------------------------------


class Served:
    def __init__(self, fake, base, http, pool):
        self.fake, self.base, self.http, self.pool = fake, base, http, pool


@pytest_twisted.async_yield_fixture
async def served():
    fake = FakeFactory(image_size=1 * MiB)
    fake.add_schematic(QGA_YAML)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(fake.resource()))
    pool = HTTPConnectionPool(reactor, persistent=False)
    s = Served(fake, f"http://127.0.0.1:{port.getHost().port}", HTTPClient(Agent(reactor, pool=pool)), pool)
    yield s
    fake.abort_all()
    await pool.closeCachedConnections()
    await maybeDeferred(port.stopListening)


async def collect(resp) -> tuple[bytes, Exception | None]:
    chunks: list[bytes] = []
    try:
        await treq.collect(resp, chunks.append)
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return b"".join(chunks), e
    return b"".join(chunks), None


@pytest_twisted.ensureDeferred
async def test_socket_stream_with_request_id(served):
    url = image_url(served.base, path="openstack-amd64.raw")
    resp = await served.http.get(url, unbuffered=True, headers={"X-Request-ID": "r-1"})
    body, err = await collect(resp)
    assert err is None and body == served.fake.raw_image(QGA_ID, "v1.11.2", "openstack", "amd64")
    assert resp.headers.getRawHeaders("x-request-id") == ["r-1"]
    method, path, headers = served.fake.requests[-1]
    assert (method, path, headers["x-request-id"]) == ("GET", f"/image/{QGA_ID}/v1.11.2/openstack-amd64.raw", "r-1")


@pytest_twisted.ensureDeferred
async def test_redirect_and_blob_ranges(served):
    fake = served.fake
    fake.redirect = True
    full = fake.compressed_image(QGA_ID, "v1.11.2", "openstack", "amd64", "xz")
    resp = await served.http.get(image_url(served.base), allow_redirects=False)
    await resp.content()
    assert resp.code == 302
    location = resp.headers.getRawHeaders("location")[0]
    assert location.startswith(served.base + "/blob/")
    resp = await served.http.head(image_url(served.base))  # HEAD is never redirected
    assert resp.code == 200
    resp, body = await get(served.http, image_url(served.base))  # followed
    assert resp.code == 200 and body == full
    resp, body = await get(served.http, location)
    assert resp.headers.getRawHeaders("accept-ranges") == ["bytes"]
    assert resp.length == len(full) and body == full
    resp, body = await get(served.http, location, headers={"Range": "bytes=100-199"})
    assert resp.code == 206 and body == full[100:200]
    assert resp.headers.getRawHeaders("content-range") == [f"bytes 100-199/{len(full)}"]
    resp, body = await get(served.http, location, headers={"Range": "bytes=-10"})
    assert resp.code == 206 and body == full[-10:]
    resp, body = await get(served.http, location, headers={"Range": f"bytes={len(full)}-"})
    assert resp.code == 416
    fake.blob_ranges = False
    resp, body = await get(served.http, location, headers={"Range": "bytes=100-199"})
    assert resp.code == 200 and body == full and not resp.headers.hasHeader("accept-ranges")
    assert fake.counts["blob"] == 6 and fake.counts["image_get"] == 2
    blob_ranges = [h.get("range") for m, p, h in fake.requests if p == location[len(served.base):]]
    assert blob_ranges == [None, "bytes=100-199", "bytes=-10", f"bytes={len(full)}-", "bytes=100-199"]


@pytest_twisted.ensureDeferred
async def test_cut_next_aborts_mid_body(served):
    served.fake.cut_next(100_000)
    url = image_url(served.base, path="openstack-amd64.raw")
    resp = await served.http.get(url, unbuffered=True)
    assert resp.length == 1 * MiB
    body, err = await collect(resp)
    assert isinstance(err, ResponseFailed) and err.reasons[0].check(ConnectionLost)  # a reset
    assert body == served.fake.raw_image(QGA_ID, "v1.11.2", "openstack", "amd64")[:100_000]
    resp = await served.http.get(url, unbuffered=True)  # only the next one
    body, err = await collect(resp)
    assert err is None and len(body) == 1 * MiB


@pytest_twisted.ensureDeferred
async def test_short_next_closes_cleanly_early(served):
    served.fake.short_next(70_000)
    resp = await served.http.get(image_url(served.base, path="openstack-amd64.raw"), unbuffered=True)
    body, err = await collect(resp)
    assert isinstance(err, ResponseFailed) and err.reasons[0].check(ConnectionDone)  # a clean close
    assert body == served.fake.raw_image(QGA_ID, "v1.11.2", "openstack", "amd64")[:70_000]
    served.fake.cut_next(0)  # headers, then a reset before any body byte
    resp = await served.http.get(image_url(served.base, path="openstack-amd64.raw.xz"), unbuffered=True)
    assert resp.code == 200
    body, err = await collect(resp)
    assert body == b"" and isinstance(err, ResponseFailed)


@pytest_twisted.ensureDeferred
async def test_stall_next_then_abort_all(served):
    served.fake.stall_next(50_000)
    resp = await served.http.get(image_url(served.base, path="openstack-amd64.raw"), unbuffered=True)
    chunks: list[bytes] = []
    done = treq.collect(resp, chunks.append)
    await until(lambda: sum(map(len, chunks)) >= 50_000)
    (producer,) = served.fake._active  # at its limit and still open: stalled, not finished
    assert producer.sent == 50_000 and not done.called and sum(map(len, chunks)) == 50_000
    served.fake.abort_all()
    with pytest.raises(ResponseFailed):
        await done


class _TickCounter:
    """The reactor as the fake's clock, counting the rate limiter's waits."""

    def __init__(self):
        self.waits = 0

    def seconds(self):
        return reactor.seconds()

    def callLater(self, delay, f, *a, **kw):
        if delay == BodyProducer.TICK:
            self.waits += 1
        return reactor.callLater(delay, f, *a, **kw)

    def getDelayedCalls(self):
        return reactor.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_rate_limit(served):
    served.fake._clock = clock = _TickCounter()
    served.fake.rate_limit = 1 * MiB  # 104857 bytes per 0.1 s tick
    resp = await served.http.get(image_url(served.base, path="openstack-amd64.raw"), unbuffered=True)
    body, err = await collect(resp)
    assert err is None and len(body) == 1 * MiB
    # 1 MiB at 1 MiB/s in budgets of a tenth: sent in ten windows, nine waits between them
    assert clock.waits >= 9


@pytest_twisted.ensureDeferred
async def test_backpressure_and_build_cancelled_on_disconnect(served):
    fake = served.fake
    fake.image_size = 64 * MiB
    path = f"/image/{QGA_ID}/v1.11.2/openstack-amd64.raw"
    client = await connect(served.base, RawClient(request_bytes("GET", path, close=False)))
    await client.got_some
    client.pause()  # stop reading: let the server's buffers fill
    await until(lambda: len(fake._active) == 1 and next(iter(fake._active))._paused)
    (producer,) = fake._active
    assert 0 < producer.sent < 32 * MiB  # paused by the transport, not buffered whole
    fake.abort_all()
    client.resume()  # a paused reader would not notice the reset
    await client.closed
    assert len(client.data) < 64 * MiB
    # a client leaving during the build cancels it
    fake.build_delay = 60
    client = await connect(served.base, RawClient(request_bytes("HEAD", path, close=False)))
    await until(lambda: len(fake._pending) == 1)
    client.transport.loseConnection()
    await client.closed
    await until(lambda: not fake._pending and not fake._active)


@pytest_twisted.ensureDeferred
async def test_head_image_same_headers_no_body(served):
    fake = served.fake
    path = f"/image/{QGA_ID}/v1.11.2/openstack-amd64.raw.zst"
    status, headers, body = await exchange(served.base, path, "HEAD")
    size = len(fake.compressed_image(QGA_ID, "v1.11.2", "openstack", "amd64", "zst"))
    assert status == 200 and body == b""
    assert headers["content-length"] == str(size)
    assert headers["content-type"] == "application/zstd"
    assert headers["content-disposition"] == 'attachment; filename="openstack-amd64.raw.zst"'
    assert "x-request-id" in headers and "accept-ranges" not in headers and "etag" not in headers
    assert fake.counts["image_head"] == 1 and fake.counts["image_get"] == 0
    status, headers, body = await exchange(served.base, path)
    assert headers["content-length"] == str(size) and len(body) == size


# -- tap -----------------------------------------------------------------------------------


def test_options_defaults_and_errors():
    o = Options()
    o.parseOptions([])
    assert (o["listen"], o["image-size"], o["build-delay"], o["rate-limit"], o["redirect"], o["body-shape"]) == (
        "tcp:9080",
        64 * MiB,
        0.0,
        0,
        0,
        "factory",
    )
    o = Options()
    o.parseOptions(
        ["--listen", "tcp:0", "--image-size", "1048576", "--build-delay", "2.5", "--rate-limit", "1000", "--redirect"]
    )
    assert (o["image-size"], o["build-delay"], o["rate-limit"], o["redirect"]) == (MiB, 2.5, 1000, 1)
    for shape in ("factory", "multi", "no-sizes"):
        o = Options()
        o.parseOptions(["--body-shape", shape])
        assert o["body-shape"] == shape
    for bad in (["--image-size", "0"], ["--build-delay", "-1"], ["--rate-limit", "x"], ["--body-shape", "zip"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)


@pytest_twisted.ensureDeferred
async def test_make_service_and_plugin():
    o = Options()
    o.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--build-delay", "1", "--redirect", "--body-shape", "multi"])
    svc = makeService(o)
    assert isinstance(svc, MultiService)
    (child,) = list(svc)
    assert isinstance(child, StreamServerEndpointService)
    assert svc.fake.build_delay == 1.0 and svc.fake.redirect is True and svc.fake.body_shape == "multi"
    svc.startService()
    await svc.stopService()
    plugin = importlib.import_module("twisted.plugins.talos_fake_factory").talos_fake_factory
    assert plugin.tapname == "talos-fake-factory"
    assert plugin.options is Options and plugin.makeService is makeService
