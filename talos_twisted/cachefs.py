"""Safe file-system primitives for the cache: nothing is followed out of the cache root.

A symlink planted anywhere under the root must neither be served nor written through, so
every path below it is reached by a walk of directory fds: each component opened with
``O_NOFOLLOW | O_DIRECTORY`` relative to its parent (``dir_fd``), files with ``O_NOFOLLOW``;
unlike ``realpath`` + checks, no window between check and use. The root itself is the
operator's configured path, trusted (it may be a symlink to a bigger disk). Modes are set
with ``fchmod`` after creation, so no umask (``--umask=000``) makes anything writable by others.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Sequence

DIR_MODE = 0o750
FILE_MODE = 0o640
TEMP_MARK = ".tmp-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path component is a symlink, not a directory, or not a plain file name."""


class CacheRootError(Exception):
    """The cache root may not be used: one line naming the path, the problem and the fix."""


def check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(errno.EINVAL, "not a plain file name", name)


def temp_name(name: str) -> str:
    """A fresh temporary name next to `name`; recovery removes whatever carries the mark."""
    return f"{name}{TEMP_MARK}{uuid.uuid4().hex[:12]}"


def _unsafe(e: OSError, name: str, what: str) -> OSError:
    # O_NOFOLLOW gives ELOOP on a symlink, O_DIRECTORY ENOTDIR on a symlink or a file
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(e.errno, f"not {what} (a symlink?)", name)
    return e


def open_child_dir(parent: int, name: str, create: bool = False) -> int:
    """Open directory `name` under the directory fd `parent`, never through a symlink."""
    check_name(name)
    made = False
    if create:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=parent)
            made = True
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        raise _unsafe(e, name, "a directory") from None
    if made:
        os.fchmod(fd, DIR_MODE)  # mkdir's mode is masked by the umask
    return fd


