"""The on-disk image store: layout, sidecars, atomic commit, LRU eviction, space, recovery.

Layout: ``{root}/images/{version}/{arch}/{schematic}/{platform}.raw`` with a JSON sidecar
``{platform}.raw.json`` (a mirrored factory asset, kept byte-exact, is named as upstream:
``kernel-amd64``, ``metal-amd64.raw.zst``); an image is written as ``{platform}.raw.tmp-*`` and renamed into
place once complete and verified. Every path below the root goes through `cachefs` (no
symlink followed, modes set whatever the umask). Reactor thread only (the writer thread has
fsynced the data before commit).

The entry and its sidecar are `cache_entry`'s; the commit steps that keep recovery
unambiguous, and recovery itself, are described in `cache_recovery`.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from contextlib import suppress
from dataclasses import replace
from typing import Any, Callable, ContextManager

from twisted.logger import Logger

from talos_twisted import cachefs as fs
# CacheEntry and SIDECAR are cache_entry's, also imported from here by download.py,
# downloads.py and mirror.py
from talos_twisted.cache_entry import SIDECAR, CacheEntry, disk_usage, same_file, sidecar_doc
from talos_twisted.cache_recovery import recover_entries
from talos_twisted.cachefs import TEMP_MARK, CacheRootError, UnsafePath
from talos_twisted.request import ImageKey

__all__ = ["CacheEntry", "CacheRootError", "CacheStore", "UnsafePath", "TEMP_MARK", "SIDECAR"]

# last access and last verification are persisted into the sidecar when the stored value is
# older than this: LRU and scrub order survive a restart without a sidecar write per hit
ACCESS_PERSIST_INTERVAL = 60.0


class CacheStore:
    log = Logger()

    def __init__(self, root: str, max_size: int = 0, min_free: int = 0, now: Callable[[], float] = time.time,
                 free_space: Callable[[str], int] | None = None):
        self.on_evict: Callable[[], object] | None = None  # counts evictions (metrics)
        self.root = root
        self.images = os.path.join(root, "images")
        self.max_size = max_size
        self.min_free = min_free
        self._now = now
        self._free = free_space or (lambda p: shutil.disk_usage(p).free)
        self._index: dict[ImageKey, CacheEntry] = {}
        self._pins: dict[ImageKey, int] = {}
        self._stored: dict[ImageKey, tuple[float, float]] = {}  # (last_access, verified) as in each sidecar
        self._temps = fs.TempFiles()  # those opened by open_temp, and their reservations

    def check_root(self) -> None:
        """Raise CacheRootError unless the root (made 0750 if missing) is ours and not writable by others."""
        fs.check_root(self.root, ("images", "meta"))

    # --- paths: every one below the root goes through a checked walk -------------------

    def path_for(self, key: ImageKey) -> str:
        return os.path.join(self.images, key.relpath)

    def _dir(self, key: ImageKey, create: bool = False) -> ContextManager[int]:
        return fs.opened_dir(self.root, ["images", key.version, key.arch, key.schematic], create)

    def _locate(self, path: str, key: ImageKey | None = None) -> tuple[ImageKey, str]:
        """The key whose directory `path` is a temporary file in (a path we handed out), and its name."""
        rel = os.path.relpath(path, self.images).split(os.sep)
        if path != os.path.join(self.images, *rel) or len(rel) != 4 or TEMP_MARK not in rel[3]:
            raise UnsafePath(errno.EINVAL, "not a temporary file of the cache", path)
        for part in rel:
            fs.check_name(part)
        if key is None:  # only its directory matters then
            return ImageKey(rel[0], rel[1], rel[2], rel[3].split(".", 1)[0]), rel[3]
        if (key.version, key.arch, key.schematic) != tuple(rel[:3]) or not rel[3].startswith(key.filename + TEMP_MARK):
            raise UnsafePath(errno.EINVAL, f"not a temporary file of {key}", path)
        return key, rel[3]

    def _lstat(self, entry: CacheEntry) -> os.stat_result | None:
        try:
            with self._dir(entry.key) as dfd:
                return os.stat(entry.key.filename, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return None

    # --- lookup --------------------------------------------------------------------

    def peek(self, key: ImageKey) -> CacheEntry | None:
        """The entry of `key` if it is cached, without counting as an access (prefetch)."""
        entry = self._index.get(key)
        if entry is None:
            return None
        # a plain lstat of the path is enough here (no checked walk): through a planted
        # directory symlink it finds another inode, which `same_file` refuses; the file is
        # read only through `open_entry`'s checked walk (a hit's cost: issue 12, B6)
        try:
            st: os.stat_result | None = os.lstat(entry.path)
        except OSError:
            st = None
        if not same_file(entry, st):
            self.log.warn("cache entry {key} vanished or changed on disk: dropped", key=str(key), path=entry.path)
            self.remove(key)
            return None
        return entry

    def get(self, key: ImageKey) -> CacheEntry | None:
        """The entry of `key` if it is cached; counts as an access (LRU)."""
        entry = self.peek(key)
        if entry is None:
            return None
        self._index[key] = entry = replace(entry, last_access=self._now())
        self._persist_access(entry)
        return entry

    def open_entry(self, entry: CacheEntry) -> int:
        """An fd to read `entry` from: its own regular file of its size, never a symlink; else
        OSError, and an entry whose file was replaced is dropped (the next request downloads it)."""
        try:
            with self._dir(entry.key) as dfd:
                fd, st = fs.open_regular(dfd, entry.key.filename)
            if not same_file(entry, st):
                os.close(fd)
                raise UnsafePath(errno.ESTALE, "the cached file changed on disk", entry.path)
        except OSError as e:
            if self.is_current(entry, check_disk=False):
                self.log.warn("dropping cache entry {key}: {error}", key=str(entry.key), path=entry.path, error=str(e))
                self.remove(entry.key)
            raise
        return fd

    def is_current(self, entry: CacheEntry, check_disk: bool = True) -> bool:
        """Whether `entry` is still the indexed entry of its key (and, checked, its file on disk)."""
        now = self._index.get(entry.key)
        if now is None or (now.sha256, now.created, now.file_id) != (entry.sha256, entry.created, entry.file_id):
            return False
        return not check_disk or same_file(entry, self._lstat(entry))

    def mark_verified(self, entry: CacheEntry) -> None:
        """The scrub found `entry`'s file matching its sha256 now."""
        if self.is_current(entry, check_disk=False):
            self._index[entry.key] = updated = replace(self._index[entry.key], verified=self._now())
            self._persist_access(updated)

    def _persist_access(self, entry: CacheEntry) -> None:
        access, verified = self._stored.get(entry.key, (entry.created, entry.created))
        if max(entry.last_access - access, entry.verified - verified) <= ACCESS_PERSIST_INTERVAL:
            return
        try:
            self._write_sidecar(entry)
        except OSError as e:
            # only the LRU (and scrub) order after a restart suffers: keep serving
            self.log.warn("could not record the last access of {key}: {error}", key=str(entry.key), error=str(e))
            return
        self._stored[entry.key] = (entry.last_access, entry.verified)

    def _forget(self, key: ImageKey) -> CacheEntry | None:
        self._stored.pop(key, None)
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

    def open_temp(self, key: ImageKey) -> tuple[str, int]:
        """A fresh temporary file for `key`, mode 0640, no symlink followed: (path, fd).

        The caller owns the fd; the path goes to `commit` or `discard`."""
        with self._dir(key, create=True) as dfd:
            name = fs.temp_name(key.filename)
            fd = fs.create_file(dfd, name, os.O_RDWR)
        path = os.path.join(os.path.dirname(self.path_for(key)), name)
        self._temps.track(path, key, fd)
        return path, fd

    def temp_path(self, key: ImageKey) -> str:
        """A temporary name for `key`, its directories made; prefer `open_temp`, which opens it safely."""
        with self._dir(key, create=True):
            return fs.temp_name(self.path_for(key))

    def discard(self, temp: str) -> None:
        self._temps.untrack(temp)
        try:
            key, name = self._locate(temp)
            with self._dir(key) as dfd:
                fs.unlink(dfd, name)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.warn("could not remove {path}: {error}", path=temp, error=str(e))

    def commit(self, key: ImageKey, temp: str, size: int, sha256: str, info: dict[str, Any]) -> CacheEntry | None:
        """Move a complete, verified, fsynced temp file into place (the steps: `cache_recovery`).

        Returns None (and removes the file) when the image is larger than the whole cache:
        it is streamed to its clients (who hold it open) but not kept. On OSError nothing of
        the new entry is left on disk.
        """
        self._temps.untrack(temp)
        _, tname = self._locate(temp, key)
        with self._dir(key) as dfd:
            try:
                fd, st = fs.open_regular(dfd, tname)
                try:
                    usage = disk_usage(st)
                    if st.st_size != size:
                        raise OSError(f"temporary file of {key} has {st.st_size} bytes, expected {size}")
                    now = self._now()
                    os.fchmod(fd, fs.FILE_MODE)  # a temp made by the caller (temp_path) has the umask's mode
                    os.utime(fd, (now, now))
                finally:
                    os.close(fd)
            except BaseException:
                with suppress(OSError):  # the error to report is the first one
                    fs.unlink(dfd, tname)
                raise
            if self.max_size and usage > self.max_size:
                self.log.warn("not caching {key}: {usage} bytes on disk exceed max_cache_size {max}",
                              key=str(key), usage=usage, max=self.max_size)
                fs.unlink(dfd, tname)
                return None
            entry = CacheEntry(key, self.path_for(key), size, usage, sha256, now, now, dict(info), now,
                               (st.st_dev, st.st_ino))
            self._forget(key)
            self._commit_steps(dfd, entry, tname)
        self._index[key] = entry
        self._stored[key] = (now, now)
        self.evict()
        return entry

    def _commit_steps(self, dfd: int, entry: CacheEntry, tname: str) -> None:
        name = entry.key.filename
        side = name + SIDECAR
        side_tmp = ""
        try:
            if fs.unlink(dfd, side):  # (1) the entry being replaced is no longer whole
                os.fsync(dfd)
            side_tmp = fs.write_temp(dfd, side, sidecar_doc(entry))  # (2)
            fs.replace(dfd, tname, name)  # (3)
            os.fsync(dfd)
            fs.replace(dfd, side_tmp, side)  # (4)
            os.fsync(dfd)
        except BaseException:
            # leave nothing of the key (the entry replaced is gone from the index already);
            # the sidecar first, so that no sidecar outlives its image
            for leftover in (side, name, side_tmp, tname):
                try:
                    if leftover:
                        fs.unlink(dfd, leftover)
                except OSError as e:  # recovery removes it at the next start
                    self.log.warn("could not remove {name} after a failed commit of {key}: {error}",
                                  name=leftover, key=str(entry.key), error=str(e))
            raise

    def _write_sidecar(self, entry: CacheEntry) -> None:
        with self._dir(entry.key) as dfd:
            fs.write_atomic(dfd, entry.key.filename + SIDECAR, sidecar_doc(entry))

    # --- space: reservations, eviction ---------------------------------------------

    def reserve(self, key: ImageKey, nbytes: int) -> bool:
        """Make room before `nbytes` more are written past the end of `key`'s temp file.

        Evicts LRU entries not in use until the free space minus every reservation not yet
        written stays at or above min_free_space (and the usage within max_cache_size, best
        effort). False, and nothing reserved, if even that leaves too little free space.
        """
        undo = self._temps.reserve(key, nbytes)
        self.evict()
        free, pending = self._free_after_pending()
        if free is None or free - pending >= self.min_free:
            return True
        undo()
        self.log.warn(
            "no room for {nbytes} more bytes of {key}: {free} bytes free, {pending} reserved, min_free_space {min_free}",
            nbytes=nbytes, key=str(key), free=free, pending=pending, min_free=self.min_free,
        )
        return False

    def release(self, key: ImageKey) -> None:
        """The end of `key`'s reservation (its download ended)."""
        self._temps.release(key)

    def _free_after_pending(self) -> tuple[int | None, int]:
        pending, _ = self._temps.space(self.max_size)
        if not (self.min_free or pending) or not os.path.isdir(self.root):
            return None, pending
        return self._free(self.root), pending

    def _over_budget(self) -> bool:
        if self.max_size and self.total_usage + self._temps.space(self.max_size)[1] > self.max_size:
            return True
        free, pending = self._free_after_pending()
        return free is not None and free - pending < self.min_free

    def remove(self, key: ImageKey) -> None:
        entry = self._forget(key)
        if entry is None:
            return
        try:
            with self._dir(key) as dfd:
                # the sidecar first: a crash in between leaves an image without one, which recovery removes
                fs.unlink(dfd, key.filename + SIDECAR)
                fs.unlink(dfd, key.filename)
        except OSError as e:
            self.log.warn("could not remove {path}: {error}", path=entry.path, error=str(e))

    def evict(self) -> list[ImageKey]:
        """Remove least-recently-used entries not in use until within budget."""
        evicted = []
        while self._over_budget():
            candidates = [e for e in self._index.values() if e.key not in self._pins]
            if not candidates:
                break
            victim = min(candidates, key=lambda e: e.last_access)
            self.log.info("evicting {key} ({usage} bytes, last used {age:.0f}s ago)",
                          key=str(victim.key), usage=victim.disk_usage, age=self._now() - victim.last_access)
            self.remove(victim.key)
            evicted.append(victim.key)
            if self.on_evict is not None:
                self.on_evict()
        return evicted

    # --- start-up ----------------------------------------------------------------

    def recover(self) -> None:
        """Remove leftovers (temps, orphans, symlinks, strays) and rebuild the index from the sidecars."""
        self._index.clear()
        self._stored.clear()
        found, tally = recover_entries(self.root, self.images, self._temps, self.log)
        for entry in found:
            self._index[entry.key] = entry
            self._stored[entry.key] = (entry.last_access, entry.verified)
        self.log.info(
            "cache at {root}: {count} images, {usage} bytes on disk, {removed} leftovers removed ({symlinks} symlinks)",
            root=self.root, count=len(self._index), usage=self.total_usage, **tally,
        )
        self.evict()
