"""The fake factory against the points of docs/factory-api.md it implements: asset path
grammar (400), enterprise-only sidecars (402), error bodies, Content-Type and quoted
Content-Disposition, secureboot and boot assets, the iPXE script, schematic errors.
All in memory (StubTreq): no socket behaviour is under test here."""

from __future__ import annotations

import io
import json
import lzma
import tarfile
import zlib

import pytest
import pytest_twisted
import zstandard
from treq.testing import StubTreq

from talos_twisted.testing.fakefactory import FakeFactory, ProfileError, parse_profile

pytestmark = pytest.mark.timeout(20)

KiB = 1024
MiB = 1024 * KiB
BASE = "http://factory.test"
QGA_YAML = "customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/qemu-guest-agent]\n"
ARGS_YAML = "customization:\n  extraKernelArgs: [noapic, 'console=ttyS1,115200']\n"
TEXT = ["text/plain; charset=utf-8"]


def make(**kw) -> tuple[FakeFactory, StubTreq, str]:
    fake = FakeFactory(image_size=kw.pop("image_size", 1 * MiB), **kw)
    sid = fake.add_schematic(QGA_YAML)
    return fake, StubTreq(fake.resource()), sid


def url(sid: str, path: str, version: str = "v1.11.2") -> str:
    return f"{BASE}/image/{sid}/{version}/{path}"


async def get(http, target, method="GET", **kw):
    resp = await http.request(method, target, **kw)
    return resp, await resp.content()


def assert_error(resp, body: bytes, status: int, text: bytes | None = None) -> None:
    assert resp.code == status, (resp.code, body)
    assert resp.headers.getRawHeaders("content-type") == TEXT
    assert resp.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
    assert resp.headers.getRawHeaders("x-request-id")
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    if text is not None:
        assert body == text + b"\n"


# -- path grammar and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path, profile",
    [
        ("metal-amd64.raw.zst", ("image", "metal", "amd64", False, "raw", "zst")),
        ("metal-amd64-secureboot.raw.xz", ("image", "metal", "amd64", True, "raw", "xz")),
        ("gcp-arm64.raw.tar.gz", ("image", "gcp", "arm64", False, "raw", "tar.gz")),
        ("azure-x86_64.vhd.xz", ("image", "azure", "amd64", False, "vhd", "xz")),
        ("digital-ocean-amd64.raw.gz", ("image", "digital-ocean", "amd64", False, "raw", "gz")),
        ("nocloud-i386.qcow2", ("image", "nocloud", "amd64", False, "qcow2", "none")),
        ("vmware-amd64.ova", ("image", "vmware", "amd64", False, "ova", "none")),
        ("metal-arm64-secureboot.iso", ("iso", "metal", "arm64", True, "", "none")),
        ("metal-amd64-secureboot-uki.efi", ("uki", "metal", "amd64", True, "", "none")),
        ("installer-arm64-secureboot.tar", ("installer", "metal", "arm64", True, "", "none")),
        ("kernel-amd64", ("kernel", "metal", "amd64", False, "", "none")),
        ("initramfs-arm64.xz", ("initramfs", "metal", "arm64", False, "", "xz")),
        ("cmdline-openstack-amd64", ("cmdline", "openstack", "amd64", False, "", "none")),
    ],
)
def test_parse_profile(path, profile):
    p = parse_profile(path)
    assert (p.kind, p.platform, p.arch, p.secureboot, p.disk_format, p.out_format) == profile


@pytest_twisted.ensureDeferred
async def test_bad_image_paths_are_400():
    _, http, sid = make()
    cases = {
        "metal-amd64.img": b'invalid profile path: "metal-amd64.img"',
        "metal-amd64.img.xz": b'invalid profile path: "metal-amd64.img"',  # cut as upstream does
        "metal-amd64.iso.xz": b'invalid profile path: "metal-amd64.iso"',
        "metal-riscv64.raw": b'invalid architecture: "riscv64"',
        "amd64.raw.xz": b'invalid platform-arch: "amd64"',
        "kernel-riscv64": b'invalid architecture: "riscv64"',
        "initramfs-amd64.zst": b'invalid profile path: "initramfs-amd64"',
        "installer-amd64.tar.gz": b'invalid profile path: "installer-amd64"',  # .tar.gz: a disk suffix
    }
    for path, reason in cases.items():
        resp, body = await get(http, url(sid, path))
        assert_error(resp, body, 400, b"error parsing profile from path: " + reason)
    with pytest.raises(ProfileError):
        parse_profile("metal-amd64.img")


