"""The .xz container (xz-file-format 1.2), parsed without decompressing.

Pure logic, no I/O.  Used to learn an image's raw size from the file's tail (the index),
and to cut a single-stream file into whole blocks that decode independently, so blocks
can be decompressed in parallel (liblzma releases the GIL).  liblzma still checks every
byte it decodes: `decode_block` hands it each block wrapped as a one-block stream.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

HEADER_MAGIC, FOOTER_MAGIC = b"\xfd7zXZ\x00", b"YZ"
HEADER_SIZE = FOOTER_SIZE = 12
CHECK_NONE, CHECK_CRC32, CHECK_CRC64, CHECK_SHA256 = 0, 1, 4, 10
FILTER_LZMA2, FILTER_DELTA = 0x21, 0x03
DEFAULT_TAIL_GUESS = 64 * 1024  # footer + index of ~10k 1 MiB blocks (6 bytes a record): ~10 GiB
_VLI_MAX = (1 << 63) - 1
_BCJ = {0x04: lzma.FILTER_X86, 0x05: lzma.FILTER_POWERPC, 0x06: lzma.FILTER_IA64,
        0x07: lzma.FILTER_ARM, 0x08: lzma.FILTER_ARMTHUMB, 0x09: lzma.FILTER_SPARC}


class XzFormatError(ValueError):
    """The bytes are not a valid .xz structure (bad magic, CRC, size or field)."""


def check_size(check_type: int) -> int:
    """Size of a block's Check field; the spec fixes it even for reserved check IDs."""
    if not 0 <= check_type <= 15:
        raise XzFormatError(f"check type {check_type} out of range")
    return 0 if check_type == 0 else 4 << ((check_type - 1) // 3)


def _round4(n: int) -> int:
    return (n + 3) & ~3


def _crc32(b: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(b))


def _varint(b: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Decode the multibyte integer at b[pos:end]: (value, position after it)."""
    value = 0
    for i in range(pos, min(end, pos + 9)):
        if b[i] == 0 and i > pos:  # spec 1.2: a non-minimal encoding is invalid
            raise XzFormatError(f"{what}: non-minimal multibyte integer")
        value |= (b[i] & 0x7F) << 7 * (i - pos)
        if not b[i] & 0x80:
            return value, i + 1
    raise XzFormatError(f"{what}: truncated or over-long multibyte integer")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes((n,)))


def _check_type_of(flags: bytes, what: str) -> int:
    if flags[0] != 0 or flags[1] & 0xF0:
        raise XzFormatError(f"{what}: unsupported stream flags {flags.hex()}")
    return flags[1] & 0x0F


@dataclass(frozen=True)
class StreamHeader:
    check_type: int


@dataclass(frozen=True)
class StreamFooter:
    backward_size: int  # the index's size in bytes (decoded from the stored value)
    check_type: int


def parse_stream_header(b: bytes) -> StreamHeader:
    """Parse the stream header in the first HEADER_SIZE bytes of `b`."""
    if len(b) < HEADER_SIZE or b[:6] != HEADER_MAGIC:
        raise XzFormatError("stream header: not xz (bad magic or truncated)")
    if _crc32(b[6:8]) != b[8:12]:
        raise XzFormatError("stream header: CRC32 mismatch")
    return StreamHeader(_check_type_of(b[6:8], "stream header"))


def parse_stream_footer(b: bytes) -> StreamFooter:
    """Parse the stream footer in the last FOOTER_SIZE bytes of `b`."""
    f = b[-FOOTER_SIZE:]
    if len(f) < FOOTER_SIZE or f[10:] != FOOTER_MAGIC:
        raise XzFormatError("stream footer: bad magic (truncated file, padding or not xz)")
    if _crc32(f[4:10]) != f[:4]:
        raise XzFormatError("stream footer: CRC32 mismatch")
    size = (int.from_bytes(f[4:8], "little") + 1) * 4
    return StreamFooter(size, _check_type_of(f[8:10], "stream footer"))


@dataclass(frozen=True)
class BlockInfo:
    number: int  # within the stream
    compressed_offset: int  # of the block header, in the file
    unpadded_size: int  # header + compressed data + check (spec 4.3.1): no block padding
    uncompressed_offset: int  # within the stream
    uncompressed_size: int

    @property
    def total_size(self) -> int:
        """Bytes the block takes: check sizes are multiples of 4, so padding is a round-up."""
        return _round4(self.unpadded_size)


@dataclass(frozen=True)
class XzIndex:
    check_type: int
    records: tuple[tuple[int, int], ...]  # (unpadded_size, uncompressed_size) per block
    index_size: int  # bytes of the index field: the footer's backward size
    stream_offset: int = 0  # file offset of the stream header

    @cached_property
    def uncompressed_size(self) -> int:
        return sum(u for _, u in self.records)

    @property
    def stream_size(self) -> int:
        blocks = sum(_round4(p) for p, _ in self.records)
        return HEADER_SIZE + blocks + self.index_size + FOOTER_SIZE

    @cached_property
    def blocks(self) -> tuple[BlockInfo, ...]:
        out, coff, uoff = [], self.stream_offset + HEADER_SIZE, 0
        for n, (unpadded, size) in enumerate(self.records):
            out.append(BlockInfo(n, coff, unpadded, uoff, size))
            coff, uoff = coff + _round4(unpadded), uoff + size
        return tuple(out)


def encode_index(records: list[tuple[int, int]]) -> bytes:
    out = bytearray(b"\x00" + _encode_varint(len(records)))
    for unpadded, size in records:
        out += _encode_varint(unpadded) + _encode_varint(size)
    out += bytes(-len(out) % 4)
    return bytes(out + _crc32(bytes(out)))


def parse_index(b: bytes, check_type: int, stream_offset: int = 0) -> XzIndex:
    """Parse an index field given exactly (its size is the footer's backward size)."""
    if len(b) < 8 or len(b) % 4:
        raise XzFormatError(f"index: size {len(b)} is not a multiple of 4 of at least 8")
    if b[0] != 0:
        raise XzFormatError("index: missing index indicator")
    if _crc32(b[:-4]) != b[-4:]:
        raise XzFormatError("index: CRC32 mismatch")
    end = len(b) - 4
    count, pos = _varint(b, 1, end, "index record count")
    min_unpadded = 8 + 1 + check_size(check_type)  # smallest header, 1 byte of LZMA2, check
    records = []
    for _ in range(count):  # a record takes >= 2 bytes, so a huge count fails fast
        unpadded, pos = _varint(b, pos, end, "index record")
        size, pos = _varint(b, pos, end, "index record")
        if not min_unpadded <= unpadded <= _VLI_MAX - 3:
            raise XzFormatError(f"index: invalid unpadded size {unpadded}")
        records.append((unpadded, size))
    if end - pos != -pos % 4 or any(b[pos:end]):
        raise XzFormatError("index: bad index padding (record count or size fields corrupt)")
    index = XzIndex(check_type, tuple(records), len(b), stream_offset)
    if index.uncompressed_size > _VLI_MAX or index.stream_size > _VLI_MAX:
        raise XzFormatError("index: sizes exceed 2^63")
    return index


@dataclass(frozen=True)
class NeedMore:
    """Fetch the file from `start` to its end and call again with that longer tail."""
    start: int


@dataclass(frozen=True)
class UnknownSize:
    """The raw size cannot be told from the tail (several streams, padding, too small)."""
    reason: str


def tail_range(total_length: int, guess: int = DEFAULT_TAIL_GUESS) -> tuple[int, int]:
    """(first, last) inclusive byte range, as for an HTTP Range header, of the tail to fetch."""
    if total_length < 1 or guess < FOOTER_SIZE:
        raise ValueError("need a non-empty file and a guess of at least the footer size")
    return max(0, total_length - guess), total_length - 1


def index_from_tail(tail: bytes, total_length: int) -> XzIndex | NeedMore | UnknownSize:
    """The index of a single-stream file, from its last len(tail) bytes.

    Only the last stream is visible from the tail, so one whose header, blocks and index
    do not add up to the whole file means several streams (or garbage): UnknownSize.
    """
    if len(tail) > total_length:
        raise ValueError("tail is longer than the file")
    if total_length % 4:
        raise XzFormatError(f"{total_length} bytes: an xz file is a multiple of 4 bytes")
    if total_length < HEADER_SIZE + 8 + FOOTER_SIZE:
        return UnknownSize(f"{total_length} bytes cannot be a single xz stream")
    if len(tail) < FOOTER_SIZE:
        return NeedMore(total_length - FOOTER_SIZE)
    if tail[-4:] == b"\0\0\0\0":  # a footer ends with "YZ": this is stream padding
        return UnknownSize("the file ends with stream padding")
    footer = parse_stream_footer(tail)
    needed = footer.backward_size + FOOTER_SIZE
    if needed + HEADER_SIZE > total_length:
        raise XzFormatError(f"stream footer: index of {footer.backward_size} bytes exceeds the file")
    if len(tail) < needed:
        return NeedMore(total_length - needed)
    index = parse_index(tail[-needed:-FOOTER_SIZE], footer.check_type)
    if index.stream_size > total_length:
        raise XzFormatError(f"index describes {index.stream_size} bytes, file has {total_length}")
    if index.stream_size != total_length:
        return UnknownSize(f"last stream is {index.stream_size} of {total_length} bytes:"
                           " several streams or stream padding")
    if len(tail) == total_length and parse_stream_header(tail).check_type != footer.check_type:
        raise XzFormatError("stream header and footer flags differ")
    return index


def raw_size_from_tail(tail: bytes, total_length: int) -> int | NeedMore | UnknownSize:
    """Uncompressed size of a single-stream xz file from its tail (see index_from_tail)."""
    index = index_from_tail(tail, total_length)
    return index.uncompressed_size if isinstance(index, XzIndex) else index


@dataclass(frozen=True)
class FilterFlags:
    id: int
    properties: bytes


@dataclass(frozen=True)
class BlockHeader:
    header_size: int
    compressed_size: int | None  # of the Compressed Data field alone
    uncompressed_size: int | None
    filters: tuple[FilterFlags, ...]

    def unpadded_size(self, check_type: int) -> int | None:
        if self.compressed_size is None:
            return None
        return self.header_size + self.compressed_size + check_size(check_type)

    def total_size(self, check_type: int) -> int | None:
        """Bytes of the whole block: header, data, block padding, check."""
        unpadded = self.unpadded_size(check_type)
        return None if unpadded is None else _round4(unpadded)


def parse_block_header(b: bytes) -> BlockHeader | None:
    """Parse the block header at the start of `b`; None if `b` does not hold it all yet."""
    if b[:1] == b"\0":
        raise XzFormatError("block header: this is the index indicator")
    size = (b[0] + 1) * 4 if b else 8
    if len(b) < size:
        return None
    if _crc32(b[:size - 4]) != b[size - 4:size]:
        raise XzFormatError("block header: CRC32 mismatch")
    flags, end, pos = b[1], size - 4, 2
    if flags & 0x3C:
        raise XzFormatError("block header: reserved flag bits set")
    csize = usize = None
    if flags & 0x40:
        csize, pos = _varint(b, pos, end, "block compressed size")
        if csize == 0:
            raise XzFormatError("block header: compressed size is zero")
    if flags & 0x80:
        usize, pos = _varint(b, pos, end, "block uncompressed size")
    filters = []
    for _ in range((flags & 3) + 1):
        fid, pos = _varint(b, pos, end, "filter id")
        psize, pos = _varint(b, pos, end, "filter properties size")
        if fid >= 1 << 62 or pos + psize > end:
            raise XzFormatError("block header: invalid filter flags")
        filters.append(FilterFlags(fid, bytes(b[pos:pos + psize])))
        pos += psize
    if any(b[pos:end]):
        raise XzFormatError("block header: non-zero header padding")
    return BlockHeader(size, csize, usize, tuple(filters))


def lzma_filters(header: BlockHeader) -> list[dict[str, Any]]:
    """The header's filter chain as `lzma` filter specs, for lzma.FORMAT_RAW decoding."""
    out: list[dict[str, Any]] = []
    for f in header.filters:
        p = f.properties
        if f.id == FILTER_LZMA2 and len(p) == 1 and p[0] <= 40:
            dict_size = 0xFFFFFFFF if p[0] == 40 else (2 | p[0] & 1) << (p[0] // 2 + 11)
            out.append({"id": lzma.FILTER_LZMA2, "dict_size": dict_size})
        elif f.id == FILTER_DELTA and len(p) == 1:
            out.append({"id": lzma.FILTER_DELTA, "dist": p[0] + 1})
        elif f.id in _BCJ and len(p) in (0, 4):
            out.append({"id": _BCJ[f.id], "start_offset": int.from_bytes(p, "little")})
        else:
            raise XzFormatError(f"unsupported filter 0x{f.id:x} (properties {p.hex()})")
    return out


def decode_block(header: BlockHeader, block_bytes: bytes, check_type: int) -> bytes:
    """Decompress one whole block (header to check) on its own, verifying sizes and check.

    The block goes to liblzma wrapped as a one-block stream (stream header, block, an index
    and footer made here): liblzma then checks header CRC, padding, both sizes and a check
    of any type in C without the GIL, and decodes any filter chain it supports.
    """
    unpadded = header.unpadded_size(check_type)
    if unpadded is None:
        raise XzFormatError("block header lacks the compressed size: decode sequentially")
    if len(block_bytes) != _round4(unpadded):
        raise XzFormatError(f"block is {len(block_bytes)} bytes, header says {_round4(unpadded)}")
    flags = bytes((0, check_type))
    dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    try:
        dec.decompress(HEADER_MAGIC + flags + _crc32(flags))
        out = dec.decompress(block_bytes)
        if header.uncompressed_size is not None and len(out) != header.uncompressed_size:
            raise XzFormatError("block uncompressed size differs from its header")
        index = encode_index([(unpadded, len(out))])
        back = struct.pack("<I", len(index) // 4 - 1) + flags
        rest = dec.decompress(index + _crc32(back) + back + FOOTER_MAGIC)
    except lzma.LZMAError as e:
        ids = ", ".join(f"0x{f.id:x}" for f in header.filters)
        raise XzFormatError(f"corrupt block (filters {ids}): {e}") from None
    if rest or not dec.eof or dec.unused_data:
        raise XzFormatError("block does not end where its header says")
    return out