def open_root(root: str, create: bool = False) -> int:
    if create and not os.path.isdir(root):
        os.makedirs(root, exist_ok=True)
        os.chmod(root, DIR_MODE)
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(root: str, parts: Sequence[str], create: bool = False) -> int:
    """An fd of ``root/parts[0]/.../parts[-1]``, every component checked (and made if `create`)."""
    fd = open_root(root, create)
    try:
        for part in parts:
            child = open_child_dir(fd, part, create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def opened_dir(root: str, parts: Sequence[str], create: bool = False) -> Iterator[int]:
    fd = open_dir(root, parts, create)
    try:
        yield fd
    finally:
        os.close(fd)


def create_file(dir_fd: int, name: str, flags: int = os.O_RDWR) -> int:
    """Create `name` (it must not exist: no symlink is written through), mode FILE_MODE."""
    check_name(name)
    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        unlink(dir_fd, name)
        raise
    return fd


def open_regular(dir_fd: int, name: str) -> tuple[int, os.stat_result]:
    """Open `name` read-only if it is a regular file (not a symlink, FIFO or device)."""
    check_name(name)
    try:
        # O_NONBLOCK: opening a planted FIFO must not block the reactor
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        raise _unsafe(e, name, "a regular file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(errno.EINVAL, "not a regular file", name)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_json(dir_fd: int, name: str, limit: int = 1 << 20) -> Any:
    """A small JSON document (its mode tightened to FILE_MODE)."""
    fd, st = open_regular(dir_fd, name)
    try:
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", name)
        tighten(fd, st, FILE_MODE)
        return json.loads(os.pread(fd, limit + 1, 0))
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_temp(dir_fd: int, name: str, data: bytes) -> str:
    """Write `data` durably to a fresh temporary name next to `name`; returns that name."""
    tmp = temp_name(name)
    fd = create_file(dir_fd, tmp, os.O_WRONLY)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink(dir_fd, tmp)
        raise
    os.close(fd)
    return tmp


def replace(dir_fd: int, src: str, dst: str) -> None:
    """Rename within one directory; a symlink at `dst` is replaced, never followed."""
    check_name(src)
    check_name(dst)
    os.replace(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_atomic(dir_fd: int, name: str, data: bytes) -> None:
    """Replace `name` with `data`: a crash leaves the old or the new content, never a mix."""
    tmp = write_temp(dir_fd, name, data)
    try:
        replace(dir_fd, tmp, name)
    except BaseException:
        unlink(dir_fd, tmp)
        raise
    os.fsync(dir_fd)


def unlink(dir_fd: int, name: str) -> bool:
    """Remove `name` (a symlink itself, not its target); False if it was not there."""
    check_name(name)
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dir_fd)  # the fd-based rmtree: it follows no symlink
    return True


def tighten(fd: int, st: os.stat_result, mode: int) -> bool:
    """Set `mode` on an fd we own whose mode differs (made by older versions or by hand)."""
    if stat.S_IMODE(st.st_mode) == mode or st.st_uid != os.geteuid():
        return False
    os.fchmod(fd, mode)
    return True


def scan(dir_fd: int) -> list[tuple[str, str]]:
    """(name, kind) of the entries of a directory fd; kind: symlink, dir, file or other."""
    found = []
    with os.scandir(dir_fd) as it:
        for e in it:
            try:
                link, isdir, isfile = e.is_symlink(), e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)
            except OSError:
                continue  # vanished meanwhile
            found.append((e.name, "symlink" if link else "dir" if isdir else "file" if isfile else "other"))
    return found


def root_problem(root: str, st: os.stat_result, euid: int) -> str | None:
    """Why a cache root with this `stat` may not be used by uid `euid`, or None. Pure."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return f"cache directory {root} is not a directory"
    if st.st_uid != euid:
        return f"cache directory {root} is owned by uid {st.st_uid}, not by uid {euid} the daemon runs as; chown {euid} {root}"
    if mode & stat.S_IWOTH:
        return f"cache directory {root} is writable by others (mode {mode:04o}); chmod o-w {root}"
    if mode & stat.S_IWGRP:
        return f"cache directory {root} is writable by its group (mode {mode:04o}); chmod g-w {root}"
    return None


def check_root(root: str, subdirs: Sequence[str] = ()) -> None:
    """Refuse a root (or existing `subdirs` of it) others could plant files in; make a missing one."""
    try:
        if not os.path.exists(root):
            os.close(open_root(root, create=True))
        st = os.stat(root)
    except OSError as e:
        raise CacheRootError(f"cache directory {root} cannot be used: {e.strerror or e}") from None
    problem = root_problem(root, st, os.geteuid())
    for path in [os.path.join(root, sub) for sub in subdirs if problem is None]:
        try:
            sst = os.lstat(path)
        except FileNotFoundError:
            continue
        problem = f"cache directory {path} is a symlink; remove it" if stat.S_ISLNK(sst.st_mode) else root_problem(path, sst, os.geteuid())
        if problem is not None:
            break
    if problem is not None:
        raise CacheRootError(problem)


# --- temporary files being written, and the space reserved for them ----------------------


@dataclass
class _Temp:
    key: Hashable
    fd: int  # our own dup: the writer's fd may be closed (and its number reused) any time
    target: int = 0  # the file size its reservation covers

    def stat(self) -> os.stat_result | None:
        try:
            return os.fstat(self.fd)
        except OSError:
            return None


class TempFiles:
    """Temporary files being written, and the bytes reserved for them not yet on disk.

    A reservation says "`nbytes` more past the current end of the file"; as the file grows
    the bytes written leave the reservation (the file system's free space counts them).
    """

    def __init__(self) -> None:
        self._temps: dict[str, _Temp] = {}
        self._early: dict[Hashable, int] = {}  # reserved before the temp file exists

    def __contains__(self, path: object) -> bool:
        return path in self._temps

    def track(self, path: str, key: Hashable, fd: int) -> None:
        self._temps[path] = _Temp(key, os.dup(fd), self._early.pop(key, 0))

    def untrack(self, path: str) -> None:
        temp = self._temps.pop(path, None)
        if temp is not None:
            os.close(temp.fd)

    def reserve(self, key: Hashable, nbytes: int) -> Callable[[], None]:
        """Record the reservation; returns what undoes it."""
        temp = next((t for t in reversed(self._temps.values()) if t.key == key), None)
        if temp is None:
            before = self._early.get(key, 0)
            self._early[key] = nbytes
            return lambda: self._early.__setitem__(key, before)
        st = temp.stat()
        previous, temp.target = temp.target, (st.st_size if st else 0) + nbytes

        def undo() -> None:
            temp.target = previous

        return undo

    def release(self, key: Hashable) -> None:
        self._early.pop(key, None)
        for temp in self._temps.values():
            if temp.key == key:
                temp.target = 0

    def space(self, max_size: int) -> tuple[int, int]:
        """(pending, usage): bytes reserved not yet written; disk use plus pending of the
        temps that can be kept (a temp larger than max_size will not be: no reason to evict)."""
        pending = sum(self._early.values())
        counted = 0
        for temp in self._temps.values():
            st = temp.stat()
            size, usage = (st.st_size, st.st_blocks * 512) if st else (0, 0)
            ahead = max(0, temp.target - size)
            pending += ahead
            if not max_size or usage + ahead <= max_size:
                counted += usage + ahead
        return pending, counted
