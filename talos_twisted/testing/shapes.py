"""Compressed bodies shaped like the Talos Image Factory's, produced incrementally.

Test support, pure.  The imager writes `.xz` with `xz -0 -T0` (one stream of 1 MiB blocks
whose headers carry both sizes) and `.zst` with `zstd -T0 -18` (one frame with the content
size in its header).  Images reach several GiB, so every generator here takes an iterable
of raw chunks and holds at most about one block (or one chunk) of input at a time.  Knobs
produce the other legal shapes (several streams or frames, padding, no sizes) so decoders'
less common paths stay tested.

The xz encoder here is written independently of talos_twisted.xzformat (which parses),
so the two check each other, and the xz CLI checks both.
"""

from __future__ import annotations

import lzma
import random
import struct
import zlib
from typing import Iterable, Iterator

import zstandard

MiB = 1 << 20
_MAGIC = b"\xfd7zXZ\x00"


def disk_like(total_size: int, seed: int = 0, chunk_size: int = 256 * 1024,
              random_every: int = 16) -> Iterator[bytes]:
    """A disk-image-like body: zeros, with one random 64 KiB stretch every `random_every`."""
    rng = random.Random(seed)
    zeros = bytes(64 * 1024)
    buf, n, made = bytearray(), 0, 0
    while made < total_size:
        piece = rng.randbytes(64 * 1024) if n % random_every == random_every - 1 else zeros
        n += 1
        buf += piece[:total_size - made]
        made += min(len(piece), total_size - made)
        if len(buf) >= chunk_size or made == total_size:
            yield bytes(buf)
            buf.clear()


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Pieces of exactly `size` bytes (the last may be shorter, none empty)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


# --- xz -----------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(b: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (b[pos] & 0x7F) << shift
        shift += 7
        pos += 1
        if not b[pos - 1] & 0x80:
            return value, pos


def _crc(b: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(b))


