"""A cached image's record: `CacheEntry`, and its JSON sidecar (``{name}.json``) as commit
writes it (`sidecar_doc`) and recovery reads it back (`load_entry`, which checks it against
the file it sits next to)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from talos_twisted import cachefs as fs
from talos_twisted.request import ImageKey

SIDECAR = ".json"


@dataclass(frozen=True)
class CacheEntry:
    key: ImageKey
    path: str
    size: int  # bytes served
    disk_usage: int  # bytes allocated (the file is sparse)
    sha256: str
    created: float
    last_access: float
    info: dict[str, Any] = field(default_factory=dict)
    verified: float = 0.0  # when the file last matched sha256 (written, or scrubbed)
    file_id: tuple[int, int] | None = field(default=None, compare=False)  # (st_dev, st_ino)

    @property
    def etag(self) -> str:
        return f'"sha256-{self.sha256}"'

    def describe(self) -> dict[str, Any]:
        return {
            **{f: getattr(self.key, f) for f in ("version", "arch", "schematic", "platform")},
            **({"asset": self.key.asset} if self.key.asset else {}),
            "url_path": self.key.url_path(),
            **{f: getattr(self, f) for f in ("size", "disk_usage", "sha256", "created", "last_access")},
            **{k: v for k, v in self.info.items() if k in ("extensions", "overlay")},
        }


def disk_usage(st: os.stat_result) -> int:
    return st.st_blocks * 512


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def same_file(entry: CacheEntry, st: os.stat_result | None) -> bool:
    """Whether `st` is `entry`'s own file: regular, of its size, the inode it was indexed with."""
    # nlink 1: a hard link planted to a file elsewhere is no image of ours either
    return (
        st is not None and stat.S_ISREG(st.st_mode) and st.st_size == entry.size and st.st_nlink == 1
        and (entry.file_id is None or entry.file_id == (st.st_dev, st.st_ino))
    )


def sidecar_doc(entry: CacheEntry) -> bytes:
    """The sidecar of `entry`, as written next to its file."""
    doc = entry.describe()
    doc.pop("url_path")
    key = {f: doc.pop(f) for f in ("version", "arch", "schematic", "platform", "asset") if f in doc}
    return json.dumps({**doc, "key": key, "verified": entry.verified, "info": entry.info}).encode("utf-8")


def load_entry(dfd: int, name: str, path: str, images: str) -> CacheEntry | None:
    """The entry of the file `name` (at `path`, in the directory `dfd` below `images`) as its
    sidecar describes it; None unless the sidecar is whole and names this very file."""
    try:
        doc = fs.read_json(dfd, name + SIDECAR)
        key = ImageKey(**{k: str(v) for k, v in doc["key"].items()})
        fd, st = fs.open_regular(dfd, name)
        try:
            fs.tighten(fd, st, fs.FILE_MODE)
        finally:
            os.close(fd)
        # the sidecar must name the place it is found in: a copied or forged one does not
        if os.path.join(images, key.relpath) != path or st.st_size != doc["size"] or not _is_sha256(doc["sha256"]):
            return None
        created = float(doc["created"])
        entry = CacheEntry(
            key, path, int(doc["size"]), disk_usage(st), doc["sha256"], created,
            float(doc.get("last_access", created)), dict(doc.get("info") or {}),
            float(doc.get("verified", created)), (st.st_dev, st.st_ino),
        )
        return entry if same_file(entry, st) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
