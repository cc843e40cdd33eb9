"""The factory-compatible mirror: the factory's routes answered from our cache, byte-exact
to what the (fake) factory serves, hits with the factory down, and a tiered cache."""

import hashlib
import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from talos_twisted.config import Config, TalosConfig
from talos_twisted.httpserver import make_site
from talos_twisted.tap import build, server_limits

from .rawhttp import exchange
from .test_readiness import closed_url

V = "v1.11.2"
SCHEMATIC = "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/iscsi-tools\n"
ASSETS = (
    "kernel-amd64",
    "initramfs-amd64.xz",
    "cmdline-metal-amd64",
    "metal-amd64.raw.zst",
    "metal-amd64.raw.xz",
    "metal-amd64.iso",
    "installer-amd64.tar",
)


async def same_answer(stack, path, method="GET", body=b"", headers=None):
    """The fake factory's and the daemon's answers to one request: (status, body) each,
    with the Content-Type."""
    out = []
    if body:
        headers = {**(headers or {}), "Content-Length": str(len(body))}
    for url in (stack.factory_url, stack.url):
        status, h, data = await exchange(url, path, method, headers=headers, body=body)
        out.append((status, h.get("content-type"), data))
    return out


@pytest_twisted.ensureDeferred
async def test_metadata_routes_answer_as_the_factory_does(stack):
    for path in ("/versions", f"/version/{V}/extensions/official", f"/version/{V}/overlays/official",
                 "/version/1.11.2/extensions/official", "/version/v1.99.0/extensions/official",
                 "/version/notaversion/overlays/official"):
        factory, ours = await same_answer(stack, path)
        assert ours == factory, path
    factory, ours = await same_answer(stack, "/version/v1.99.0/extensions/official")
    assert ours[0] == 404 and ours[2] == b"version 1.99.0 is not available\n"
    assert ours[1] == "text/plain; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_methods_a_route_does_not_serve_are_405_with_allow_as_the_factory(stack):
    _, _, data = await exchange(stack.factory_url, "/schematics", "POST", body=SCHEMATIC.encode(),
                                headers={"Content-Length": str(len(SCHEMATIC))})
    sid = json.loads(data)["id"]
    for path in ("/versions", f"/version/{V}/extensions/official", f"/version/{V}/overlays/official",
                 f"/schematics/{sid}", f"/pxe/{sid}/{V}/metal-amd64", f"/image/{sid}/{V}/kernel-amd64"):
        for method in ("HEAD", "DELETE"):
            answers = []
            for url in (stack.factory_url, stack.url):
                status, h, body = await exchange(url, path, method)
                answers.append((status, h.get("allow"), h.get("content-type"), body))
            factory, ours = answers
            assert ours == factory, (method, path)
            if not path.startswith("/image/"):
                assert ours[:2] == (405, "GET"), (method, path)


@pytest_twisted.ensureDeferred
async def test_schematics_post_and_get_as_the_factory(stack):
    factory, ours = await same_answer(stack, "/schematics", "POST", body=SCHEMATIC.encode())
    assert ours[0] == 201 and ours == factory
    sid = json.loads(ours[2])["id"]
    factory, ours = await same_answer(stack, f"/schematics/{sid}")
    assert ours[0] == 200 and ours[2] == factory[2]
    for body in (b"customization: [", b"owner: me\n", b"bogus: 1\n"):
        factory, ours = await same_answer(stack, "/schematics", "POST", body=body)
        assert ours[0] == factory[0] == 400 and ours[1] == "text/plain; charset=utf-8", body
    status, _, data = await exchange(stack.url, f"/schematics/{'ab' * 32}")
    assert (status, data) == (404, b"schematic not found\n")


