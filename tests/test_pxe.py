"""The PXE front door: the factory's iPXE script, pointing at this daemon's cached assets."""

import pytest
import pytest_twisted

from talos_twisted.config.schema import Profile
from talos_twisted.errors import BadRequest
from talos_twisted.pxe import base_url

from .rawhttp import RawClient, connect, exchange, parse_head
from .test_mirror import SCHEMATIC
from .test_readiness import closed_url

V = "v1.11.2"


def script_urls(script: str) -> list[str]:
    """The URLs of the kernel/initrd lines, in order."""
    return [line.split()[1] for line in script.splitlines() if line.startswith(("kernel ", "initrd "))]


def path_of(url: str, base: str) -> str:
    assert url.startswith(base + "/"), (url, base)
    return url[len(base):]


@pytest.mark.stack(image_size=1024 * 1024)
@pytest_twisted.ensureDeferred
async def test_the_script_is_the_factorys_on_our_url_and_its_assets_are_ours(stack):
    sid = stack.fake.add_schematic(SCHEMATIC)
    status, headers, body = await exchange(stack.url, f"/pxe/{sid}/{V}/metal-amd64")
    assert status == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    _, _, factory = await exchange(stack.factory_url, f"/pxe/{sid}/{V}/metal-amd64")
    ours = "http://127.0.0.1"  # the Host our raw client sends
    assert body.decode() == factory.decode().replace("http://127.0.0.1", ours)
    urls = script_urls(body.decode())
    assert [u.rsplit("/", 1)[1] for u in urls] == ["kernel-amd64", "initramfs-amd64.xz"]
    assert stack.fake.cmdline(sid, V, "metal", "amd64") in body.decode()
    # the script started both downloads; once done, a node boots from the cache alone
    await stack.app.downloads.quiesce()
    gets = stack.fake.counts["image_get"]
    assert gets == 3  # cmdline, kernel, initramfs
    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url())
    status, _, again = await exchange(stack.url, f"/pxe/{sid}/{V[1:]}/metal-amd64")
    assert status == 200 and again == body
    for url in urls:
        status, headers, data = await exchange(stack.url, path_of(url, ours))
        assert (status, headers["x-talos-cache"]) == (200, "HIT")
        assert data == stack.fake.asset(sid, V, url.rsplit("/", 1)[1])
    assert stack.fake.counts["image_get"] == gets


@pytest.mark.stack(image_size=1024 * 1024, public_url="http://10.0.0.5:8080/")
@pytest_twisted.ensureDeferred
async def test_secureboot_boots_the_uki_and_public_url_is_the_base(stack):
    sid = stack.fake.add_schematic(SCHEMATIC)
    status, _, body = await exchange(stack.url, f"/pxe/{sid}/{V}/metal-amd64-secureboot")
    assert status == 200
    lines = body.decode().splitlines()
    assert lines[:3] == ["#!ipxe", "", "imgfree"] and lines[-1] == "boot"
    assert not any(line.startswith("initrd") for line in lines)
    (uki,) = script_urls(body.decode())
    assert uki == f"http://10.0.0.5:8080/image/{sid}/{V}/metal-amd64-secureboot-uki.efi"
    status, _, data = await exchange(stack.url, path_of(uki, "http://10.0.0.5:8080"))
    assert status == 200 and data == stack.fake.asset(sid, V, "metal-amd64-secureboot-uki.efi")


async def with_host(base_url: str, path: str, host: str) -> tuple[int, dict[str, str], bytes]:
    client = await connect(base_url, RawClient(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()))
    await client.closed
    head, data = client.split()
    status, headers = parse_head(head)
    return status, headers, data


@pytest_twisted.ensureDeferred
async def test_a_bad_host_is_refused_and_errors_are_the_factorys(stack):
    sid = stack.fake.add_schematic(SCHEMATIC)
    for host in ("user@evil.example", "evil.example/x", "a b", "evil.example:99999", "[::1"):
        status, headers, body = await with_host(stack.url, f"/pxe/{sid}/{V}/metal-amd64", host)
        # refused by the server layer before any route (its JSON), or by the PXE route
        assert status == 400 and b"Host header" in body and host.encode() not in body, host
    status, _, body = await with_host(stack.url, f"/pxe/{sid}/{V}/metal-amd64", "[fd00::5]:8080")
    assert status == 200 and f"http://[fd00::5]:8080/image/{sid}/".encode() in body
    for path in (f"/pxe/{'ab' * 32}/{V}/metal-amd64", f"/pxe/{sid}/v1.99.0/metal-amd64",
                 f"/pxe/{sid}/{V}/metal-sparc", f"/pxe/{sid}/nope/metal-amd64"):
        status, _, body = await exchange(stack.url, path)
        f_status, _, f_body = await exchange(stack.factory_url, path)
        assert (status, body) == (f_status, f_body), path


@pytest.mark.stack(
    image_size=1024 * 1024,
    profiles=(Profile("bmc", ("iscsi-tools",), None, '{"extraKernelArgs": ["console=ttyS0"]}'),),
)
@pytest_twisted.ensureDeferred
async def test_the_profile_form(stack):
    status, _, body = await exchange(stack.url, f"/pxe/profiles/bmc/{V}/metal-amd64")
    assert status == 200, body
    assert "console=ttyS0" in body.decode()
    kernel, initrd = script_urls(body.decode())
    sid = kernel.split("/")[4]
    status, _, data = await exchange(stack.url, path_of(initrd, "http://127.0.0.1"))
    assert status == 200 and data == stack.fake.asset(sid, V, "initramfs-amd64.xz")
    status, _, text = await exchange(stack.url, f"/schematics/{sid}")
    assert status == 200 and b"siderolabs/iscsi-tools" in text and b"console=ttyS0" in text
    status, _, body = await exchange(stack.url, f"/pxe/profiles/nope/{V}/metal-amd64")
    assert status == 404 and body == b"profile 'nope' not found\n"


@pytest.mark.parametrize("host, secure, want", [
    ("10.0.0.5:8080", False, "http://10.0.0.5:8080"),
    ("Boot.Example.", True, "https://boot.example."),
    ("[fd00::5]", False, "http://[fd00::5]"),
    ("pxe", False, "http://pxe"),
])
def test_base_url_from_a_valid_host(host, secure, want):
    assert base_url("", host, secure) == want


@pytest.mark.parametrize("host", [
    None, "", "a@b", "a/b", "a b", "a:0", "a:65536", "a:", "-a", "a..b", "[::1", "a\r\nX: y", "x" * 300, "a:1:2",
])
def test_base_url_refuses_anything_else(host):
    with pytest.raises(BadRequest):
        base_url("", host, False)
    assert base_url("http://10.0.0.5:8080/", host, False) == "http://10.0.0.5:8080"
