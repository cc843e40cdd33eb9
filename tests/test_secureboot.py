"""Secureboot disk images: a served platform `{platform}-secureboot` is the factory's
`<platform>-<arch>-secureboot.raw.<ext>` (secureboot after the arch, docs/factory-api.md)."""

import pytest
import pytest_twisted

from talos_twisted.config import ConfigError, TalosConfig
from talos_twisted.config.schema import TALOS_SCHEMA
from talos_twisted.errors import BadRequest
from talos_twisted.factory_paths import image_path
from talos_twisted.names import is_platform_name
from talos_twisted.request import ImageKey, ResolvedImage, parse_image_request
from talos_twisted.schematic import Schematic
from talos_twisted.testing.fakefactory import parse_profile

from .conftest import MiB, sha256

EMPTY_ID = Schematic().id
SECUREBOOT_PLATFORMS = ("openstack", "metal", "nocloud", "metal-secureboot")


# --- the factory's path ------------------------------------------------------------------


@pytest.mark.parametrize("platform,arch,compression,path", [
    ("metal-secureboot", "amd64", "zst", "metal-amd64-secureboot.raw.zst"),
    ("metal-secureboot", "arm64", "xz", "metal-arm64-secureboot.raw.xz"),
    ("metal-secureboot", "amd64", "none", "metal-amd64-secureboot.raw"),
    ("nocloud-secureboot", "amd64", "zst", "nocloud-amd64-secureboot.raw.zst"),
    ("digital-ocean-secureboot", "amd64", "zst", "digital-ocean-amd64-secureboot.raw.zst"),
    ("metal", "amd64", "zst", "metal-amd64.raw.zst"),
    ("digital-ocean", "arm64", "xz", "digital-ocean-arm64.raw.xz"),
])
def test_image_path_puts_secureboot_after_the_arch(platform, arch, compression, path):
    assert image_path("a" * 64, "v1.11.2", platform, arch, compression) == f"/image/{'a' * 64}/v1.11.2/{path}"


@pytest.mark.parametrize("platform,arch,compression", [
    ("metal-secureboot", "amd64", "zst"), ("metal-secureboot", "arm64", "xz"), ("metal", "amd64", "none"),
])
def test_the_factory_grammar_reads_our_path_back(platform, arch, compression):
    # the fake parses paths as the factory's internal/profile does
    path = image_path(EMPTY_ID, "v1.11.2", platform, arch, compression).rsplit("/", 1)[1]
    p = parse_profile(path)
    base, secureboot = (platform[: -len("-secureboot")], True) if platform.endswith("-secureboot") else (platform, False)
    assert (p.kind, p.platform, p.arch, p.secureboot, p.disk_format) == ("image", base, arch, secureboot, "raw")
    assert p.out_format == {"none": "none"}.get(compression, compression)


# --- platform names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["metal-secureboot", "nocloud-secureboot", "digital-ocean-secureboot"])
def test_secureboot_platform_names_are_valid(name):
    assert is_platform_name(name)


@pytest.mark.parametrize("name", ["secureboot", "secureboot-metal", "metal-secureboot-secureboot",
                                  "metal-secureboot-x"])
def test_secureboot_only_as_the_last_part(name):
    assert not is_platform_name(name)


def test_platforms_setting_accepts_secureboot_and_refuses_misplaced_secureboot():
    [key] = [k for k in TALOS_SCHEMA if k.name == "platforms"]
    assert key.convert(["metal", "metal-secureboot"], "platforms") == ("metal", "metal-secureboot")
    assert key.convert("metal,metal-secureboot", "platforms") == ("metal", "metal-secureboot")
    with pytest.raises(ConfigError, match="secureboot-metal"):
        key.convert(["secureboot-metal"], "platforms")