def _check_size(check: int) -> int:
    return 0 if check == 0 else 4 << ((check - 1) // 3)


def _pad4(n: int) -> bytes:
    return bytes(-n % 4)


class _XzStream:
    """One xz stream written block by block; `records` feed the index."""

    def __init__(self, preset: int, check: int, sizes: bool = True) -> None:
        self.preset, self.check, self.sizes = preset, check, sizes
        self.records: list[tuple[int, int]] = []
        self.flags = bytes((0, check))

    def header(self) -> bytes:
        return _MAGIC + self.flags + _crc(self.flags)

    def block(self, data: bytes) -> bytes:
        # liblzma makes a one-block stream: that gives LZMA2 data and the check (CRC64,
        # SHA-256 too) computed in C.  Its header has no sizes, so write one that has.
        mini = lzma.compress(data, format=lzma.FORMAT_XZ, check=self.check,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": self.preset}])
        index_size = (struct.unpack("<I", mini[-8:-4])[0] + 1) * 4
        index = mini[-12 - index_size:-12]
        assert index[:2] == b"\x00\x01", "expected a one-block stream"
        unpadded, _ = _read_varint(index, 2)
        hsize, csum = (mini[12] + 1) * 4, _check_size(self.check)
        if not self.sizes:  # keep liblzma's block as is, like `xz -T1`
            self.records.append((unpadded, len(data)))
            return mini[12:12 + (unpadded + 3) // 4 * 4]
        assert mini[13] == 0 and mini[14:16] == b"\x21\x01", "expected one LZMA2 filter"
        csize = unpadded - hsize - csum
        payload = mini[12 + hsize:12 + hsize + csize]
        check_start = 12 + (hsize + csize + 3) // 4 * 4
        body = b"\xc0" + _varint(csize) + _varint(len(data)) + mini[14:17]  # 0xc0: both sizes
        hlen = (1 + len(body) + 4 + 3) // 4 * 4
        head = bytes((hlen // 4 - 1,)) + body + bytes(hlen - 4 - 1 - len(body))
        head += _crc(head)
        self.records.append((hlen + csize + csum, len(data)))
        return head + payload + _pad4(hlen + csize) + mini[check_start:check_start + csum]

    def end(self) -> bytes:
        index = bytearray(b"\x00" + _varint(len(self.records)))
        for unpadded, size in self.records:
            index += _varint(unpadded) + _varint(size)
        index += _pad4(len(index))
        index += _crc(bytes(index))
        back = struct.pack("<I", len(index) // 4 - 1) + self.flags
        return bytes(index) + _crc(back) + back + b"YZ"


def _xz_streams(chunks: Iterable[bytes], block_size: int, blocks_per_stream: int | None,
                preset: int, check: int, sizes: bool, padding: int,
                trailing_padding: int) -> Iterator[bytes]:
    if padding % 4 or trailing_padding % 4:
        raise ValueError("xz stream padding must be a multiple of four bytes")
    stream = _XzStream(preset, check, sizes)
    yield stream.header()
    for piece in rechunk(chunks, block_size):
        if blocks_per_stream is not None and len(stream.records) == blocks_per_stream:
            yield stream.end() + bytes(padding)
            stream = _XzStream(preset, check, sizes)
            yield stream.header()
        yield stream.block(piece)
    yield stream.end() + bytes(trailing_padding)


def xz_factory_shaped(chunks: Iterable[bytes], block_size: int = MiB, preset: int = 0,
                      check: int = lzma.CHECK_CRC64) -> Iterator[bytes]:
    """One stream of `block_size` blocks whose headers carry both sizes, like `xz -0 -T0`."""
    return _xz_streams(chunks, block_size, None, preset, check, True, 0, 0)


def xz_multi_stream(chunks: Iterable[bytes], blocks_per_stream: int = 2, block_size: int = MiB,
                    padding: int = 0, trailing_padding: int = 0, preset: int = 0,
                    check: int = lzma.CHECK_CRC64) -> Iterator[bytes]:
    """Several concatenated streams of `blocks_per_stream` blocks, `padding` null bytes apart."""
    if blocks_per_stream < 1:
        raise ValueError("blocks_per_stream must be positive")
    return _xz_streams(chunks, block_size, blocks_per_stream, preset, check, True, padding,
                       trailing_padding)


def xz_no_sizes(chunks: Iterable[bytes], block_size: int | None = None, preset: int = 0,
                check: int = lzma.CHECK_CRC64) -> Iterator[bytes]:
    """Block headers without size fields: one block (None), like `xz -T1`, or several."""
    if block_size is not None:
        yield from _xz_streams(chunks, block_size, None, preset, check, False, 0, 0)
        return
    comp = lzma.LZMACompressor(lzma.FORMAT_XZ, check=check, preset=preset)
    for chunk in chunks:
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


# --- zstd ---------------------------------------------------------------------------------

def _zst_frame(chunks: Iterable[bytes], size: int | None, level: int) -> Iterator[bytes]:
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=size is not None,
                                    write_checksum=True)
    comp = cctx.compressobj() if size is None else cctx.compressobj(size=size)
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if size is not None and seen > size:
            raise ValueError(f"more than the announced {size} bytes of input")
        out = comp.compress(chunk)
        if out:
            yield out
    if size is not None and seen != size:
        raise ValueError(f"{seen} bytes of input, {size} announced")
    yield comp.flush()


def zst_factory_shaped(chunks: Iterable[bytes], total_size: int,
                       level: int = 3) -> Iterator[bytes]:
    """One frame with the content size in its header and a checksum, like `zstd -T0 -18`."""
    return _zst_frame(chunks, total_size, level)


def zst_no_content_size(chunks: Iterable[bytes], level: int = 3) -> Iterator[bytes]:
    """One frame whose header lacks the content size (like `zstd` reading a pipe)."""
    return _zst_frame(chunks, None, level)


def zst_skippable(payload: bytes, variant: int = 0) -> bytes:
    """A skippable frame (magic 0x184D2A5? by variant) holding `payload`."""
    return struct.pack("<II", 0x184D2A50 | variant & 0xF, len(payload)) + payload


def zst_multi_frame(chunks: Iterable[bytes], total_size: int, frame_size: int = 4 * MiB,
                    level: int = 3, skippable: bytes | None = None) -> Iterator[bytes]:
    """Frames of `frame_size` raw bytes, each with its content size, optionally after a
    skippable frame: the first frame header then tells only the first frame's size."""
    if skippable is not None:
        yield zst_skippable(skippable)
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
    comp: zstandard.ZstdCompressionObj | None = None
    remaining = total_size  # raw bytes not yet assigned to a frame
    left = seen = 0  # bytes the current frame still takes; input so far
    for chunk in chunks:
        seen += len(chunk)
        if seen > total_size:
            raise ValueError(f"more than the announced {total_size} bytes of input")
        while chunk:
            if comp is None:
                left = min(frame_size, remaining)
                remaining -= left
                comp = cctx.compressobj(size=left)
            piece, chunk = chunk[:left], chunk[left:]
            left -= len(piece)
            out = comp.compress(piece)
            if out:
                yield out
            if not left:
                yield comp.flush()
                comp = None
    if seen != total_size:
        raise ValueError(f"{seen} bytes of input, {total_size} announced")
    if not total_size:
        yield cctx.compress(b"")
