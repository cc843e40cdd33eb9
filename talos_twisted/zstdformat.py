"""The zstd frame header (RFC 8878 §3.1.1), parsed to learn an image's raw size early.

Pure logic, no I/O.  Talos's imager writes one frame (`zstd -T0 -18` of a file), whose
header carries Frame_Content_Size, so the first few bytes of the body tell the raw size.
Only the first frame is described: a body of several frames is longer than that frame's
size, which only decoding to the end can reveal.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50
MAX_HEADER_SIZE = 18  # magic 4 + descriptor 1 + window 1 + dictionary id 4 + content size 8


class ZstdFormatError(ValueError):
    """The bytes are not a zstd frame (bad magic, reserved bit set)."""


@dataclass(frozen=True)
class NeedMore:
    """`head` is too short: call again with at least `at_least` bytes from the start."""
    at_least: int


@dataclass(frozen=True)
class FrameHeader:
    offset: int  # of the frame's magic number, after any skippable frames
    header_size: int  # magic number included
    content_size: int | None  # None when the header has no Frame_Content_Size field
    window_size: int  # for single-segment frames this is the content size
    dictionary_id: int | None
    has_checksum: bool
    single_segment: bool


def parse_frame_header(head: bytes) -> FrameHeader | NeedMore:
    """The first zstd frame's header in `head` (the body's first bytes), skipping skippable
    frames; NeedMore when `head` ends before that header does."""
    pos = 0
    while True:
        if len(head) < pos + 4:
            return NeedMore(pos + 4)
        magic = struct.unpack_from("<I", head, pos)[0]
        if magic & _SKIPPABLE_MASK != _SKIPPABLE_MAGIC:
            break
        if len(head) < pos + 8:
            return NeedMore(pos + 8)
        pos += 8 + struct.unpack_from("<I", head, pos + 4)[0]  # RFC 8878 §3.1.2
    if magic != ZSTD_MAGIC:
        raise ZstdFormatError(f"not a zstd frame at offset {pos} (magic 0x{magic:08x})")
    if len(head) < pos + 5:
        return NeedMore(pos + 5)
    fhd = head[pos + 4]
    if fhd & 0x08:
        raise ZstdFormatError("zstd frame header: reserved bit set")
    fcs_flag, single = fhd >> 6, bool(fhd & 0x20)
    did_size = (0, 1, 2, 4)[fhd & 3]
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    size = 5 + (not single) + did_size + fcs_size
    if len(head) < pos + size:
        return NeedMore(pos + size)
    p = pos + 5
    window = 0
    if not single:  # Window_Descriptor: exponent and mantissa (§3.1.1.1.2)
        wd = head[p]
        base = 1 << (10 + (wd >> 3))
        window = base + (base >> 3) * (wd & 7)
        p += 1
    dict_id = int.from_bytes(head[p:p + did_size], "little") if did_size else None
    p += did_size
    content: int | None = None
    if fcs_size:
        content = int.from_bytes(head[p:p + fcs_size], "little")
        if fcs_size == 2:  # the 2-byte field is offset by 256 (§3.1.1.1.4)
            content += 256
    if single:
        window = content or 0
    return FrameHeader(pos, size, content, window, dict_id, bool(fhd & 0x04), single)


def frame_content_size(head: bytes) -> int | None | NeedMore:
    """Frame_Content_Size of the body's first zstd frame; None if the header lacks it."""
    header = parse_frame_header(head)
    return header if isinstance(header, NeedMore) else header.content_size
