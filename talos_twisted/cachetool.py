"""`talos-images-cache`: move cached images to an air-gapped site in one file.

Images (``{platform}.raw``) and the factory assets the mirror keeps byte-exact (PXE kernel,
initramfs and cmdline, compressed disk images, ISOs, …) alike; URL paths name them as the
daemon serves them, ``/images/talos/…`` or the mirror's ``/image/{schematic}/{version}/{path}``.

    talos-images-cache export (--cache-dir DIR | --config FILE) --out FILE [--compress zstd] [URL-PATH ...]
    talos-images-cache import (--cache-dir DIR | --config FILE) [--replace] FILE

Export only reads the cache (it may be live: no recovery, no lock; a file replaced meanwhile
fails its sha256 check); the archive is written under a temporary name and renamed when
complete. Import stages every image as a cache temporary file, verified against its sha256,
and commits them (`CacheStore.commit`: atomic per entry) only once the whole archive has been
read and found well-formed; a malformed archive imports nothing. Metadata is merged by union
(see `merge_metadata`). Exit status: 0 ok, 1 some image failed verification, 2 any other error
(one line on stderr, no traceback). The format: `talos_twisted.cachetool_archive`; which entries
URL paths name: `talos_twisted.cachetool_select`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from typing import IO, Any, BinaryIO, Iterator, NoReturn, Sequence

import zstandard

from talos_twisted import cachefs as fs
from talos_twisted._version import __version__
from talos_twisted.cache import CacheRootError, CacheStore
from talos_twisted.cache_entry import SIDECAR
from talos_twisted.cachetool_archive import (
    CHUNK, MANIFEST, SCHEMATIC_PREFIX, ArchiveError, Item, add_bytes, add_image, check_key, check_member,
    clean_info, is_sha256, manifest_doc, merge_metadata, read_manifest, reading, schematic_text_ok, writing,
)
from talos_twisted.cachetool_select import UsageError, select
from talos_twisted.config import ConfigError, load_config
from talos_twisted.decompress import make_decoder
from talos_twisted.metastore import MetadataStore
from talos_twisted.request import ImageKey
from talos_twisted.writer import ImageWriter

PROG = "talos-images-cache"


class Verification(Exception):
    """An image does not match its sha256 (exit 1)."""


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def _say(text: str, err: bool = False) -> None:
    # progress goes to stderr when stdout carries the archive
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


# --- the cache, read only ---------------------------------------------------------------


def _leaves(root: str) -> Iterator[tuple[int, tuple[str, ...], list[str]]]:
    """(fd, (version, arch, schematic), file names) of each leaf directory; nothing removed."""
    try:
        top = fs.open_dir(root, ["images"])
    except FileNotFoundError:
        return

    def walk(fd: int, parts: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, ...], list[str]]]:
        found = fs.scan(fd)
        if len(parts) == 3:
            yield fd, parts, [n for n, kind in found if kind == "file"]
            return
        for name, kind in sorted(found):
            if kind == "dir":
                try:
                    child = fs.open_child_dir(fd, name)
                except OSError:
                    continue  # gone or swapped for a symlink since the scan: not ours to follow
                try:
                    yield from walk(child, (*parts, name))
                finally:
                    os.close(child)

    try:
        yield from walk(top, ())
    finally:
        os.close(top)


def _load(dfd: int, parts: tuple[str, ...], name: str) -> Item | None:
    """The entry `name` as its sidecar describes it, if the sidecar is whole and names this place."""
    try:
        doc = fs.read_json(dfd, name + SIDECAR)
        key = check_key(doc["key"])
        fd, st = fs.open_regular(dfd, name)
        os.close(fd)
        size, sha = doc["size"], doc["sha256"]
        if key.relpath != "/".join((*parts, name)) or st.st_size != size or not is_sha256(sha) or st.st_nlink != 1:
            return None
        return Item(key, int(size), str(sha), float(doc.get("created", 0)), clean_info(doc.get("info")))
    except (OSError, ValueError, KeyError, TypeError, ArchiveError):
        return None


def cached_items(root: str) -> list[Item]:
    """Every entry whose sidecar is whole and names its place: images and mirrored assets."""
    items = []
    for dfd, parts, files in _leaves(root):
        names = set(files)
        for name in sorted(names):
            if not name.endswith(SIDECAR) and fs.TEMP_MARK not in name and name + SIDECAR in names:
                item = _load(dfd, parts, name)
                if item is not None:
                    items.append(item)
    return items


def _open_image(root: str, key: ImageKey) -> int:
    with fs.opened_dir(root, ["images", key.version, key.arch, key.schematic]) as dfd:
        fd, _ = fs.open_regular(dfd, key.filename)
    return fd


# --- export -----------------------------------------------------------------------------


def export(root: str, out: str, paths: Sequence[str], compress: bool, defaults: Sequence[str]) -> int:
    if not os.path.isdir(root):
        raise UsageError(f"cache directory {root} does not exist")
    if out != "-" and os.path.realpath(out).startswith(os.path.realpath(root) + os.sep):
        raise UsageError(f"--out {out} is inside the cache directory; write it elsewhere")
    meta = MetadataStore(os.path.join(root, "meta"))
    versions = meta.load("versions")
    items = select(cached_items(root), paths, versions, defaults)
    if not items:
        raise UsageError(f"the cache at {root} holds no images to export")
    if not isinstance(versions, list):
        raise UsageError(f"the cache at {root} has no stored versions list (meta/versions.json): "
                         "the importing daemon could not serve offline; let the daemon reach the factory once")
    metadata: dict[str, Any] = {"versions": versions}
    for v in sorted({i.key.version for i in items}):
        catalog = meta.load(f"catalog-{v}")
        if isinstance(catalog, dict):
            metadata[f"catalog-{v}"] = catalog
        elif any(i.key.version == v and not i.key.asset for i in items):
            # (a mirrored asset is served by schematic ID: it needs no catalog)
            raise UsageError(f"the cache at {root} has no stored catalog of {v} (meta/catalog-{v}.json)")
    # the mirror names assets by schematic ID: /pxe/… and /schematics/{id} need its text offline
    # (only with assets: an export of images alone stays readable by older versions of this tool)
    for sid in sorted({i.key.schematic for i in items if i.key.asset}):
        name = SCHEMATIC_PREFIX + sid
        texts = [meta.load(name), *(i.info.get("schematic") for i in items if i.key.schematic == sid)]
        text = next((t for t in texts if schematic_text_ok(name, t)), None)
        if text is None:
            _say(f"{PROG}: warning: no text of schematic {sid} in the cache: /pxe/{sid}/… cannot answer offline", err=True)
        else:
            metadata[name] = text
    with ExitStack() as stack:
        if out == "-":
            sink, temp = sys.stdout.buffer, None
        else:
            # a temporary name next to `out`, renamed once complete: no half archive is ever `out`
            fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".part",
                                        dir=os.path.dirname(os.path.abspath(out)))
            stack.callback(_remove, temp)  # gone by then unless something failed
            os.fchmod(fd, fs.FILE_MODE)
            sink = stack.enter_context(os.fdopen(fd, "wb"))
        with writing(sink, compress) as tf:
            add_bytes(tf, MANIFEST, manifest_doc(items, metadata, time.time(), f"{PROG} {__version__.public()}"), time.time())
            for item in items:
                fd = _open_image(root, item.key)
                try:
                    sha = add_image(tf, item, fd)
                finally:
                    os.close(fd)
                if sha != item.sha256:
                    raise Verification(f"{item.key}: the cached image does not match its sha256 (changed or corrupt): "
                                       "nothing exported; remove the entry or export without it")
                _say(f"exported {item.key} ({_size(item.size)})", err=temp is None)
        sink.flush()
        if temp is not None:
            os.fsync(sink.fileno())
            os.replace(temp, out)
    where = "standard output" if out == "-" else f"{out} ({_size(os.path.getsize(out))})"
    _say(f"exported {len(items)} image(s) and {len(metadata)} metadata document(s) to {where}", err=out == "-")
    return 0


# --- import -----------------------------------------------------------------------------


def _already(root: str, item: Item) -> str | None:
    """The sha256 the target's cache holds for `item`'s key, if it holds a whole entry."""
    k = item.key
    try:
        with fs.opened_dir(root, ["images", k.version, k.arch, k.schematic]) as dfd:
            doc = fs.read_json(dfd, k.filename + SIDECAR)
            fd, st = fs.open_regular(dfd, k.filename)
            os.close(fd)
        return str(doc["sha256"]) if st.st_size == doc["size"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stage(store: CacheStore, item: Item, data: IO[bytes]) -> str:
    """Write the member to a fresh cache temporary file (sparse), verify it; its path."""
    path, fd = store.open_temp(item.key)
    try:
        writer = ImageWriter(fd, make_decoder("none", CHUNK))
        while chunk := data.read(CHUNK):
            writer.write(chunk)
        size, sha = writer.finish()
    except BaseException:
        os.close(fd)
        store.discard(path)
        raise
    os.close(fd)
    if (size, sha) != (item.size, item.sha256):
        store.discard(path)
        raise Verification(f"{item.key}: sha256 mismatch (the manifest says {item.sha256[:16]}…, the data is {sha[:16]}…): not imported")
    return path


def import_(root: str, source: str, replace: bool) -> int:
    store = CacheStore(root)
    staged: list[tuple[Item, str]] = []
    failed = skipped = imported = 0
    try:
        with ExitStack() as stack:
            src: BinaryIO = sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
            store.check_root()  # after opening the archive: a mistyped file name makes no cache directory
            tf = stack.enter_context(reading(src))
            items, metadata = read_manifest(tf)
            expected = {i.member: i for i in items}
            seen: set[str] = set()
            while (member := tf.next()) is not None:  # (iterating tf would yield the manifest again)
                item = check_member(member, expected, seen)
                have = _already(root, item)
                if have == item.sha256 or (have is not None and not replace):
                    _say(f"already cached: {item.key}" + ("" if have == item.sha256 else " (a different build; --replace replaces it)"))
                    skipped += 1
                    continue
                data = tf.extractfile(member)
                assert data is not None  # a regular member (check_member)
                try:
                    staged.append((item, _stage(store, item, data)))
                except Verification as e:
                    print(f"{PROG}: {e}", file=sys.stderr, flush=True)
                    failed += 1
            missing = [n for n in expected if n not in seen]
            if missing:
                raise ArchiveError(f"the archive ends before {missing[0]!r} (truncated?)")
        meta = MetadataStore(os.path.join(root, "meta"))
        for name, value in sorted(metadata.items()):
            merged = merge_metadata(meta.load(name), value, name)
            meta.save(name, merged)
            if meta.load(name) != merged:  # save() only logs a failure (the daemon must keep serving)
                raise UsageError(f"could not store metadata {name} in {root}/meta")
        while staged:
            item, path = staged[0]
            store.commit(item.key, path, item.size, item.sha256, item.info)
            staged.pop(0)
            imported += 1
            _say(f"imported {item.key} ({_size(item.size)})")
    finally:
        for _, path in staged:  # a malformed archive (or a failed commit): none of it is kept
            store.discard(path)
    _say(f"imported {imported} image(s), {skipped} already cached, {failed} failed verification; "
         f"metadata merged: {', '.join(sorted(metadata)) or 'none'}")
    return 1 if failed else 0


# --- the command line -----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Export cached Talos images to one file, and import it elsewhere (air-gapped sites).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ex = sub.add_parser("export", help="write cached images and their metadata to one tar file")
    im = sub.add_parser("import", help="verify and add the images of an export to a cache")
    for s in (ex, im):
        where = s.add_mutually_exclusive_group(required=True)
        where.add_argument("--cache-dir", metavar="DIR", help="the cache directory")
        where.add_argument("--config", metavar="FILE", help="the daemon's YAML file (and TALOS_* environment)")
    ex.add_argument("--out", metavar="FILE", required=True, help="the archive to write ('-': standard output)")
    ex.add_argument("--compress", choices=("none", "zstd"), default="none", help="compress the archive [none]")
    ex.add_argument("paths", nargs="*", metavar="URL-PATH",
                    help="images to export, as the daemon's URL paths: /images/talos/… or the mirror's "
                         "/image/{schematic}/{version}/{asset} (default: every cached image and asset)")
    im.add_argument("--replace", action="store_true", help="replace a cached image that is a different build")
    im.add_argument("archive", metavar="FILE", help="the archive to import ('-': standard input)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        defaults: Sequence[str] = ()
        if args.config is not None:
            talos = load_config(args.config, os.environ).talos
            root, defaults = talos.cache_directory, talos.default_extensions
        else:
            root = os.path.abspath(args.cache_dir)
        if args.command == "export":
            return export(root, args.out, args.paths, args.compress == "zstd", defaults)
        return import_(root, args.archive, args.replace)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except Verification as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except (UsageError, ArchiveError, ConfigError, CacheRootError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: {where}{e.strerror or e}", file=sys.stderr)
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:  # a damaged archive
        print(f"{PROG}: damaged archive: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
