"""`talos-images-cache` and the factory mirror's assets: an air-gapped site PXE-boots offline.

The end-to-end test fills a cache through the mirror route (`/image/{schematic}/{version}/…`)
of the real daemon against the fake factory, exports it (all, and by mirror URL paths),
imports it into an empty cache and serves it with the factory unreachable: every asset a
byte-exact HIT, and `/pxe/…` answering its script. The others build caches as the daemon
does (CacheStore.commit), without sockets.
"""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted

from talos_twisted.assetpath import asset_platform, check_asset_path
from talos_twisted.cache import CacheStore
from talos_twisted.cachetool import main
from talos_twisted.cachetool_archive import MANIFEST, PREFIX, merge_metadata
from talos_twisted.cachetool_select import UsageError, parse_url
from talos_twisted.decompress import make_decoder
from talos_twisted.metastore import MetadataStore
from talos_twisted.mirror import MirrorError, asset_profile
from talos_twisted.request import ImageKey
from talos_twisted.schematic import parse_schematic, schematic_id
from talos_twisted.testing.fakefactory import FakeFactory
from talos_twisted.writer import ImageWriter

from .conftest import MiB
from .rawhttp import exchange
from .test_cachetool import IMAGES, export, import_, keys_in, make_cache, manifest_of, members, one_line_error, temps_in, write_tar
from .test_mirror import SCHEMATIC
from .test_readiness import closed_url

V = "v1.11.2"
BOOT = ("kernel-amd64", "initramfs-amd64.xz", "cmdline-metal-amd64")
ASSETS = (*BOOT, "metal-amd64.raw.zst")
ISCSI = parse_schematic(SCHEMATIC)
SID = ISCSI.id


def asset_key(name, sid=SID, version=V):
    """The key the mirror gives `name` (checked against mirror.asset_key in a test below)."""
    profile = check_asset_path(name)
    return ImageKey(version, profile.arch, sid, asset_platform(profile), name)


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_mirror_assets_are_exported_imported_and_pxe_boots_offline(stack, tmp_path):
    sid = stack.fake.add_schematic(SCHEMATIC)
    assert sid == SID
    for name in ASSETS:
        status, _, body = await exchange(stack.url, f"/image/{sid}/{V}/{name}")
        assert status == 200 and body == stack.fake.asset(sid, V, name), name
    status, _, script = await exchange(stack.url, f"/pxe/{sid}/{V}/metal-amd64")
    assert status == 200 and script.startswith(b"#!ipxe")
    await stack.app.downloads.quiesce()
    gets = stack.fake.counts["image_get"]
    cache = stack.tmp_path / "cache"
    assert keys_in(cache) == {asset_key(n) for n in ASSETS}

    everything, some = tmp_path / "all.tar.zst", tmp_path / "some.tar"
    assert export(cache, everything, compress=True) == 0
    manifest = manifest_of_zst(everything)
    assert {e["key"]["asset"] for e in manifest["entries"]} == set(ASSETS)
    assert {e["member"] for e in manifest["entries"]} == {f"{PREFIX}/images/{asset_key(n).relpath}" for n in ASSETS}
    assert schematic_id(manifest["metadata"][f"schematic-{sid}"]) == sid  # what /pxe/… needs offline
    assert "versions" in manifest["metadata"]
    # by the mirror's URL paths; the version with or without `v`, a whole URL too
    assert export(cache, some, f"/image/{sid}/{V}/kernel-amd64", f"http://pxe.example:8080/image/{sid}/1.11.2/cmdline-metal-amd64") == 0
    assert {m.name for m, _ in members(some)[1:]} == {f"{PREFIX}/images/{asset_key(n).relpath}" for n in ("kernel-amd64", "cmdline-metal-amd64")}

    site, partial = tmp_path / "site", tmp_path / "partial"
    assert import_(site, everything) == 0
    assert import_(partial, some) == 0
    assert keys_in(site) == {asset_key(n) for n in ASSETS} and temps_in(site) == []
    assert keys_in(partial) == {asset_key("kernel-amd64"), asset_key("cmdline-metal-amd64")}

    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url(), cache_directory=str(site))
    for name in ASSETS:
        status, headers, body = await exchange(stack.url, f"/image/{sid}/{V}/{name}")
        assert (status, headers.get("x-talos-cache")) == (200, "HIT"), name
        assert body == stack.fake.asset(sid, V, name), name  # byte-exact, as the factory sent it
    status, _, again = await exchange(stack.url, f"/pxe/{sid}/{V}/metal-amd64")
    assert status == 200 and again == script
    status, _, text = await exchange(stack.url, f"/schematics/{sid}")
    assert status == 200 and schematic_id(text.decode()) == sid
    await stack.app.downloads.quiesce()
    assert stack.fake.counts["image_get"] == gets  # nothing fetched again


