"""Incremental, memory-bounded decompression of xz / zstd / raw streams.

Pure logic: no Twisted, no I/O.  A Decoder is fed compressed bytes as they
arrive and yields decompressed chunks of at most ``max_output`` bytes, so a
download that expands a thousandfold (disk images are mostly zeros) never
needs more than a few times ``max_output`` of memory.

xz is decoded block by block in a small shared thread pool where the stream
allows it (`talos_twisted.xzparallel`); anything else sequentially, as xz-utils does.
"""

from __future__ import annotations

import importlib
import lzma
import threading
from typing import Iterator, Optional, Tuple

import zstandard

__all__ = ["DecompressError", "Decoder", "make_decoder", "is_zero", "shared_zeros"]

Data = bytes | memoryview

_ZERO = bytes(1 << 20)  # compared against, never copied


def is_zero(data: Data) -> bool:
    """Whether every byte of `data` is zero: memcmp against a zero buffer, no copy."""
    n = len(data)
    if n <= len(_ZERO):
        return _ZERO.startswith(data)
    view = memoryview(data)
    return all(_ZERO.startswith(view[i:i + len(_ZERO)]) for i in range(0, n, len(_ZERO)))


_SHARED_MAX, _SHARED_SIZES = 4 << 20, 8
_shared: dict[int, bytes] = {}
_shared_lock = threading.Lock()


def shared_zeros(n: int) -> bytes:
    """`bytes(n)`, the same object each time for the few sizes asked most recently.

    Handed on instead of freshly decoded zeros, it costs no memory and no cache misses:
    its pages, never written, all map the kernel's zero page, so whoever reads it (the
    hash, the zero check) reads memory already in the cache.
    """
    zeros = _shared.get(n)
    if zeros is None:
        zeros = bytes(n)
        if n <= _SHARED_MAX:
            with _shared_lock:
                if len(_shared) >= _SHARED_SIZES:
                    _shared.pop(next(iter(_shared)))
                _shared[n] = zeros
    return zeros


class DecompressError(Exception):
    """Corrupt, truncated or trailing-garbage input."""


class Decoder:
    """Base class: one instance per download."""

    def __init__(self, max_output: int) -> None:
        if max_output < 1:
            raise ValueError("max_output must be positive")
        self.max_output = max_output
        self.compressed_in = 0
        self.decompressed_out = 0

    def feed(self, data: Data) -> Iterator[bytes]:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def _emit(self, out: bytes) -> Iterator[bytes]:
        """Yield `out` in pieces of at most max_output bytes."""
        if len(out) <= self.max_output:
            if out:
                self.decompressed_out += len(out)
                yield out
            return
        view = memoryview(out)
        for i in range(0, len(out), self.max_output):
            piece = bytes(view[i:i + self.max_output])
            self.decompressed_out += len(piece)
            yield piece


class _IdentityDecoder(Decoder):
    def feed(self, data: Data) -> Iterator[bytes]:
        self.compressed_in += len(data)
        yield from self._emit(bytes(data))

    def finish(self) -> None:
        pass


_XZ_MAGIC = b"\xfd7zXZ\x00"


class _XzDecoder(Decoder):
    """All concatenated xz streams, with stream padding, as xz-utils decodes them."""

    def __init__(self, max_output: int, streams: int = 0, between_streams: bool = False) -> None:
        super().__init__(max_output)
        # None between streams, where only zero padding or a new stream may follow.
        self._dec: Optional[lzma.LZMADecompressor] = (
            None if between_streams else lzma.LZMADecompressor(lzma.FORMAT_XZ))
        self._streams = streams  # streams decoded before (another decoder may have begun the input)
        self._padding = 0

    def feed(self, data: Data) -> Iterator[bytes]:
        self.compressed_in += len(data)
        while True:
            if self._dec is None:
                rest = bytes(data).lstrip(b"\0")
                self._padding += len(data) - len(rest)
                data = rest
                if not data:
                    return
                if not _XZ_MAGIC.startswith(data[:len(_XZ_MAGIC)]):
                    raise DecompressError("Trailing garbage follows the last xz stream.")
                if self._padding % 4:
                    raise DecompressError("xz stream padding is not a multiple of four bytes.")
                self._dec, self._padding = lzma.LZMADecompressor(lzma.FORMAT_XZ), 0
            if not data and self._dec.needs_input:
                return
            try:
                out = self._dec.decompress(data, self.max_output)
            except lzma.LZMAError as e:
                raise DecompressError(f"Corrupt xz data in stream {self._streams + 1}: {e}.") from None
            data = b""
            yield from self._emit(out)
            if self._dec.eof:
                data, self._dec = self._dec.unused_data, None
                self._streams += 1
            # Otherwise loop: either lzma wants input (return above) or it still
            # holds output beyond max_output, drained by feeding b"".

    def finish(self) -> None:
        if self._dec is not None:
            if self._streams == 0 and self.compressed_in == 0:
                raise DecompressError("xz input is empty.")
            raise DecompressError("xz input is truncated: it ends inside a stream.")
        if self._padding % 4:
            raise DecompressError("xz stream padding is not a multiple of four bytes.")


# zstd approach.  python-zstandard 0.25 has no bounded push API:
# decompressobj().decompress() returns *all* output for its input (no
# max_length), stream_writer() pushes all output for a write() synchronously,
# and read_to_iter()/stream_reader() are pull APIs that treat a source with
# no data yet as end of input.  A fixed tiny input slice (~28 bytes for
# 1 MiB, since a 4-byte RLE block can expand to 128 KiB) would be bounded but
# slow on incompressible stretches.  So we parse the zstd framing (frame
# header, 3-byte block headers, checksum, skippable frames) only to find block
# boundaries and give decompressobj() whole blocks, as many as fit in the
# output budget: the spec caps a block's output at 128 KiB and raw/RLE headers
# state it exactly.  libzstd still does all validation (incl. checksums).
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50
_BLOCK_MAX = 128 * 1024


