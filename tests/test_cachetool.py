"""`talos-images-cache export / import`: an air-gapped site served from an imported cache.

The end-to-end test runs the real daemon (the `stack` fixture) on the imported cache with the
factory unreachable; the others build caches as the daemon does (CacheStore.commit) without
sockets and run the command line in-process, and once as a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import pytest_twisted

from talos_twisted.cache import CacheStore
from talos_twisted.cachetool import cached_items, main
from talos_twisted.cachetool_archive import MANIFEST, PREFIX, merge_metadata
from talos_twisted.decompress import make_decoder
from talos_twisted.metastore import MetadataStore
from talos_twisted.request import ImageKey
from talos_twisted.schematic import Overlay, Schematic
from talos_twisted.testing.fakefactory import DEFAULT_VERSIONS, FakeFactory, extensions_catalog, overlays_catalog
from talos_twisted.versions import Version, newest_stable, parse_version_list
from talos_twisted.writer import ImageWriter

from .conftest import MiB, sha256

EMPTY = Schematic()
QGA = Schematic(extensions=("siderolabs/qemu-guest-agent",))
RPI = Schematic(overlay=Overlay("rpi_generic", "siderolabs/sbc-raspberrypi"))
Q_QGA = "?extensions=qemu-guest-agent"
IMAGES = (  # (version, arch, platform, schematic)
    ("v1.11.2", "amd64", "openstack", QGA),
    ("v1.11.2", "amd64", "openstack", EMPTY),
    ("v1.11.1", "arm64", "metal", RPI),
)
KEYS = {s: ImageKey(v, a, s.id, p) for v, a, p, s in IMAGES}


def make_cache(root, image_size=1 * MiB, images=IMAGES, versions=DEFAULT_VERSIONS):
    """A cache directory as the daemon leaves it (entries, sidecars, versions, catalogs);
    returns {key: image bytes}."""
    fake = FakeFactory(image_size=image_size)
    store = CacheStore(str(root))
    store.check_root()
    meta = MetadataStore(os.path.join(root, "meta"))
    if versions is not None:
        meta.save("versions", versions)
    made = {}
    for version, arch, platform, schematic in images:
        v = Version.parse(version)
        meta.save(f"catalog-{version}", {"extensions": extensions_catalog(v), "overlays": overlays_catalog(v)})
        key = ImageKey(version, arch, schematic.id, platform)
        data = fake.raw_image(schematic.id, version, platform, arch)
        path, fd = store.open_temp(key)
        writer = ImageWriter(fd, make_decoder("none"))
        writer.write(data)
        size, digest = writer.finish()
        os.close(fd)
        info = {"version": version, "extensions": list(schematic.extensions),
                "overlay": schematic.overlay.name if schematic.overlay else None,
                "schematic": schematic.to_yaml(), "compressed_bytes": len(data) // 10}
        store.commit(key, path, size, digest, info)
        made[key] = data
    return made


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "source"
    return root, make_cache(root)


def keys_in(root):
    return {i.key for i in cached_items(str(root))}


def temps_in(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if ".tmp-" in f]


def image_bytes(root, key):
    return (root / "images" / key.relpath).read_bytes()


def members(path):
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()]


def manifest_of(path):
    return json.loads(dict((m.name, data) for m, data in members(path))[MANIFEST])


def write_tar(path, entries):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("talos-images-cache: "), err
    assert "Traceback" not in err[0] and all(w in err[0] for w in words), err
    return err[0]


def export(root, out, *paths, compress=False):
    return main(["export", "--cache-dir", str(root), "--out", str(out), *(["--compress", "zstd"] if compress else []), *paths])


def import_(root, archive, *more):
    return main(["import", "--cache-dir", str(root), *more, str(archive)])


# --- end to end: the daemon serves the imported cache with the factory unreachable ----------


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


@pytest_twisted.ensureDeferred
async def test_imported_cache_is_served_offline_latest_included(stack, tmp_path):
    resp, latest = await stack.get(stack.image_url(version="latest", query=Q_QGA))
    assert resp.code == 200 and latest == stack.expected(QGA.id)
    resp, metal = await stack.get(stack.image_url(version="v1.11.1", platform="metal"))
    assert resp.code == 200 and metal == stack.expected(EMPTY.id, version="v1.11.1", platform="metal")

    archive, site = tmp_path / "export.tar", tmp_path / "site"
    assert export(stack.tmp_path / "cache", archive) == 0
    assert import_(site, archive) == 0
    assert keys_in(site) == keys_in(stack.tmp_path / "cache") and len(keys_in(site)) == 2
    imported = site / "images" / ImageKey("v1.11.2", "amd64", QGA.id, "openstack").relpath
    assert imported.stat().st_blocks * 512 < imported.stat().st_size  # written sparse

    await stack.stop_daemon()
    await stack.start_daemon(base_url="http://127.0.0.1:1", cache_directory=str(site))  # port 1: refused
    resp, body = await stack.get(stack.image_url(version="latest", query=Q_QGA))
    assert resp.code == 200 and header(resp, "X-Talos-Cache") == "HIT" and header(resp, "X-Talos-Version") == "v1.11.2"
    assert body == latest
    resp, body = await stack.get(stack.image_url(version="v1.11.1", platform="metal"))
    assert resp.code == 200 and header(resp, "X-Talos-Cache") == "HIT" and body == metal
    resp, body = await stack.get(stack.image_url(version="latest", query=Q_QGA, checksum=True))
    assert resp.code == 200 and body.decode() == f"{sha256(latest)}  openstack.raw\n"
    assert stack.fake.counts["image_get"] == 2  # only the original downloads


# --- export ----------------------------------------------------------------------------


@pytest.mark.parametrize("paths, wanted", [
    (["/images/talos/latest/amd64/openstack.raw?extensions=qemu-guest-agent"], [QGA]),
    (["http://pxe.example:8080/images/talos/v1.11.2/amd64/openstack.raw?extensions=siderolabs/qemu-guest-agent"], [QGA]),
    (["/images/talos/v1.11.2/amd64/openstack.raw"], [EMPTY]),
    (["/images/talos/v1.11.1/arm64/metal.raw?overlay=rpi-generic"], [RPI]),
    (["/images/talos/latest/amd64/openstack.raw", "/images/talos/v1.11.1/arm64/metal.raw?overlays=rpi_generic"], [EMPTY, RPI]),
    ([], [QGA, EMPTY, RPI]),
])
def test_export_exports_the_named_images_only(source, tmp_path, paths, wanted):
    root, made = source
    out = tmp_path / "export.tar"
    assert export(root, out, *paths) == 0
    found = members(out)
    assert found[0][0].name == MANIFEST  # first: an importer reads it before any image
    expected = {f"{PREFIX}/images/{KEYS[s].relpath}": made[KEYS[s]] for s in wanted}
    assert {m.name: data for m, data in found[1:]} == expected
    assert all(m.isreg() and m.mode == 0o640 for m, _ in found)
    manifest = manifest_of(out)
    assert [e["sha256"] for e in manifest["entries"]] == [sha256(expected[e["member"]]) for e in manifest["entries"]]
    versions = {KEYS[s].version for s in wanted}
    assert set(manifest["metadata"]) == {"versions"} | {f"catalog-{v}" for v in versions}
    assert manifest["metadata"]["versions"] == DEFAULT_VERSIONS
    assert [p for p in os.listdir(tmp_path) if p.endswith(".part")] == []


@pytest.mark.parametrize("path, words", [
    ("/images/talos/v1.11.2/amd64/openstack.raw?extensions=iscsi-tools", ["no cached image matches"]),
    ("/images/talos/v1.11.2/amd64/openstack.raw?extensions=qemu-guest-agent,iscsi-tools", ["no cached image"]),
    ("/images/talos/v1.11.0/amd64/openstack.raw", ["no cached image matches (v1.11.0, amd64, openstack)"]),
    ("/images/talos/latest/arm64/openstack.raw", ["no cached image matches (v1.11.2, arm64"]),
    ("/images/talos/v1.11.1/arm64/metal.raw?overlay=rpi_4", ["no cached image"]),
    ("/images/talos/v1.11.2/amd64/openstack.raw?bogus=1", ["unknown query parameter 'bogus'"]),
    ("/images/talos/v1.11.2/amd64", ["not an image URL path"]),
    ("/images/talos/1.x/amd64/openstack.raw", ["is not 'latest' or a Talos version"]),
])
def test_an_unmatched_path_is_exit_2_and_nothing_is_written(source, tmp_path, capsys, path, words):
    root, _ = source
    out = tmp_path / "out" / "export.tar"
    out.parent.mkdir()
    assert export(root, out, "/images/talos/latest/amd64/openstack.raw" + Q_QGA, path) == 2
    one_line_error(capsys, path, *words)
    assert os.listdir(out.parent) == []


def test_export_refuses_a_cached_image_that_does_not_match_its_sha256(source, tmp_path, capsys):
    root, _ = source
    path = root / "images" / KEYS[RPI].relpath
    with open(path, "r+b") as f:  # a bit flipped on disk (what the scrub looks for)
        f.write(bytes([f.read(1)[0] ^ 1]))
    out = tmp_path / "out" / "export.tar"
    out.parent.mkdir()
    assert export(root, out) == 1
    one_line_error(capsys, "does not match its sha256", "nothing exported")
    assert os.listdir(out.parent) == []


def test_export_usage_errors_are_one_line_exit_2(source, tmp_path, capsys):
    root, _ = source
    assert main([]) == 2
    one_line_error(capsys, "--help")
    assert main(["export", "--cache-dir", str(root)]) == 2
    one_line_error(capsys, "--out")
    assert main(["export", "--cache-dir", str(root), "--config", "x.yaml", "--out", "x"]) == 2
    one_line_error(capsys, "not allowed with")
    assert export(tmp_path / "nowhere", tmp_path / "x.tar") == 2
    one_line_error(capsys, "does not exist")
    assert export(root, root / "images" / "x.tar") == 2
    one_line_error(capsys, "inside the cache directory")
    bare = tmp_path / "bare"
    make_cache(bare, images=IMAGES[:1], versions=None)
    assert export(bare, tmp_path / "x.tar") == 2
    one_line_error(capsys, "no stored versions list")
    assert main(["--help"]) == 0
    assert "export" in capsys.readouterr().out


# --- import ----------------------------------------------------------------------------


def test_zstd_round_trip_byte_exact_and_much_smaller(source, tmp_path, capsys):
    root, made = source
    plain, packed = tmp_path / "export.tar", tmp_path / "export.tar.zst"
    assert export(root, plain) == 0 and export(root, packed, compress=True) == 0
    # the images are mostly zeros: 3 MiB of images, ~100 KiB of data
    assert plain.stat().st_size > 3 * MiB and packed.stat().st_size < plain.stat().st_size / 10
    site = tmp_path / "site"
    assert import_(site, packed) == 0
    assert keys_in(site) == set(made)
    assert all(image_bytes(site, k) == data for k, data in made.items())
    assert "imported 3 image(s), 0 already cached, 0 failed" in capsys.readouterr().out
    meta = MetadataStore(str(site / "meta"))
    assert meta.load("versions") == DEFAULT_VERSIONS
    assert meta.load("catalog-v1.11.1") == MetadataStore(str(root / "meta")).load("catalog-v1.11.1")
    assert temps_in(site) == []


def test_a_tampered_image_is_refused_and_the_others_imported(source, tmp_path, capsys):
    root, made = source
    archive, tampered = tmp_path / "export.tar", tmp_path / "tampered.tar"
    assert export(root, archive) == 0
    victim = f"{PREFIX}/images/{KEYS[QGA].relpath}"
    entries = [(m, bytes([data[0] ^ 0x80]) + data[1:] if m.name == victim else data) for m, data in members(archive)]
    write_tar(tampered, entries)
    site = tmp_path / "site"
    assert import_(site, tampered) == 1
    out, err = capsys.readouterr()
    assert "sha256 mismatch" in err and str(KEYS[QGA]) in err and "Traceback" not in err
    assert "imported 2 image(s), 0 already cached, 1 failed verification" in out
    assert keys_in(site) == {KEYS[EMPTY], KEYS[RPI]}
    assert not (site / "images" / KEYS[QGA].relpath).exists() and temps_in(site) == []


def _hostile(kind, tmp_path, first_image):
    evil = str(tmp_path / "evil")
    name = {"dotdot": "../evil", "deep-dotdot": f"{PREFIX}/../../evil", "absolute": evil}.get(kind, f"{PREFIX}/evil")
    info = tarfile.TarInfo(first_image.name if kind in ("symlink-as-image", "hardlink") else name)
    data = None
    if kind in ("dotdot", "deep-dotdot", "absolute", "unlisted"):
        data = b"pwned"
        info.size = len(data)
    elif kind in ("symlink", "symlink-as-image"):
        info.type, info.linkname = tarfile.SYMTYPE, evil
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    elif kind == "directory":
        info.type = tarfile.DIRTYPE
    return info, data


@pytest.mark.parametrize("kind", [
    "dotdot", "deep-dotdot", "absolute", "unlisted", "symlink", "symlink-as-image", "hardlink", "device", "fifo",
    "directory", "duplicate",
])
def test_a_hostile_member_refuses_the_whole_archive(source, tmp_path, capsys, kind):
    root, _ = source
    archive, hostile = tmp_path / "export.tar", tmp_path / "hostile.tar"
    assert export(root, archive) == 0
    entries = members(archive)
    # after the first image: an image already staged must not be committed either
    extra = entries[1] if kind == "duplicate" else _hostile(kind, tmp_path, entries[1][0])
    rest = entries[3:] if kind == "symlink-as-image" else entries[2:]
    write_tar(hostile, entries[:2] + [extra] + rest)
    site = tmp_path / "site"
    assert import_(site, hostile) == 2
    one_line_error(capsys, "appears twice" if kind == "duplicate" else "unexpected member")
    assert not (tmp_path / "evil").exists() and not os.path.lexists(tmp_path / "evil")
    assert keys_in(site) == set() and temps_in(site) == []
    assert not (site / "meta").exists()  # no metadata merged from a refused archive


def test_truncated_or_foreign_archives_import_nothing(source, tmp_path, capsys):
    root, _ = source
    archive = tmp_path / "export.tar"
    assert export(root, archive) == 0
    data = archive.read_bytes()
    with tarfile.open(archive) as tf:
        boundary = tf.getmembers()[2].offset  # where the second image's headers start
    site = tmp_path / "site"
    cases = {
        "truncated.tar": (data[: len(data) * 2 // 3], "unexpected end of data"),
        "cut-at-member.tar": (data[:boundary], "the archive ends before"),
        "garbage.tar": (b"\x00not a tar" * 1000, "damaged archive"),
        "zst-garbage.tar.zst": (b"\x28\xb5\x2f\xfd" + b"\xff" * 100, "damaged archive"),
        "empty.tar": (b"", "damaged archive"),
    }
    other = io.BytesIO()
    with tarfile.open(fileobj=other, mode="w") as tf:
        info = tarfile.TarInfo("README")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    cases["foreign.tar"] = (other.getvalue(), "not a talos-images export")
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert import_(site, tmp_path / name) == 2, name
        one_line_error(capsys, words)
        assert keys_in(site) == set() and temps_in(site) == [], name
    assert import_(site, tmp_path / "missing.tar") == 2
    one_line_error(capsys, "missing.tar", "No such file")


def test_already_cached_is_skipped_a_different_build_kept_unless_replace(source, tmp_path, capsys):
    root, made = source
    archive = tmp_path / "a.tar"
    assert export(root, archive) == 0
    site = tmp_path / "site"
    assert import_(site, archive) == 0
    assert import_(site, archive) == 0
    assert "imported 0 image(s), 3 already cached" in capsys.readouterr().out

    rebuilt = tmp_path / "rebuilt"  # the same keys, other bytes (factory builds are not reproducible)
    other = make_cache(rebuilt, image_size=2 * MiB, images=IMAGES[2:])
    assert export(rebuilt, tmp_path / "b.tar") == 0
    assert import_(site, tmp_path / "b.tar") == 0
    assert "a different build; --replace replaces it" in capsys.readouterr().out
    assert image_bytes(site, KEYS[RPI]) == made[KEYS[RPI]]
    assert import_(site, tmp_path / "b.tar", "--replace") == 0
    assert image_bytes(site, KEYS[RPI]) == other[KEYS[RPI]] and keys_in(site) == set(made)


def test_metadata_is_merged_as_a_union(source, tmp_path):
    root, _ = source
    archive = tmp_path / "export.tar"
    assert export(root, archive) == 0
    site = tmp_path / "site"
    meta = MetadataStore(str(site / "meta"))
    mine = {"name": "siderolabs/qemu-guest-agent", "ref": "mine"}
    meta.save("versions", ["v1.12.1", "v1.11.0"])
    meta.save("catalog-v1.11.2", {"extensions": [mine, {"name": "example/local"}], "overlays": []})
    assert import_(site, archive) == 0
    versions = meta.load("versions")
    assert set(versions) == set(DEFAULT_VERSIONS) | {"v1.12.1"}
    assert str(newest_stable(parse_version_list(versions))) == "v1.12.1"  # the newer of both sides
    catalog = meta.load("catalog-v1.11.2")
    names = [e["name"] for e in catalog["extensions"]]
    assert catalog["extensions"][:2] == [mine, {"name": "example/local"}]  # the target's kept as they are
    assert set(names) == {e["name"] for e in extensions_catalog(Version.parse("v1.11.2"))} | {"example/local"}
    assert len(names) == len(set(names))
    assert [o["name"] for o in catalog["overlays"]] == [o["name"] for o in overlays_catalog(Version.parse("v1.11.2"))]
    assert merge_metadata(None, ["v1.11.2", "junk", 3], "versions") == ["v1.11.2"]


def test_config_file_names_the_cache_directory(source, tmp_path, monkeypatch):
    root, made = source
    monkeypatch.delenv("TALOS_CACHE_DIRECTORY", raising=False)
    monkeypatch.delenv("TALOS_DEFAULT_EXTENSIONS", raising=False)
    site = tmp_path / "site"
    config = tmp_path / "talos-images.yaml"
    # default_extensions count, as for the daemon: the URL without ?extensions= names QGA
    config.write_text(f"talos:\n  cache_directory: {root}\n  default_extensions: [qemu-guest-agent]\n")
    assert main(["export", "--config", str(config), "--out", str(tmp_path / "x.tar"), "/images/talos/latest/amd64/openstack.raw"]) == 0
    config.write_text(f"talos:\n  cache_directory: {site}\n")
    assert main(["import", "--config", str(config), str(tmp_path / "x.tar")]) == 0
    assert keys_in(site) == {KEYS[QGA]}


# --- as a program -----------------------------------------------------------------------


def test_as_a_subprocess_through_a_pipe(source, tmp_path):
    root, made = source
    tool = [sys.executable, "-m", "talos_twisted.cachetool"]
    site = tmp_path / "site"
    exporter = subprocess.Popen([*tool, "export", "--cache-dir", str(root), "--out", "-", "--compress", "zstd"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    importer = subprocess.run([*tool, "import", "--cache-dir", str(site), "-"], stdin=exporter.stdout,
                              capture_output=True, timeout=60)
    exporter.stdout.close()
    assert exporter.wait(timeout=60) == 0 and importer.returncode == 0, importer.stderr
    assert b"exported 3 image(s)" in exporter.stderr.read()  # stdout carries the archive
    exporter.stderr.close()
    assert b"imported 3 image(s)" in importer.stdout
    assert {k: image_bytes(site, k) for k in keys_in(site)} == made

    failed = subprocess.run([*tool, "import", "--cache-dir", str(site), str(tmp_path / "missing.tar")],
                            capture_output=True, timeout=60)
    assert failed.returncode == 2 and failed.stdout == b""
    assert failed.stderr.decode().count("\n") == 1 and b"Traceback" not in failed.stderr
    assert failed.stderr.startswith(b"talos-images-cache: ")