def manifest_of_zst(path):
    import zstandard

    plain = path.with_suffix("")  # .tar
    with open(path, "rb") as src, open(plain, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    return manifest_of(plain)


# --- a cache with assets, built as the daemon does ----------------------------------------------


def add_assets(root, names=ASSETS, image_size=1 * MiB):
    """Mirror entries next to `make_cache`'s images; returns {key: bytes}."""
    fake = FakeFactory(image_size=image_size)
    assert fake.add_schematic(SCHEMATIC) == SID
    store = CacheStore(str(root))
    store.check_root()
    made = {}
    for name in names:
        key = asset_key(name)
        data = fake.asset(SID, V, name)
        path, fd = store.open_temp(key)
        writer = ImageWriter(fd, make_decoder("none"))
        writer.write(data)
        size, digest = writer.finish()
        os.close(fd)
        info = {"version": V, "extensions": list(ISCSI.extensions), "overlay": None, "schematic": ISCSI.to_yaml(),
                "compressed_bytes": size}
        store.commit(key, path, size, digest, info)
        made[key] = data
    return made


RAW = ImageKey(V, "amd64", SID, "metal")  # the decompressed image of the same schematic


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "source"
    images = make_cache(root, images=(*IMAGES, (V, "amd64", "metal", ISCSI)))
    return root, {**images, **add_assets(root)}


def test_cached_items_lists_every_entry_with_a_valid_sidecar(mixed, tmp_path):
    root, made = mixed
    assert keys_in(root) == set(made) and RAW in made
    leaf = root / "images" / V / "amd64" / SID
    (leaf / "stray-amd64.iso").write_bytes(b"no sidecar")
    moved = json.loads((leaf / "kernel-amd64.json").read_text())
    moved["key"]["asset"] = "initramfs-amd64.xz"  # a sidecar naming another place
    (leaf / "kernel-amd64.json").write_text(json.dumps(moved))
    assert keys_in(root) == set(made) - {asset_key("kernel-amd64")}


@pytest.mark.parametrize("paths, wanted", [
    ([f"/image/{SID}/{V}/kernel-amd64"], ["kernel-amd64"]),
    ([f"/image/{SID}/1.11.2/initramfs-amd64.xz"], ["initramfs-amd64.xz"]),
    ([f"http://pxe.example:8080/image/{SID}/{V}/metal-amd64.raw.zst?ignored=1"], ["metal-amd64.raw.zst"]),
    ([f"/image/{SID}/{V}/cmdline-metal-amd64", f"/image/{SID}/{V}/cmdline-metal-amd64"], ["cmdline-metal-amd64"]),
    ([f"/image/{SID}/{V}/metal-amd64.raw"], [RAW]),  # the mirror's .raw is our decompressed image
    ([f"/image/{SID}/{V}/metal-x86_64.raw"], [RAW]),
    # our image route never names an asset, though the kernel's key has platform metal too
    ([f"/images/talos/{V}/amd64/metal.raw?extensions=iscsi-tools"], [RAW]),
    ([f"/images/talos/{V}/amd64/metal.raw?schematic={SID}"], [RAW]),
])
def test_export_by_mirror_url_paths(mixed, tmp_path, paths, wanted):
    root, made = mixed
    out = tmp_path / "export.tar"
    assert export(root, out, *paths) == 0
    keys = {w if isinstance(w, ImageKey) else asset_key(w) for w in wanted}
    assert {m.name: data for m, data in members(out)[1:]} == {f"{PREFIX}/images/{k.relpath}": made[k] for k in keys}
    metadata = manifest_of(out)["metadata"]
    if any(k.asset for k in keys):
        assert metadata[f"schematic-{SID}"] == ISCSI.to_yaml()  # from the sidecar: meta/ holds none here
    else:
        assert not any(n.startswith("schematic-") for n in metadata)


@pytest.mark.parametrize("path, words", [
    (f"/image/{SID}/{V}/kernel-arm64", ["no cached image matches (v1.11.2, " + SID[:12]]),
    (f"/image/{SID}/v1.11.1/kernel-amd64", ["no cached image matches"]),
    (f"/image/{'ab' * 32}/{V}/kernel-amd64", ["no cached image matches"]),
    (f"/image/{SID[:-1]}X/{V}/kernel-amd64", ["is not a schematic ID"]),
    (f"/image/{SID}/latest/kernel-amd64", ["is not a Talos version"]),
    (f"/image/{SID}/{V}/bogus", ["not a factory asset path", "invalid profile path"]),
    (f"/image/{SID}/{V}/kernel-amd64.sha256", ["not a factory asset path"]),
    (f"/image/{SID}/{V}/..%2Fkernel-amd64", ["not a factory asset path"]),
    (f"/image/{SID}/{V}/cmdline-a+b-amd64", ["not a factory asset path"]),
    (f"/image/{SID}/{V}/a/b", ["not an image URL path"]),
    (f"/image/{SID}/{V}", ["not an image URL path"]),
])
def test_a_bad_or_unmatched_mirror_path_is_exit_2(mixed, tmp_path, capsys, path, words):
    root, _ = mixed
    out = tmp_path / "out" / "export.tar"
    out.parent.mkdir()
    assert export(root, out, f"/image/{SID}/{V}/kernel-amd64", path) == 2
    one_line_error(capsys, *words)
    assert os.listdir(out.parent) == []


def test_parse_url_gives_the_key_the_mirror_gives():
    from talos_twisted.mirror import asset_key as mirror_key

    for name in (*ASSETS, "metal-amd64.iso", "installer-arm64.tar", "aws-amd64-secureboot-uki.efi",
                 "cmdline-metal-arm64-secureboot", "digital-ocean-amd64.raw.xz", "metal-arm64.raw"):
        assert parse_url(f"/image/{SID}/{V}/{name}") == mirror_key(SID, V, name, asset_profile(name)), name
    with pytest.raises(UsageError):
        parse_url(f"/image/{SID}/{V}/cmdline-x.tmp-y-amd64")  # would look like a temporary file of the cache


def test_the_mirrors_validation_keeps_its_wording():
    assert asset_profile("kernel-amd64").kind == "kernel"
    for path, message in (
        ("cmdline-a+b-amd64", 'error parsing profile from path: invalid profile path: "cmdline-a+b-amd64"'),
        ("kernel-sparc", 'error parsing profile from path: invalid architecture: "sparc"'),
        ("../x", 'error parsing profile from path: invalid profile path: "../x"'),
    ):
        with pytest.raises(MirrorError) as e:
            asset_profile(path)
        assert (e.value.status, e.value.message) == (400, message)


def test_assets_round_trip_byte_exact_with_the_schematic_text(mixed, tmp_path, capsys):
    root, made = mixed
    archive, site = tmp_path / "export.tar", tmp_path / "site"
    assert export(root, archive) == 0
    assert import_(site, archive) == 0
    assert keys_in(site) == set(made)
    assert all((site / "images" / k.relpath).read_bytes() == data for k, data in made.items())
    assert f"imported {len(made)} image(s), 0 already cached, 0 failed" in capsys.readouterr().out
    assert MetadataStore(str(site / "meta")).load(f"schematic-{SID}") == ISCSI.to_yaml()
    assert import_(site, archive) == 0
    assert f"imported 0 image(s), {len(made)} already cached" in capsys.readouterr().out


# --- the manifest: old archives, hostile keys ---------------------------------------------------


def rewrite_manifest(archive, out, change):
    entries = members(archive)
    doc = json.loads(entries[0][1])
    change(doc)
    data = json.dumps(doc).encode()
    entries[0][0].size = len(data)
    write_tar(out, [(entries[0][0], data), *entries[1:]])


def test_an_archive_without_assets_is_in_the_old_format_and_imports(tmp_path):
    root = tmp_path / "source"
    made = make_cache(root)
    archive, old, site = tmp_path / "export.tar", tmp_path / "old.tar", tmp_path / "site"
    assert export(root, archive) == 0
    manifest = manifest_of(archive)
    assert all(set(e["key"]) == {"version", "arch", "schematic", "platform"} for e in manifest["entries"])
    assert not any(n.startswith("schematic-") for n in manifest["metadata"])  # what older readers accept

    def as_before(doc):  # exactly what the tool wrote before assets existed
        doc["tool"] = "talos-images-cache 0.9"
        doc["entries"] = [{**e, "key": {f: e["key"][f] for f in ("version", "arch", "schematic", "platform")}}
                          for e in doc["entries"]]

    rewrite_manifest(archive, old, as_before)
    assert import_(site, old) == 0
    assert keys_in(site) == set(made)


BAD_ASSETS = [
    "../x", "a/b", "/etc/passwd", ".kernel-amd64", "kernel-amd64/", "kernel-amd64\n", "kernel-amd64\0",
    "kernel-arm64",  # another arch than the key's
    "metal-amd64.raw",  # the decompressed image is not an asset
    "cmdline-x.tmp-y-amd64",  # a temporary file's name
    "bogus", "kernel-amd64.sha256", "x" * 200,
]


@pytest.mark.parametrize("bad", BAD_ASSETS)
def test_an_unsafe_or_inconsistent_asset_name_refuses_the_archive(mixed, tmp_path, capsys, bad):
    root, _ = mixed
    archive, hostile, site = tmp_path / "export.tar", tmp_path / "hostile.tar", tmp_path / "site"
    assert export(root, archive) == 0

    def change(doc):
        entry = next(e for e in doc["entries"] if e["key"].get("asset") == "kernel-amd64")
        entry["key"]["asset"] = bad
        entry["member"] = f"{PREFIX}/images/{V}/amd64/{SID}/{bad}"

    rewrite_manifest(archive, hostile, change)
    assert import_(site, hostile) == 2
    one_line_error(capsys, "invalid key")
    assert keys_in(site) == set() and temps_in(site) == [] and not (site / "meta").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("change, words", [
    (lambda k: k.update(platform="aws"), "invalid key"),  # not the mirror's key of that asset
    (lambda k: k.update(asset=7), "invalid key"),
    (lambda k: k.update(bogus="1"), "malformed key"),
])
def test_a_key_the_mirror_would_not_make_is_refused(mixed, tmp_path, capsys, change, words):
    root, _ = mixed
    archive, hostile, site = tmp_path / "export.tar", tmp_path / "hostile.tar", tmp_path / "site"
    assert export(root, archive) == 0
    rewrite_manifest(archive, hostile,
                     lambda doc: change(next(e["key"] for e in doc["entries"] if e["key"].get("asset") == "kernel-amd64")))
    assert import_(site, hostile) == 2
    one_line_error(capsys, words)
    assert keys_in(site) == set()


@pytest.mark.parametrize("name, value, words", [
    (f"schematic-{SID}", "customization: {}\n", "is not the text of that schematic ID"),
    (f"schematic-{SID}", 42, "is not the text of that schematic ID"),
    ("schematic-../../x", "x", "unexpected metadata"),
])
def test_schematic_metadata_must_be_the_text_of_its_id(mixed, tmp_path, capsys, name, value, words):
    root, _ = mixed
    archive, hostile, site = tmp_path / "export.tar", tmp_path / "hostile.tar", tmp_path / "site"
    assert export(root, archive) == 0
    rewrite_manifest(archive, hostile, lambda doc: doc["metadata"].__setitem__(name, value))
    assert import_(site, hostile) == 2
    one_line_error(capsys, words)
    assert keys_in(site) == set() and not (site / "meta").exists()


def test_a_schematic_text_is_merged_by_its_id():
    name, text = f"schematic-{SID}", ISCSI.to_yaml()
    assert merge_metadata(None, text, name) == text
    assert merge_metadata(text, text, name) == text
    assert merge_metadata("stale junk", text, name) == text
    assert merge_metadata(text, "other", name) == text


def test_the_manifest_is_first_and_assets_are_regular_members(mixed, tmp_path):
    root, made = mixed
    out = tmp_path / "export.tar"
    assert main(["export", "--cache-dir", str(root), "--out", str(out)]) == 0
    found = members(out)
    assert found[0][0].name == MANIFEST
    assert all(m.isreg() and m.mode == 0o640 for m, _ in found)
    assert len(found) == 1 + len(made)