@pytest_twisted.ensureDeferred
async def test_a_schematic_posted_while_the_factory_is_down_is_kept_and_posted_before_its_download(stack):
    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url())
    status, _, data = await exchange(stack.url, "/schematics", "POST", body=SCHEMATIC.encode(),
                                     headers={"Content-Length": str(len(SCHEMATIC))})
    assert status == 201
    sid = json.loads(data)["id"]
    status, _, text = await exchange(stack.url, f"/schematics/{sid}")
    assert status == 200 and text.decode() == json.loads(data)["schematic"]
    # back online (a restart: the schematic was kept on disk), the first download POSTs it
    await stack.stop_daemon()
    await stack.start_daemon()
    assert sid not in stack.fake.schematics
    status, _, body = await exchange(stack.url, f"/image/{sid}/{V}/kernel-amd64")
    assert status == 200 and body == stack.fake.asset(sid, V, "kernel-amd64")
    assert stack.fake.counts["schematics_post"] == 1 and sid in stack.fake.schematics


@pytest.mark.stack(image_size=2 * 1024 * 1024)
@pytest_twisted.ensureDeferred
async def test_assets_are_fetched_once_and_kept_byte_exact_and_served_with_the_factory_down(stack):
    sid = stack.fake.add_schematic(SCHEMATIC)
    for path in ASSETS:
        status, headers, body = await exchange(stack.url, f"/image/{sid}/{V}/{path}")
        want = stack.fake.asset(sid, V, path)
        assert status == 200 and body == want, path
        assert headers["x-talos-cache"] == "MISS"
        assert headers["content-disposition"] == f'attachment; filename="{path}"'
    fetched = stack.fake.counts["image_get"]
    assert fetched == len(ASSETS)
    await stack.app.downloads.quiesce()
    status, _, doc = await exchange(stack.url, "/status.json")
    assert {e["url_path"] for e in json.loads(doc)["entries"]} == {f"/image/{sid}/{V}/{p}" for p in ASSETS}
    # what the factory lacks: Content-Length, ranges and validators on a hit
    status, headers, body = await exchange(stack.url, f"/image/{sid}/{V}/metal-amd64.raw.zst",
                                           headers={"Range": "bytes=10-19"})
    assert status == 206 and body == stack.fake.asset(sid, V, "metal-amd64.raw.zst")[10:20]
    assert headers["etag"].startswith('"sha256-') and headers["x-talos-cache"] == "HIT"
    status, headers, _ = await exchange(stack.url, f"/image/{sid}/{V}/initramfs-amd64.xz", "HEAD")
    assert status == 200 and int(headers["content-length"]) == len(stack.fake.asset(sid, V, "initramfs-amd64.xz"))
    assert headers["content-type"] == "application/x-xz"
    # the factory gone, and the daemon restarted: every asset is still there
    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url())
    for path in ASSETS:
        status, headers, body = await exchange(stack.url, f"/image/{sid}/{V}/{path}")
        assert (status, headers["x-talos-cache"]) == (200, "HIT"), path
        assert body == stack.fake.asset(sid, V, path)
    assert stack.fake.counts["image_get"] == fetched


@pytest.mark.stack(image_size=2 * 1024 * 1024)
@pytest_twisted.ensureDeferred
async def test_a_raw_asset_is_decompressed_and_is_the_image_routes_entry(stack):
    sid = stack.fake.add_schematic(SCHEMATIC)
    status, headers, body = await exchange(stack.url, f"/image/{sid}/1.11.2/openstack-amd64.raw")
    assert status == 200 and body == stack.expected(sid)
    assert headers["content-type"] == "application/octet-stream"
    await stack.app.downloads.quiesce()
    # the same cache entry as /images/talos/…?schematic=
    status, headers, again = await exchange(stack.url, f"/images/talos/{V}/amd64/openstack.raw?schematic={sid}")
    assert (status, headers["x-talos-cache"]) == (200, "HIT") and again == body


