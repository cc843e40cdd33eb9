"""The export archive of `talos-images-cache`: its manifest, writing it, reading it safely.

One tar (PAX format), optionally one zstd frame around it: ``talos-images-export/manifest.json``
first (the entries with size and sha256, their sidecar ``info``, and the metadata the daemon
needs offline), then one regular member per entry, ``talos-images-export/images/{key.relpath}``:
a decompressed image (``{platform}.raw``) or a factory asset the mirror keeps byte-exact
(``kernel-amd64``, ``metal-amd64.raw.zst``; its key carries ``asset``, written only when set,
so an export without assets reads as before). A plain ``tar``/``zstd -d | tar`` can unpack it
for inspection.

Reading never uses a member's name as a path: the manifest's keys are validated and each image
is written through `CacheStore.open_temp(key)`; a member is only accepted if it is a regular
file whose name is exactly the one the manifest's key gives, once, with the manifest's size.
Everything streams in `CHUNK`-sized pieces (images are GiB-sized, mostly zeros): holes of the
source file are not read, all-zero blocks of the target are not written (`ImageWriter`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Iterator, Mapping

import zstandard

from talos_twisted.assetpath import ProfileError, asset_platform, check_asset_path, is_decompressed_image
from talos_twisted.cachefs import TEMP_MARK
from talos_twisted.names import ARCHES, is_extension_name, is_platform_name
from talos_twisted.request import ImageKey
from talos_twisted.schematic import schematic_id
from talos_twisted.versions import InvalidVersion, Version

PREFIX = "talos-images-export"
MANIFEST = f"{PREFIX}/manifest.json"
FORMAT = "talos-images-export"
FORMAT_VERSION = 1
CHUNK = 1 << 20
MANIFEST_LIMIT = 64 << 20  # far above any real manifest; bounds what is read into memory
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZEROS = bytes(CHUNK)
_HEX = frozenset("0123456789abcdef")
KEY_FIELDS = ("version", "arch", "schematic", "platform")
SCHEMATIC_PREFIX = "schematic-"


class ArchiveError(Exception):
    """The archive is not a well-formed export (one line naming the problem)."""


@dataclass(frozen=True)
class Item:
    """One image in an export: what its sidecar says."""

    key: ImageKey
    size: int
    sha256: str
    created: float
    info: dict[str, Any]

    @property
    def member(self) -> str:
        return f"{PREFIX}/images/{self.key.relpath}"


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def metadata_name_ok(name: str) -> bool:
    """Only what the daemon reads offline: ``versions``, ``catalog-{version}`` and
    ``schematic-{id}`` (the text the mirror and the PXE route need)."""
    if name == "versions":
        return True
    if name.startswith(SCHEMATIC_PREFIX):
        return is_sha256(name[len(SCHEMATIC_PREFIX) :])
    return name.startswith("catalog-") and version_ok(name[len("catalog-") :])


def schematic_text_ok(name: str, value: object) -> bool:
    """Whether `value` is the schematic text `name` (``schematic-{id}``) stands for: its sha256 is the ID."""
    return isinstance(value, str) and schematic_id(value) == name[len(SCHEMATIC_PREFIX) :]


def version_ok(text: str) -> bool:
    try:
        return str(Version.parse(text)) == text
    except InvalidVersion:
        return False


def asset_ok(key: ImageKey) -> bool:
    """Whether `key.asset` is an asset name the mirror keeps (the factory's grammar, a safe
    file name, not a temporary's) and the key is the one the mirror gives it (arch, platform)."""
    try:
        profile = check_asset_path(key.asset)
    except ProfileError:
        return False
    return (TEMP_MARK not in key.asset and not is_decompressed_image(profile)
            and (key.arch, key.platform) == (profile.arch, asset_platform(profile)))


def check_key(doc: object) -> ImageKey:
    """An ImageKey from untrusted JSON; every part as strict as the daemon's own keys."""
    if not isinstance(doc, dict) or not set(KEY_FIELDS) <= set(doc) <= {*KEY_FIELDS, "asset"}:
        raise ArchiveError(f"manifest: malformed key {json.dumps(doc)[:200]}")
    key = ImageKey(**{k: str(v) for k, v in doc.items()})
    if not (version_ok(key.version) and key.arch in ARCHES and is_sha256(key.schematic) and is_platform_name(key.platform)
            and (not key.asset or asset_ok(key))):
        raise ArchiveError(f"manifest: invalid key {key.relpath[:200]!r}")
    return key


def key_doc(key: ImageKey) -> dict[str, str]:
    """A key as the manifest (and the sidecar) writes it: ``asset`` only when set."""
    return {**{f: getattr(key, f) for f in KEY_FIELDS}, **({"asset": key.asset} if key.asset else {})}


def clean_info(doc: object) -> dict[str, Any]:
    """The sidecar `info` fields the daemon uses, type-checked; anything else is dropped."""
    src = doc if isinstance(doc, dict) else {}
    info: dict[str, Any] = {}
    if isinstance(src.get("version"), str) and version_ok(src["version"]):
        info["version"] = src["version"]
    exts = src.get("extensions")
    if isinstance(exts, list) and all(isinstance(e, str) and is_extension_name(e) for e in exts):
        info["extensions"] = list(exts)
    overlay = src.get("overlay")
    if overlay is None or (isinstance(overlay, str) and is_extension_name(overlay)):
        info["overlay"] = overlay
    for name, kind in (("schematic", str), ("compressed_bytes", int)):
        if isinstance(src.get(name), kind) and not isinstance(src.get(name), bool):
            info[name] = src[name]
    return info


def manifest_doc(items: list[Item], metadata: Mapping[str, Any], created: float, tool: str) -> bytes:
    entries = [
        {"key": key_doc(i.key), "member": i.member, "size": i.size, "sha256": i.sha256, "created": i.created, "info": i.info}
        for i in items
    ]
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": created, "tool": tool,
           "entries": entries, "metadata": dict(metadata)}
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def parse_manifest(data: bytes) -> tuple[list[Item], dict[str, Any]]:
    """The items and metadata of a manifest; ArchiveError unless every part is well-formed."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ArchiveError("the manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArchiveError("not a talos-images export (the manifest's format is missing)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(f"export format version {doc.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    entries, metadata = doc.get("entries"), doc.get("metadata")
    if not isinstance(entries, list) or not isinstance(metadata, dict):
        raise ArchiveError("manifest: 'entries' must be a list and 'metadata' a mapping")
    items: list[Item] = []
    for e in entries:
        if not isinstance(e, dict):
            raise ArchiveError("manifest: an entry is not a mapping")
        key = check_key(e.get("key"))
        size, sha, created = e.get("size"), e.get("sha256"), e.get("created", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not is_sha256(sha):
            raise ArchiveError(f"manifest: entry {key} has no valid size and sha256")
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            created = 0.0
        item = Item(key, size, str(sha), float(created), clean_info(e.get("info")))
        if "schematic" in item.info and schematic_id(item.info["schematic"]) != key.schematic:
            raise ArchiveError(f"manifest: entry {key} carries the schematic of another ID")
        if e.get("member") != item.member or any(i.key == key or i.member == item.member for i in items):
            raise ArchiveError(f"manifest: entry {key} is listed twice or under another member name")
        items.append(item)
    bad = [n for n in metadata if not (isinstance(n, str) and metadata_name_ok(n))]
    if bad:
        raise ArchiveError(f"manifest: unexpected metadata {str(bad[0])[:100]!r}")
    wrong = [n for n in metadata if n.startswith(SCHEMATIC_PREFIX) and not schematic_text_ok(n, metadata[n])]
    if wrong:
        raise ArchiveError(f"manifest: metadata {wrong[0][:100]!r} is not the text of that schematic ID")
    return items, metadata


def merge_metadata(current: Any, imported: Any, name: str) -> Any:
    """What the target keeps of `name`: the union. Every version either side lists (so
    `latest` is the newest stable of both), and per catalog every extension and overlay either
    side lists (the target's entry where both do). Nothing the target knows is dropped; when
    the factory is reachable again its answers replace all of it anyway. A schematic's text
    is fixed by its ID (its sha256): the target's, else the archive's."""
    if name.startswith(SCHEMATIC_PREFIX):
        return current if schematic_text_ok(name, current) or not schematic_text_ok(name, imported) else imported
    if name == "versions":
        both = [*(current if isinstance(current, list) else []), *(imported if isinstance(imported, list) else [])]
        return [str(v) for v in sorted({Version.parse(v) for v in both if isinstance(v, str) and version_ok(v)})]
    mine: dict[str, Any] = current if isinstance(current, dict) else {}
    theirs: dict[str, Any] = imported if isinstance(imported, dict) else {}
    merged = dict(mine)
    for part in ("extensions", "overlays"):
        have = [e for e in mine.get(part) or [] if isinstance(e, dict)]
        names = {e.get("name") for e in have}
        more = [e for e in theirs.get(part) or []
                if isinstance(e, dict) and isinstance(e.get("name"), str) and e["name"] not in names]
        merged[part] = have + more
    return merged


# --- writing --------------------------------------------------------------------------


class HoleReader:
    """A file object over `fd` for `tarfile.addfile`: holes (SEEK_DATA) come from a zero buffer
    without reading the disk, and everything read is hashed on the way."""

    def __init__(self, fd: int, size: int):
        self._fd, self._size = fd, size
        self._sha = hashlib.sha256()
        self._pos = 0
        self._data_at = 0  # the start of the data extent at or after _pos (kept up to date)
        self._data_end = 0
        self._sparse = True

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def _locate(self) -> None:
        if self._pos < self._data_end:
            return
        if self._sparse:
            try:
                self._data_at = os.lseek(self._fd, self._pos, os.SEEK_DATA)
                self._data_end = os.lseek(self._fd, self._data_at, os.SEEK_HOLE)
                return
            except OSError as e:
                if e.errno == errno.ENXIO:  # a hole up to the end of the file
                    self._data_at = self._data_end = self._size
                    return
                self._sparse = False  # the file system cannot tell: read everything
        self._data_at, self._data_end = self._pos, self._size

    def _piece(self, n: int) -> bytes:
        self._locate()
        if self._data_at > self._pos:
            return _ZEROS[: min(n, CHUNK, self._data_at - self._pos)]
        data = os.pread(self._fd, min(n, CHUNK, self._data_end - self._pos), self._pos)
        if not data:
            raise OSError(errno.EIO, f"the file ended at {self._pos} bytes, not {self._size}")
        return data

    def read(self, n: int = CHUNK) -> bytes:
        # exactly `n` bytes up to the end: tarfile's copy treats a short read as truncation
        n = min(n, self._size - self._pos)
        parts = []
        while n > 0:
            piece = self._piece(n)
            self._sha.update(piece)
            self._pos += len(piece)
            n -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)


@contextmanager
def writing(out: BinaryIO, compress: bool) -> Iterator[tarfile.TarFile]:
    """A streaming tar writer on `out` (inside a zstd frame if `compress`); `out` stays open."""
    # zstandard ships no complete annotations (close() is untyped): kept as Any
    zw: Any = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(out, closefd=False) if compress else None
    target: IO[bytes] = zw if zw is not None else out
    # bufsize: tarfile's stream buffer; its default (10 KiB) costs a call per 10 KiB of GiB images
    with tarfile.open(fileobj=target, mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT) as tf:
        setattr(tf, "copybufsize", CHUNK)  # real (3.8+) but not in typeshed; the default copies 16 KiB at a time
        yield tf
    if zw is not None:
        zw.close()  # the end of the frame (closefd=False: `out` itself is closed by its owner)


def add_bytes(tf: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o640, int(mtime)
    tf.addfile(info, io.BytesIO(data))


def add_image(tf: tarfile.TarFile, item: Item, fd: int) -> str:
    """Append `item` read from `fd`; returns the sha256 of the bytes written."""
    info = tarfile.TarInfo(item.member)
    info.size, info.mode, info.mtime = item.size, 0o640, int(item.created)
    reader = HoleReader(fd, item.size)
    tf.addfile(info, reader)
    return reader.hexdigest()


# --- reading --------------------------------------------------------------------------


def _kind(m: tarfile.TarInfo) -> str:
    kinds = [(m.issym, "symlink"), (m.islnk, "hard link"), (m.isdir, "directory"), (m.ischr, "character device"),
             (m.isblk, "block device"), (m.isfifo, "FIFO"), (m.issparse, "sparse file")]
    return next((name for test, name in kinds if test()), "regular file" if m.isreg() else f"type {m.type!r}")


def check_member(m: tarfile.TarInfo, expected: Mapping[str, Item], seen: set[str]) -> Item:
    """The manifest's item `m` carries; ArchiveError for anything else (links, devices,
    ``..``, absolute or unlisted names, duplicates, sizes other than the manifest's)."""
    item = expected.get(m.name)
    if item is None or m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or m.issparse():
        raise ArchiveError(f"unexpected member {m.name[:200]!r} ({_kind(m)}) not listed in the manifest")
    if m.name in seen:
        raise ArchiveError(f"member {m.name!r} appears twice")
    if m.size != item.size:
        raise ArchiveError(f"member {m.name!r} has {m.size} bytes, the manifest says {item.size}")
    seen.add(m.name)
    return item


@contextmanager
def reading(src: BinaryIO) -> Iterator[tarfile.TarFile]:
    """A streaming tar reader on `src` (a plain tar or a zstd-compressed one, told by its magic)."""
    peek = getattr(src, "peek", None)
    head = peek(4)[:4] if peek is not None else b""
    zr: Any = None
    if head == ZSTD_MAGIC:
        zr = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True, closefd=False)
    source: IO[bytes] = zr if zr is not None else src
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK) as tf:
            yield tf
    finally:
        if zr is not None:
            zr.close()


def read_manifest(tf: tarfile.TarFile) -> tuple[list[Item], dict[str, Any]]:
    first = tf.next()
    if first is None or first.name != MANIFEST or first.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        name = "nothing" if first is None else repr(first.name[:200])
        raise ArchiveError(f"not a talos-images export: the first member is {name}, not {MANIFEST!r}")
    if first.size > MANIFEST_LIMIT:
        raise ArchiveError(f"the manifest is larger than {MANIFEST_LIMIT} bytes")
    f = tf.extractfile(first)
    assert f is not None  # a regular member
    return parse_manifest(f.read())