def test_request_key_filename_and_url_of_a_secureboot_image():
    r = parse_image_request("v1.11.2", "amd64", "metal-secureboot.raw", {}, SECUREBOOT_PLATFORMS)
    assert (r.platform, r.checksum) == ("metal-secureboot", False)
    r = parse_image_request("v1.11.2", "amd64", "metal-secureboot.raw.sha256", {}, SECUREBOOT_PLATFORMS)
    assert (r.platform, r.checksum) == ("metal-secureboot", True)
    image = ResolvedImage("v1.11.2", "amd64", "metal-secureboot", Schematic())
    # its own cache entry, next to (never instead of) the plain metal image
    assert image.key == ImageKey("v1.11.2", "amd64", EMPTY_ID, "metal-secureboot")
    assert image.key != ResolvedImage("v1.11.2", "amd64", "metal", Schematic()).key
    assert image.key.relpath == f"v1.11.2/amd64/{EMPTY_ID}/metal-secureboot.raw"
    assert image.filename == "talos-v1.11.2-amd64-metal-secureboot.raw"
    assert image.url_path() == "/images/talos/v1.11.2/amd64/metal-secureboot.raw"


def test_a_misplaced_secureboot_is_a_bad_request():
    with pytest.raises(BadRequest):
        parse_image_request("v1.11.2", "amd64", "secureboot-metal.raw", {}, SECUREBOOT_PLATFORMS + ("secureboot-metal",))


def test_secureboot_is_not_served_unless_listed():
    assert "metal-secureboot" not in TalosConfig().platforms
    with pytest.raises(Exception, match="platform 'metal-secureboot' is not served"):
        parse_image_request("v1.11.2", "amd64", "metal-secureboot.raw", {}, TalosConfig().platforms)


# --- end to end: the daemon against the fake factory, real sockets ---------------------------


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


@pytest.mark.stack(image_size=2 * MiB, platforms=SECUREBOOT_PLATFORMS)
@pytest_twisted.ensureDeferred
async def test_a_secureboot_image_is_fetched_from_the_secureboot_path_and_served_exact(stack):
    resp, body = await stack.get(stack.image_url(platform="metal-secureboot"))
    assert resp.code == 200 and header(resp, "X-Talos-Cache") == "MISS"
    expected = stack.fake.raw_image(EMPTY_ID, "v1.11.2", "metal", "amd64", secureboot=True)
    assert body == expected and expected != stack.fake.raw_image(EMPTY_ID, "v1.11.2", "metal", "amd64")
    assert header(resp, "Content-Disposition") == 'attachment; filename="talos-v1.11.2-amd64-metal-secureboot.raw"'
    images = [p for m, p, _ in stack.fake.requests if p.startswith("/image/")]
    assert images == [f"/image/{EMPTY_ID}/v1.11.2/metal-amd64-secureboot.raw.zst"]

    # cached under its own key; the checksum names the file of our URL
    await stack.app.downloads.quiesce()
    [entry] = stack.app.cache.entries()
    assert entry.key.platform == "metal-secureboot" and entry.path.endswith("/metal-secureboot.raw")
    assert entry.sha256 == sha256(expected) == stack.fake.raw_sha256(EMPTY_ID, "v1.11.2", "metal", "amd64", secureboot=True)
    resp, line = await stack.get(stack.image_url(platform="metal-secureboot", checksum=True))
    assert resp.code == 200 and line == f"{sha256(expected)}  metal-secureboot.raw\n".encode()
    resp, again = await stack.get(stack.image_url(platform="metal-secureboot"))
    assert header(resp, "X-Talos-Cache") == "HIT" and again == expected

    # the plain metal image is another entry, from the plain path
    resp, plain = await stack.get(stack.image_url(platform="metal"))
    assert header(resp, "X-Talos-Cache") == "MISS"
    assert plain == stack.fake.raw_image(EMPTY_ID, "v1.11.2", "metal", "amd64")
    assert [p for m, p, _ in stack.fake.requests if p.startswith("/image/")][-1] == (
        f"/image/{EMPTY_ID}/v1.11.2/metal-amd64.raw.zst"
    )


@pytest.mark.stack(image_size=2 * MiB, platforms=SECUREBOOT_PLATFORMS, compression="xz")
@pytest_twisted.ensureDeferred
async def test_a_secureboot_image_with_xz(stack):
    resp, body = await stack.get(stack.image_url(arch="arm64", platform="metal-secureboot"))
    assert resp.code == 200
    assert body == stack.fake.raw_image(EMPTY_ID, "v1.11.2", "metal", "arm64", secureboot=True)
    images = [p for m, p, _ in stack.fake.requests if p.startswith("/image/")]
    assert images == [f"/image/{EMPTY_ID}/v1.11.2/metal-arm64-secureboot.raw.xz"]