@pytest_twisted.ensureDeferred
async def test_image_errors_are_the_factorys(stack):
    sid = stack.fake.add_schematic(SCHEMATIC)
    for path in (
        f"/image/{sid}/{V}/metal-amd64.raw.sha256",
        f"/image/{sid}/{V}/metal-amd64.raw.xz.sha512",
        f"/image/{sid}/{V}/metal-amd64.qcow2.sigstore.json",
        f"/image/{sid}/{V}/metal-amd64.img",
        f"/image/{sid}/{V}/kernel-sparc",
        f"/image/{sid}/{V}/metal.raw",
        f"/image/{'ab' * 32}/{V}/kernel-amd64",
        f"/image/{sid}/v1.99.0/kernel-amd64",
        f"/image/{sid}/x.y/kernel-amd64",
    ):
        factory, ours = await same_answer(stack, path)
        assert ours == factory, path
        assert ours[0] in (400, 402, 404, 500) and ours[2].endswith(b"\n"), path
    status, headers, body = await exchange(stack.url, f"/image/{sid}/{V}")
    assert (status, body, headers["content-type"]) == (404, b"404 page not found\n", "text/plain; charset=utf-8")
    status, headers, body = await exchange(stack.url, "/schematics", "GET")
    assert status == 405 and headers["allow"] == "POST" and body == b"Method Not Allowed\n"


@pytest_twisted.ensureDeferred
async def test_mirror_false_answers_404(stack):
    await stack.stop_daemon()
    await stack.start_daemon(mirror=False)
    status, _, body = await exchange(stack.url, "/versions")
    assert (status, body) == (404, b"404 page not found\n")


async def start_tier(tmp_path, name, base_url):
    """One more daemon, as twistd serves it: (url, stop)."""
    talos = TalosConfig(base_url=base_url, cache_directory=str(tmp_path / name))
    service, app = build(Config(listen="tcp:0", talos=talos), reactor)
    service.startService()
    site = make_site(app.resource(), server_limits(talos), reactor, metrics=app.metrics)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)

    async def stop():
        await port.stopListening()
        await service.stopService()

    return f"http://127.0.0.1:{port.getHost().port}", stop


@pytest.mark.stack(image_size=3 * 1024 * 1024, default_extensions=("iscsi-tools",))
@pytest_twisted.ensureDeferred
async def test_a_tiered_cache_fetches_each_image_once_per_tier(stack, tmp_path):
    """site A and site B → regional (the stack's daemon) → factory."""
    site_a, stop_a = await start_tier(tmp_path, "site-a", stack.url)
    site_b, stop_b = await start_tier(tmp_path, "site-b", stack.url)
    try:
        path = f"/images/talos/{V}/amd64/openstack.raw"
        status, headers, body = await exchange(site_a, path)
        assert status == 200, body[:200]
        sid = headers["x-talos-schematic"]
        assert body == stack.expected(sid)
        status, _, sums = await exchange(site_a, path + ".sha256")
        assert status == 200 and sums.split()[0].decode() == hashlib.sha256(body).hexdigest()
        status, headers, again = await exchange(site_b, path)
        assert status == 200 and again == body and headers["x-talos-cache"] == "MISS"
        # the factory saw one image download in all; the regional tier keeps it byte-exact
        assert stack.fake.counts["image_get"] == 1
        status, headers, _ = await exchange(stack.url, f"/image/{sid}/{V}/openstack-amd64.raw.zst", "HEAD")
        assert (status, headers["x-talos-cache"]) == (200, "HIT")
        # and the sites' metadata came through the regional tier's mirror
        assert stack.fake.counts["versions"] == 1
    finally:
        await stop_a()
        await stop_b()


@pytest.mark.parametrize("path", ["cmdline-x.tmp-y-amd64", "kernel-amd64.tmp-1", "a" * 200 + "-amd64.iso"])
def test_an_asset_named_like_a_cache_file_is_refused(path):
    from talos_twisted.assetpath import ProfileError, check_asset_path
    from talos_twisted.cache import SIDECAR
    from talos_twisted.cachefs import TEMP_MARK

    assert (TEMP_MARK, SIDECAR) == (".tmp-", ".json")  # what check_asset_path refuses
    with pytest.raises(ProfileError):
        check_asset_path(path)
