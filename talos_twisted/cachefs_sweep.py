"""The walk of the cache layout at start-up (`sweep_images`, `sweep`): it yields each leaf
directory's regular files to recovery and, on the way, removes what it must not follow or
keep (symlinks, strays, interrupted temporary files), with `cachefs`'s primitives."""

from __future__ import annotations

import os
import stat
from collections import Counter
from typing import Container, Iterator

from twisted.logger import Logger

from talos_twisted.cachefs import DIR_MODE, TEMP_MARK, UnsafePath, open_child_dir, open_root, scan, tighten, unlink

log = Logger()


def _remove_stray(dir_fd: int, name: str, kind: str, path: str, tally: Counter[str]) -> None:
    tally["removed"] += 1
    if kind == "symlink":
        tally["symlinks"] += 1
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        # warn: nothing the daemon writes is a symlink; someone planted it
        log.warn("removing symlink {path} -> {target} from the cache", path=path, target=target)
    else:
        log.warn("removing unexpected {kind} {path} from the cache", kind=kind, path=path)
    try:
        unlink(dir_fd, name)
    except OSError as e:
        log.warn("could not remove {path}: {error}", path=path, error=str(e))


def sweep_images(root: str, images: str, keep: Container[str], tally: Counter[str]) -> Iterator[
    tuple[int, tuple[str, ...], list[str]]
]:
    """`sweep` of ``{root}/images`` (made if missing, or if a symlink or a file was there)."""
    top = open_root(root, create=True)
    try:
        try:
            fd = open_child_dir(top, "images", create=True)
        except UnsafePath:
            link = stat.S_ISLNK(os.stat("images", dir_fd=top, follow_symlinks=False).st_mode)
            _remove_stray(top, "images", "symlink" if link else "file", images, tally)
            fd = open_child_dir(top, "images", create=True)
    finally:
        os.close(top)
    try:
        yield from sweep(fd, images, 3, keep, tally)
    finally:
        os.close(fd)


def sweep(
    top: int, base: str, depth: int, keep: Container[str], tally: Counter[str], parts: tuple[str, ...] = ()
) -> Iterator[tuple[int, tuple[str, ...], list[str]]]:
    """(fd, parts, regular files) of each directory `depth` levels below the fd `top`.

    On the way, directories get DIR_MODE, and removed are: symlinks, anything other than a
    directory above the leaves, and in the leaves directories, special files and temporary
    files (but those in `keep`, being written). The fds are closed once the caller resumes.
    """
    try:
        tighten(top, os.fstat(top), DIR_MODE)
    except OSError as e:
        log.warn("could not set the mode of {path}: {error}", path=base, error=str(e))
    files: list[str] = []
    for name, kind in scan(top):
        path = os.path.join(base, name)
        if kind == "dir" and len(parts) < depth:
            try:
                child = open_child_dir(top, name)
            except UnsafePath:
                kind = "symlink"  # swapped for one since the scan
            else:
                try:
                    yield from sweep(child, path, depth, keep, tally, (*parts, name))
                finally:
                    os.close(child)
                continue
        if len(parts) == depth and kind == "file":
            if TEMP_MARK not in name:
                files.append(name)
            elif path not in keep:
                unlink(top, name)  # an interrupted write: expected, not worth a warning
                tally["removed"] += 1
            continue
        _remove_stray(top, name, kind, path, tally)
    if len(parts) == depth:
        yield top, parts, files