@pytest_twisted.ensureDeferred
async def test_checksum_and_signature_paths_are_402_before_the_schematic_lookup():
    fake, http, sid = make()
    for path in ("metal-amd64.raw.xz.sha256", "metal-amd64.raw.sha512", "kernel-amd64.sigstore.json"):
        for schematic in (sid, "0" * 64):  # an unknown schematic too: 402 comes first
            for method in ("GET", "HEAD"):
                resp, body = await get(http, url(schematic, path), method)
                assert resp.code == 402
                if method == "GET":
                    assert_error(resp, body, 402)
                    assert b"enterprise" in body
    assert fake.counts["image_get"] == 6 and fake.counts["image_head"] == 6


@pytest_twisted.ensureDeferred
async def test_error_bodies():
    fake, http, sid = make()
    resp, body = await get(http, url("f" * 64, "metal-amd64.raw"))
    assert_error(resp, body, 404, b'schematic ID "' + b"f" * 64 + b'" not found')
    resp, body = await get(http, f"{BASE}/schematics/{'f' * 64}")
    assert_error(resp, body, 404, b"schematic not found")
    for target in (url(sid, "metal-amd64.raw", "v1.x"), f"{BASE}/version/1.x.0/extensions/official"):
        resp, body = await get(http, target)
        assert_error(resp, body, 500, b"internal server error")
    resp, body = await get(http, f"{BASE}/version/v1.99.0/overlays/official")
    assert_error(resp, body, 404, b"version 1.99.0 is not available")
    resp, body = await get(http, url(sid, "metal-amd64.raw", "1.99.0"))
    assert_error(resp, body, 404, b"version 1.99.0 is not available")
    for target in (f"{BASE}/nothing", f"{BASE}/image/{sid}/v1.11.2", f"{BASE}/image/{sid}/v1.11.2/a/b"):
        resp, body = await get(http, target)
        assert_error(resp, body, 404, b"404 page not found")


@pytest_twisted.ensureDeferred
async def test_methods():
    _, http, sid = make()
    for method, target, allow in (
        ("HEAD", f"{BASE}/versions", "GET"),
        ("POST", f"{BASE}/versions", "GET"),
        ("HEAD", f"{BASE}/pxe/{sid}/v1.11.2/metal-amd64", "GET"),
        ("GET", f"{BASE}/schematics", "POST"),
        ("POST", url(sid, "metal-amd64.raw"), "GET, HEAD"),
    ):
        resp, body = await get(http, target, method)
        assert resp.code == 405, (method, target)
        assert resp.headers.getRawHeaders("allow") == [allow]
        if method != "HEAD":
            assert_error(resp, body, 405, b"Method Not Allowed")


@pytest_twisted.ensureDeferred
async def test_health_and_readiness():
    fake, http, _ = make()
    for path in ("healthz", "readyz"):
        resp, body = await get(http, f"{BASE}/{path}")
        assert resp.code == 200 and body == b""
    fake.ready = False
    resp, body = await get(http, f"{BASE}/readyz")
    assert_error(resp, body, 503, b"not ready")


@pytest_twisted.ensureDeferred
async def test_schematic_errors_are_400():
    fake = FakeFactory()
    http = StubTreq(fake.resource())
    for doc in (b"customization:\n  systemExtension: {}\n", b"nonsense: 1\n", b"owner: someone\n", b"customization: [\n"):
        resp = await http.post(f"{BASE}/schematics", data=doc)
        assert_error(resp, await resp.content(), 400)
    assert fake.schematics == {} and fake.counts["schematics_post"] == 4


# -- downloads -----------------------------------------------------------------------------


