"""Where a committed cache file reads as zeros: asked of the file system, an extent at a time.

A hit sends the holes of its sparse file as zeros without reading them. Reading a hole makes
the kernel allocate and zero a page-cache page per 4 KiB: the first hit of a freshly cached
1 GiB image took 2.1-2.6 s that way, against 0.5-0.6 s once those zero pages were cached
(and then they held a GiB of memory for nothing).

`SEEK_DATA`/`SEEK_HOLE` are used only on committed files: written once, fsynced, never
written again, so no dirty page can be mistaken for a hole (the way OpenZFS's 2023 bug lost
data). A growing file's holes come from the writer instead (`talos_twisted.zeroruns`). The
sha256 of an entry is computed without these answers (`ImageWriter.seal`), and the scrub
compares the two. A file system that cannot tell (EINVAL, ENOTSUP...) is read like data.
"""

from __future__ import annotations

import errno
import os

__all__ = ["FileHoles"]

_SEEK_DATA = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", None)


class FileHoles:
    """The holes of the first `size` bytes of `fd`, for one response (which owns `fd`)."""

    def __init__(self, fd: int, size: int):
        self._fd = fd
        self._size = size
        self._usable = _SEEK_DATA is not None and _SEEK_HOLE is not None
        self._hole = (0, 0)  # the last hole found, [start, end)
        self._data = (0, 0)  # the last data extent found, [start, end)

    def zeros_at(self, offset: int, limit: int) -> int:
        """How many bytes from `offset` (at most up to `limit`) read as zeros; 0 for data."""
        if not self._usable or offset >= self._size:
            return 0
        if self._data[0] <= offset < self._data[1]:
            return 0
        if not self._hole[0] <= offset < self._hole[1] and not self._learn(offset):
            return 0
        return max(0, min(self._hole[1], limit) - offset)

    def _learn(self, offset: int) -> bool:
        """Ask for the extent at `offset`; True if it is a hole (then `_hole` holds it)."""
        assert _SEEK_DATA is not None and _SEEK_HOLE is not None
        try:
            data = os.lseek(self._fd, offset, _SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:  # the file system cannot tell: read everything
                self._usable = False
                return False
            data = self._size  # nothing but a hole up to the end
        if data > offset:
            self._hole = (offset, min(data, self._size))
            return True
        try:
            end = os.lseek(self._fd, offset, _SEEK_HOLE)
        except OSError:
            self._usable = False
            return False
        self._data = (offset, min(end, self._size))
        return False