class _ZstdDecoder(Decoder):
    def __init__(self, max_output: int) -> None:
        super().__init__(max_output)
        self._dctx = zstandard.ZstdDecompressor()
        self._budget = max(max_output, _BLOCK_MAX)  # output allowed per decompress() call
        self._buf = bytearray()  # received input not yet given to zstd
        self._state = "frame"  # next unit: "frame" (header), "block" or "checksum"
        self._checksum = False  # current frame ends with a checksum
        self._skip = 0  # bytes of a skippable frame still to drop
        self._obj: Optional[zstandard.ZstdDecompressionObj] = None
        self._frames = 0

    def _parse(self, pos: int) -> Optional[Tuple[int, int, bool]]:
        """(size, output bound, ends frame) of the whole unit at _buf[pos:], or None if incomplete."""
        buf, avail = self._buf, len(self._buf) - pos
        if self._state == "frame":
            if avail < 4:
                return None
            magic = int.from_bytes(buf[pos:pos + 4], "little")
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                if avail < 8:
                    return None
                self._skip = int.from_bytes(buf[pos + 4:pos + 8], "little")
                del buf[pos:pos + 8]  # pos is 0 (finished frames are flushed); feed() drops the content
                return 0, 0, False
            if magic != _ZSTD_MAGIC:
                if self._frames:
                    raise DecompressError("Trailing garbage follows the last zstd frame.")
                raise DecompressError("Input is not zstd data (bad magic number).")
            if avail < 5:
                return None
            fhd = buf[pos + 4]
            single_segment = fhd >> 5 & 1
            size = (5 + (not single_segment) + (0, 1, 2, 4)[fhd & 3]
                    + (single_segment, 2, 4, 8)[fhd >> 6])
            if avail < size:
                return None
            self._checksum = bool(fhd & 4)
            self._state = "block"
            return size, 0, False
        if self._state == "block":
            if avail < 3:
                return None
            header = int.from_bytes(buf[pos:pos + 3], "little")
            kind, block_size = header >> 1 & 3, header >> 3
            if block_size > _BLOCK_MAX:
                raise DecompressError("Corrupt zstd data: a block exceeds 128 KiB.")
            size = 3 + (1 if kind == 1 else block_size)  # RLE content is one byte
            if avail < size:
                return None
            if not header & 1:
                return size, block_size if kind in (0, 1) else _BLOCK_MAX, False
            self._state = "checksum" if self._checksum else "frame"
            return size, block_size if kind in (0, 1) else _BLOCK_MAX, not self._checksum
        if avail < 4:  # checksum
            return None
        self._state = "frame"
        return 4, 0, True

    def _decode(self, end: int, frame_end: bool = False) -> Iterator[bytes]:
        """Give _buf[:end] to zstd and yield the output."""
        if end:
            chunk = bytes(self._buf[:end])
            del self._buf[:end]
            if self._obj is None:
                # one output buffer for the whole budget: libzstd runs once per call, with the
                # GIL released, rather than once (and a GIL round trip) per 128 KiB
                self._obj = self._dctx.decompressobj(write_size=self._budget)
            try:
                out = self._obj.decompress(chunk)
            except zstandard.ZstdError as e:
                raise DecompressError(f"Corrupt zstd data in frame {self._frames + 1}: {e}.") from None
            yield from self._emit(out)
        if frame_end:
            if self._obj is None or not self._obj.eof:  # parser and libzstd disagree
                raise DecompressError(f"Corrupt zstd data: frame {self._frames + 1} is malformed.")
            self._obj = None
            self._frames += 1

    def feed(self, data: Data) -> Iterator[bytes]:
        self.compressed_in += len(data)
        self._buf += data
        end = bound = 0  # _buf[:end] is whole units producing at most `bound` bytes
        while True:
            if self._skip:  # skippable frame content is dropped, never buffered
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return
            unit = self._parse(end)
            if unit is None:
                break
            size, out_bound, frame_end = unit
            if bound + out_bound > self._budget:
                yield from self._decode(end)
                end = bound = 0
            end += size
            bound += out_bound
            if frame_end:
                yield from self._decode(end, frame_end=True)
                end = bound = 0
        yield from self._decode(end)

    def finish(self) -> None:
        if self._buf or self._skip or self._state != "frame":
            raise DecompressError("zstd input is truncated: it ends inside a frame.")
        if not self._frames:
            raise DecompressError("zstd input is empty: it holds no zstd frame.")


def preload() -> None:
    """Import the xz decoders' modules now (at start-up), not in the reactor thread at the
    first download, where compiling them without a bytecode cache held it for some 50 ms."""
    importlib.import_module("talos_twisted.xzparallel")


def make_decoder(kind: str, max_output: int = 1 << 20, parallel: bool = True) -> Decoder:
    """Decoder for `kind`: "xz", "zst" or "none" (identity).

    xz blocks are decoded in the shared pool where the stream allows (`parallel`, the
    default), else all sequentially in the caller's thread; the output is the same.
    """
    from talos_twisted.xzparallel import ParallelXzDecoder  # it builds on this module's decoders

    classes = {"xz": ParallelXzDecoder if parallel else _XzDecoder, "zst": _ZstdDecoder, "none": _IdentityDecoder}
    if kind not in classes:
        raise ValueError(f"unknown compression kind {kind!r}; expected one of {sorted(classes)}")
    return classes[kind](max_output)