CONTENT = [
    ("metal-amd64.raw", "application/octet-stream"),
    ("metal-amd64.raw.xz", "application/x-xz"),
    ("metal-amd64.raw.zst", "application/zstd"),
    ("metal-amd64.raw.gz", "application/gzip"),
    ("gcp-amd64.raw.tar.gz", "application/gzip"),
    ("nocloud-amd64.qcow2", "application/x-qemu-disk"),
    ("azure-amd64.vhd.xz", "application/x-xz"),
    ("vmware-amd64.ova", "application/octet-stream"),
    ("metal-amd64.iso", "application/x-iso9660-image"),
    ("metal-amd64-secureboot-uki.efi", "application/efi"),
    ("installer-amd64.tar", "application/x-tar"),
    ("kernel-amd64", "application/octet-stream"),
    ("initramfs-amd64.xz", "application/x-xz"),
    ("cmdline-metal-amd64", "application/octet-stream"),
]


@pytest_twisted.ensureDeferred
async def test_headers_of_every_asset_kind():
    fake, http, sid = make()
    for path, ctype in CONTENT:
        resp, body = await get(http, url(sid, path))
        assert resp.code == 200, (path, body)
        h = resp.headers
        assert h.getRawHeaders("content-type") == [ctype], path
        assert h.getRawHeaders("content-disposition") == [f'attachment; filename="{path}"']
        assert resp.length == len(body) > 0
        for absent in ("etag", "last-modified", "accept-ranges"):
            assert not h.hasHeader(absent)
        assert body == fake.asset(sid, "v1.11.2", path)
        resp, head_body = await get(http, url(sid, path), "HEAD")
        assert resp.code == 200 and head_body == b""
        assert resp.headers.getRawHeaders("content-disposition") == [f'attachment; filename="{path}"']


@pytest_twisted.ensureDeferred
async def test_secureboot_disk_images():
    fake, http, sid = make()
    raw = fake.raw_image(sid, "v1.11.2", "metal", "amd64", secureboot=True)
    assert len(raw) == fake.raw_size() and raw != fake.raw_image(sid, "v1.11.2", "metal", "amd64")
    _, body = await get(http, url(sid, "metal-amd64-secureboot.raw.xz"))
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    assert d.decompress(body) == raw and d.eof and not d.unused_data  # one stream, as the imager writes it
    assert body == fake.compressed_image(sid, "v1.11.2", "metal", "amd64", "xz", secureboot=True)
    _, body = await get(http, url(sid, "metal-amd64-secureboot.raw"))
    assert body == raw
    _, body = await get(http, url(sid, "metal-amd64-secureboot.raw.zst"))
    d = zstandard.ZstdDecompressor().decompressobj()
    assert raw.startswith(d.decompress(body))


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["metal-amd64.raw", "metal-amd64-secureboot.raw", "metal-amd64.qcow2"])
async def test_disk_images_are_shaped_as_the_imager_writes_them(path):
    # xz -0 -T0: one stream of 1 MiB blocks with both sizes in their headers (so the
    # index's uncompressed size is the sum of the blocks'); zstd -T0: one frame with the
    # content size in its header
    fake, http, sid = make(image_size=2 * MiB + 1)
    _, xz_body = await get(http, url(sid, path + ".xz"))
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    raw = d.decompress(xz_body)
    assert len(raw) == 2 * MiB + 1 and d.eof and not d.unused_data
    assert xz_body[12 + 1] & 0xC0 == 0xC0  # first block header: compressed and uncompressed size present
    _, zst_body = await get(http, url(sid, path + ".zst"))
    assert zstandard.get_frame_parameters(zst_body).content_size == len(raw)
    d2 = zstandard.ZstdDecompressor().decompressobj()
    assert d2.decompress(zst_body) == raw and d2.eof and not d2.unused_data


@pytest_twisted.ensureDeferred
async def test_tar_gz_holds_disk_raw_and_gz_is_gzip():
    fake, http, sid = make()
    raw = fake.raw_image(sid, "v1.11.2", "gcp", "amd64")
    _, body = await get(http, url(sid, "gcp-amd64.raw.tar.gz"))
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.name == "disk.raw" and member.size == len(raw)
        assert tar.extractfile(member).read() == raw
    _, body = await get(http, url(sid, "gcp-amd64.raw.gz"))
    assert zlib.decompress(body, 31) == raw


