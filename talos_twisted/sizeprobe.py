"""The raw size of an image, as early as its compressed body tells it.

zstd: the first frame's header carries the content size (Talos writes one frame). xz: the
total is only in the index at the end, read with a small ranged request where the server
honours Range. Either may be absent: the size is then known at the end.
"""

from __future__ import annotations

from typing import Any

from talos_twisted import xzformat, zstdformat

_ZSTD_HEAD_LIMIT = 4096  # skippable frames longer than this: not worth waiting for


class ZstdHead:
    """Fed the first bytes of a body: the frame's content size, None, or not yet known."""

    def __init__(self) -> None:
        self._head = bytearray()
        self.done = False

    def restart(self) -> None:
        self._head.clear()  # a new attempt from byte 0

    def feed(self, data: bytes) -> tuple[bool, int | None]:
        """(decided, size): decided once the header has been read (or given up on)."""
        if self.done:
            return False, None
        self._head += data[: _ZSTD_HEAD_LIMIT - len(self._head)]
        try:
            found = zstdformat.frame_content_size(bytes(self._head))
        except zstdformat.ZstdFormatError:
            found = None  # the decoder will say what is wrong
        if isinstance(found, zstdformat.NeedMore):
            if len(self._head) < _ZSTD_HEAD_LIMIT:
                return False, None
            found = None
        self.done = True
        return True, found


async def xz_size_from_tail(factory: Any, url: bytes, length: int) -> int | None:
    """The raw size from the xz index at the end of `url` (`length` bytes), or None.

    `factory.read_range(url, first, last)` gives those bytes, or None where the server does
    not answer the range."""
    first, last = xzformat.tail_range(length)
    for _ in range(2):  # the guess, then the index's exact size if it was larger
        tail = await factory.read_range(url, first, last)
        if tail is None:
            return None
        found = xzformat.raw_size_from_tail(tail, length)
        if isinstance(found, xzformat.NeedMore):
            first = found.start
            continue
        return found if isinstance(found, int) else None
    return None
