"""The on-disk image store: layout, sidecars, atomic commit, LRU eviction, recovery.

Layout: ``{root}/images/{version}/{arch}/{schematic}/{platform}.raw`` with a JSON sidecar
``{platform}.raw.json``. An image is written as ``{platform}.raw.tmp-*`` next to its final
name and renamed into place only once complete and verified, so a path without ``.tmp``
always holds a whole image. Called from the reactor thread only (the fsync of the data has
been done by the writer thread before commit).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from twisted.logger import Logger

from talos_twisted.request import ImageKey

TEMP_MARK = ".tmp-"
SIDECAR = ".json"
# last access is persisted into the sidecar when the stored value is older than this: LRU
# order then survives a restart without a sidecar write per hit
ACCESS_PERSIST_INTERVAL = 60.0


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

    @property
    def etag(self) -> str:
        return f'"sha256-{self.sha256}"'

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.key.version,
            "arch": self.key.arch,
            "schematic": self.key.schematic,
            "platform": self.key.platform,
            "size": self.size,
            "disk_usage": self.disk_usage,
            "sha256": self.sha256,
            "created": self.created,
            "last_access": self.last_access,
            **{k: v for k, v in self.info.items() if k in ("extensions", "overlay")},
        }


def _disk_usage(st: os.stat_result) -> int:
    return st.st_blocks * 512


class CacheStore:
    log = Logger()

    def __init__(
        self,
        root: str,
        max_size: int = 0,
        min_free: int = 0,
        now: Callable[[], float] = time.time,
        free_space: Callable[[str], int] | None = None,
    ):
        self.root = root
        self.images = os.path.join(root, "images")
        self.max_size = max_size
        self.min_free = min_free
        self._now = now
        self._free = free_space or (lambda p: shutil.disk_usage(p).free)
        self._index: dict[ImageKey, CacheEntry] = {}
        self._pins: dict[ImageKey, int] = {}
        self._stored_access: dict[ImageKey, float] = {}  # last_access as in each sidecar

    # --- lookup --------------------------------------------------------------------

    def path_for(self, key: ImageKey) -> str:
        return os.path.join(self.images, key.relpath)

    def peek(self, key: ImageKey) -> CacheEntry | None:
        """The entry of `key` if it is cached, without counting as an access (prefetch)."""
        entry = self._index.get(key)
        if entry is None:
            return None
        if not os.path.exists(entry.path):
            self.log.warn("cache entry {key} vanished from disk", key=str(key))
            self._forget(key)
            return None
        return entry

    def get(self, key: ImageKey) -> CacheEntry | None:
        """The entry of `key` if it is cached; counts as an access (LRU)."""
        entry = self.peek(key)
        if entry is None:
            return None
        now = self._now()
        entry = replace(entry, last_access=now)
        self._index[key] = entry
        if now - self._stored_access.get(key, entry.created) > ACCESS_PERSIST_INTERVAL:
            self._persist_access(entry)
        return entry

    def _persist_access(self, entry: CacheEntry) -> None:
        try:
            self._write_sidecar(entry)
        except OSError as e:
            # only the LRU order after a restart suffers: keep serving
            self.log.warn(
                "could not record the last access of {key}: {error}", key=str(entry.key), error=str(e)
            )
            return
        self._stored_access[entry.key] = entry.last_access

    def _forget(self, key: ImageKey) -> CacheEntry | None:
        self._stored_access.pop(key, None)
        return self._index.pop(key, None)

    def entries(self) -> list[CacheEntry]:
        return sorted(self._index.values(), key=lambda e: e.last_access, reverse=True)

    @property
    def total_usage(self) -> int:
        return sum(e.disk_usage for e in self._index.values())

    # --- pins: entries being read are never evicted ------------------------------

    def pin(self, key: ImageKey) -> None:
        self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, key: ImageKey) -> None:
        n = self._pins.get(key, 0) - 1
        if n > 0:
            self._pins[key] = n
        else:
            self._pins.pop(key, None)

    # --- writing -----------------------------------------------------------------

    def temp_path(self, key: ImageKey) -> str:
        final = self.path_for(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        return f"{final}{TEMP_MARK}{uuid.uuid4().hex[:12]}"

    def discard(self, temp: str) -> None:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.warn("could not remove {path}: {error}", path=temp, error=str(e))

    def commit(self, key: ImageKey, temp: str, size: int, sha256: str, info: dict[str, Any]) -> CacheEntry | None:
        """Move a complete, verified, fsynced temp file into place.

        Returns None (and removes the file) when the image is larger than the whole cache:
        it is streamed to its clients (who hold it open) but not kept.
        """
        st = os.stat(temp)
        if st.st_size != size:
            self.discard(temp)
            raise OSError(f"temporary file of {key} has {st.st_size} bytes, expected {size}")
        if self.max_size and _disk_usage(st) > self.max_size:
            self.log.warn(
                "not caching {key}: {usage} bytes on disk exceed max_cache_size {max}",
                key=str(key),
                usage=_disk_usage(st),
                max=self.max_size,
            )
            self.discard(temp)
            return None
        now = self._now()
        final = self.path_for(key)
        os.utime(temp, (now, now))
        os.replace(temp, final)
        entry = CacheEntry(key, final, size, _disk_usage(st), sha256, now, now, dict(info))
        self._write_sidecar(entry)
        old = self._index.get(key)
        self._index[key] = entry
        self._stored_access[key] = now
        if old is not None and old.path != final:
            self._remove_files(old)
        self.evict()
        return entry

    def _write_sidecar(self, entry: CacheEntry) -> None:
        doc = {
            "key": asdict(entry.key),
            "size": entry.size,
            "sha256": entry.sha256,
            "created": entry.created,
            "last_access": entry.last_access,
            "info": entry.info,
        }
        directory = os.path.dirname(entry.path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(entry.path) + TEMP_MARK)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, entry.path + SIDECAR)
        except BaseException:
            self.discard(tmp)
            raise

    # --- eviction ----------------------------------------------------------------

    def _remove_files(self, entry: CacheEntry) -> None:
        for path in (entry.path + SIDECAR, entry.path):
            self.discard(path)

    def remove(self, key: ImageKey) -> None:
        entry = self._forget(key)
        if entry is not None:
            self._remove_files(entry)

    def _over_budget(self) -> bool:
        if self.max_size and self.total_usage > self.max_size:
            return True
        if self.min_free and os.path.isdir(self.root) and self._free(self.root) < self.min_free:
            return True
        return False

    def evict(self) -> list[ImageKey]:
        """Remove least-recently-used entries not in use until within budget."""
        evicted = []
        while self._over_budget():
            candidates = [e for e in self._index.values() if e.key not in self._pins]
            if not candidates:
                break
            victim = min(candidates, key=lambda e: e.last_access)
            self.log.info(
                "evicting {key} ({usage} bytes, last used {age:.0f}s ago)",
                key=str(victim.key),
                usage=victim.disk_usage,
                age=self._now() - victim.last_access,
            )
            self.remove(victim.key)
            evicted.append(victim.key)
        return evicted

    # --- start-up ----------------------------------------------------------------

    def recover(self) -> None:
        """Remove leftovers of interrupted writes and rebuild the index from the sidecars."""
        self._index.clear()
        self._stored_access.clear()
        removed = 0
        for dirpath, _dirs, files in os.walk(self.images):
            for name in files:
                path = os.path.join(dirpath, name)
                if TEMP_MARK in name:
                    self.discard(path)
                    removed += 1
                elif name.endswith(".raw"):
                    entry = self._load(path)
                    if entry is None:
                        self.log.warn("discarding cache file without a valid sidecar: {path}", path=path)
                        self._remove_files_at(path)
                        removed += 1
                    else:
                        self._index[entry.key] = entry
                        self._stored_access[entry.key] = entry.last_access
                elif name.endswith(".raw" + SIDECAR) and not os.path.exists(path[: -len(SIDECAR)]):
                    self.discard(path)
        self.log.info(
            "cache at {root}: {count} images, {usage} bytes on disk, {removed} leftovers removed",
            root=self.root,
            count=len(self._index),
            usage=self.total_usage,
            removed=removed,
        )
        self.evict()

    def _remove_files_at(self, path: str) -> None:
        self.discard(path + SIDECAR)
        self.discard(path)

    def _load(self, path: str) -> CacheEntry | None:
        try:
            with open(path + SIDECAR, encoding="utf-8") as f:
                doc = json.load(f)
            key = ImageKey(**doc["key"])
            st = os.stat(path)
            if self.path_for(key) != path or st.st_size != doc["size"]:
                return None
            sha = doc["sha256"]
            if not (isinstance(sha, str) and len(sha) == 64):
                return None
            return CacheEntry(
                key, path, int(doc["size"]), _disk_usage(st), sha, float(doc["created"]),
                float(doc.get("last_access", doc["created"])), dict(doc.get("info") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