@pytest_twisted.ensureDeferred
async def test_boot_assets_are_deterministic_per_schematic_version_arch():
    fake, http, sid = make()
    other = fake.add_schematic(ARGS_YAML)

    async def kernel(schematic=sid, version="v1.11.2", arch="amd64"):
        resp, body = await get(http, url(schematic, f"kernel-{arch}", version))
        assert resp.code == 200
        return body

    k = await kernel()
    assert len(k) > 64 * KiB and k == await kernel() == await kernel(arch="x86_64") == await kernel(version="1.11.2")
    assert len({k, await kernel(schematic=other), await kernel(version="v1.11.1"), await kernel(arch="arm64")}) == 4
    assert k == FakeFactory(image_size=2 * MiB).asset(sid, "v1.11.2", "kernel-amd64")  # not tied to one instance
    _, initramfs = await get(http, url(sid, "initramfs-arm64.xz"))
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    assert len(d.decompress(initramfs)) > 0 and d.eof and not d.unused_data  # one xz stream
    for path in ("metal-amd64-secureboot-uki.efi", "metal-amd64.iso", "installer-amd64.tar"):
        _, a = await get(http, url(sid, path))
        _, b = await get(http, url(other, path))
        assert a != b and len(a) == len(b) > 0


@pytest_twisted.ensureDeferred
async def test_cmdline_asset():
    fake, http, _ = make()
    sid = fake.add_schematic(ARGS_YAML)
    _, body = await get(http, url(sid, "cmdline-openstack-arm64"))
    text = body.decode()
    assert text == fake.cmdline(sid, "v1.11.2", "openstack", "arm64")
    assert "\n" not in text
    args = text.split(" ")
    assert args[0] == "talos.platform=openstack"
    assert args[-2:] == ["noapic", "console=ttyS1,115200"]  # the schematic's extraKernelArgs, last
    assert "init_on_alloc=1" in args and "pti=on" not in args  # pti is x86-only
    _, amd = await get(http, url(sid, "cmdline-metal-amd64"))
    assert amd.startswith(b"talos.platform=metal ") and b" pti=on " in amd


@pytest_twisted.ensureDeferred
async def test_build_time_checks():
    fake, http, _ = make()
    aliased = fake.add_schematic(
        "customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/gasket, siderolabs/nvidia-open-gpu-kernel-modules]\n"
    )
    unknown = fake.add_schematic("customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/nope]\n")
    rpi = fake.add_schematic("overlay: {image: siderolabs/sbc-raspberrypi, name: rpi_generic}\n")
    resp, _ = await get(http, url(aliased, "metal-amd64.raw.xz"))
    assert resp.code == 200  # old names go through the factory's alias table
    resp, body = await get(http, url(unknown, "metal-amd64.iso"))
    assert_error(resp, body, 400, b'official extension "siderolabs/nope" is not available for Talos version v1.11.2')
    for path in ("kernel-amd64", "cmdline-metal-amd64"):  # no extensions in these: not looked up
        resp, _ = await get(http, url(unknown, path))
        assert resp.code == 200
    resp, _ = await get(http, f"{BASE}/pxe/{unknown}/v1.11.2/metal-amd64")
    assert resp.code == 200
    for path in ("metal-arm64.raw.xz", "cmdline-metal-arm64"):
        resp, body = await get(http, url(rpi, path, "v1.6.7"))
        assert_error(resp, body, 400, b"overlay is not supported for Talos version v1.6.7")


# -- PXE -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pxe_script():
    fake, http, _ = make()
    sid = fake.add_schematic(ARGS_YAML)
    cmdline = fake.cmdline(sid, "v1.11.2", "metal", "amd64")
    resp, body = await get(http, f"{BASE}/pxe/{sid}/1.11.2/metal-amd64")  # version without its v
    assert resp.code == 200 and resp.headers.getRawHeaders("content-type") == TEXT
    prefix = f"{BASE}/image/{sid}/v1.11.2"
    assert body.decode() == (
        "#!ipxe\n\nimgfree\n"
        f"kernel {prefix}/kernel-amd64 {cmdline}\n"
        f"initrd {prefix}/initramfs-amd64.xz\n"
        "boot\n"
    )
    assert fake.counts["pxe"] == 1
    # the script's URLs work
    for line in body.decode().splitlines()[3:5]:
        resp, _ = await get(http, line.split(" ")[1])
        assert resp.code == 200


@pytest_twisted.ensureDeferred
async def test_pxe_secureboot_and_base_url():
    fake, http, _ = make()
    sid = fake.add_schematic(ARGS_YAML)
    fake.pxe_url = "https://pxe.example/"
    cmdline = fake.cmdline(sid, "v1.11.2", "metal", "arm64", secureboot=True)
    _, body = await get(http, f"{BASE}/pxe/{sid}/v1.11.2/metal-arm64-secureboot")
    uki = f"https://pxe.example/image/{sid}/v1.11.2/metal-arm64-secureboot-uki.efi"
    assert body.decode() == f"#!ipxe\n\nimgfree\nkernel {uki} {cmdline}\nboot\n"
    assert "initrd" not in body.decode() and "noapic" in cmdline


@pytest_twisted.ensureDeferred
async def test_pxe_errors():
    fake, http, sid = make()
    resp, body = await get(http, f"{BASE}/pxe/{'0' * 64}/v1.11.2/metal-amd64")
    assert_error(resp, body, 404, b'schematic ID "' + b"0" * 64 + b'" not found')
    resp, body = await get(http, f"{BASE}/pxe/{sid}/v1.11.2/metal-riscv64")
    assert_error(resp, body, 400, b'error parsing profile from path: invalid architecture: "riscv64"')
    resp, body = await get(http, f"{BASE}/pxe/{sid}/v1.x/metal-amd64")
    assert_error(resp, body, 500, b"internal server error")
    fake.fail_next(route="pxe", status=503)
    resp, body = await get(http, f"{BASE}/pxe/{sid}/v1.11.2/metal-amd64")
    assert_error(resp, body, 503)


@pytest_twisted.ensureDeferred
async def test_redirect_spares_the_pxe_host_and_blob_keeps_the_type():
    fake, http, sid = make()
    fake.redirect = True
    resp, _ = await get(http, url(sid, "kernel-amd64"), allow_redirects=False)
    assert resp.code == 302
    location = resp.headers.getRawHeaders("location")[0]
    resp, body = await get(http, location)
    assert resp.code == 200 and body == fake.asset(sid, "v1.11.2", "kernel-amd64")
    assert resp.headers.getRawHeaders("content-type") == ["application/octet-stream"]
    fake.pxe_url = "http://FACTORY.test"  # this request's host: the PXE host never redirects
    resp, body = await get(http, url(sid, "initramfs-amd64.xz"), allow_redirects=False)
    assert resp.code == 200 and body == fake.asset(sid, "v1.11.2", "initramfs-amd64.xz")


@pytest_twisted.ensureDeferred
async def test_blob_range_single_only():
    fake, http, sid = make()
    fake.redirect = True
    resp, _ = await get(http, url(sid, "metal-amd64.raw.xz"), allow_redirects=False)
    location = resp.headers.getRawHeaders("location")[0]
    full = fake.compressed_image(sid, "v1.11.2", "metal", "amd64", "xz")
    resp, body = await get(http, location, headers={"Range": "bytes=0-9,20-29"})  # several: whole body
    assert resp.code == 200 and body == full
    resp, body = await get(http, location, headers={"Range": "bytes=9-3"})  # malformed: ignored
    assert resp.code == 200 and body == full
    resp, body = await get(http, location, headers={"Range": "bytes=10-"})
    assert resp.code == 206 and body == full[10:]
    resp, body = await get(http, location, headers={"Range": "bytes=-0"})
    assert_error(resp, body, 416)
    assert resp.headers.getRawHeaders("content-range") == [f"bytes */{len(full)}"]


@pytest_twisted.ensureDeferred
async def test_catalog_json():
    _, http, _ = make()
    resp, body = await get(http, f"{BASE}/version/v1.11.2/extensions/official")
    assert resp.code == 200 and resp.headers.getRawHeaders("content-type") == ["application/json"]
    assert any(e["name"] == "siderolabs/gasket-driver" for e in json.loads(body))


def test_pxe_url_option():
    from twisted.python import usage

    from talos_twisted.testing.fakefactory import Options, makeService

    o = Options()
    o.parseOptions([])
    assert o["pxe-url"] is None
    o = Options()
    o.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--pxe-url", "http://pxe.lan:8080"])
    assert makeService(o).fake.pxe_url == "http://pxe.lan:8080"
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--pxe-url", "pxe.lan"])
