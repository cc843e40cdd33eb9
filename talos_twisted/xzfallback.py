"""The rest of an xz stream decoded block by block, after `xzsplit` gave up on a later block.

`ParallelXzDecoder` (`talos_twisted.xzparallel`) falls back here when the splitter cannot
cut out a block past a stream's first (no sizes in its header, or over the size limit):
each block is decoded as it arrives, wrapped as a one-block stream so that liblzma checks
it whole, its end found from its header's sizes or from its LZMA2 chunk headers; the
stream's index is checked against every block, then the input goes on with `_XzDecoder`.
Sequential, no threads.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from typing import Callable, Iterator

from talos_twisted.decompress import Data, DecompressError, _XzDecoder
from talos_twisted.xzformat import (
    FOOTER_SIZE, HEADER_MAGIC, BlockHeader, XzFormatError, check_size, encode_index, parse_block_header,
    parse_stream_footer,
)

__all__ = ["StreamRest"]


def _crc32(b: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(b))


def _stream_header(check: int) -> bytes:
    flags = bytes((0, check))
    return HEADER_MAGIC + flags + _crc32(flags)


def _one_block_tail(unpadded: int, size: int, check: int) -> bytes:
    """Index and footer of a stream of one block: what liblzma needs to check the block whole."""
    index = encode_index([(unpadded, size)])
    back = struct.pack("<I", len(index) // 4 - 1) + bytes((0, check))
    return index + _crc32(back) + back + b"YZ"


class StreamRest:
    """The rest of an xz stream after XzBlockSplitter gave up on it at a block past its first.

    Each block is decoded as it arrives, as a one-block stream (so liblzma checks it all,
    as for the blocks cut out whole); its end is known from its header's sizes or found by
    walking its LZMA2 chunk headers. The stream's index must list every block of the
    stream, those cut out before included. Then the input goes on with _XzDecoder, between
    streams (padding, or another stream).
    """

    def __init__(self, max_output: int, stream: int, check: int, records: list[tuple[int, int]]) -> None:
        self.max_output = max_output
        self._stream, self._check = stream, check
        self._records = list(records)
        self._buf = b""
        self._block: _OneBlock | None = None
        self._after: _XzDecoder | None = None

    def _corrupt(self, why: object) -> DecompressError:
        return DecompressError(f"Corrupt xz data in stream {self._stream + 1}: {why}.")

    def feed(self, data: Data) -> Iterator[bytes]:
        if self._after is not None:
            yield from self._after.feed(data)
            return
        buf = self._buf + bytes(data)
        self._buf = b""
        while True:
            block = self._block
            if block is not None:
                n = block.belongs(buf)
                if n:
                    yield from block.feed(buf[:n])
                    buf = buf[n:]
                if not block.done:  # it took all of buf
                    return
                self._records.append(block.end())
                self._block = None
                continue
            if not buf:
                return
            if buf[0] == 0:  # the index: it must list every block of the stream
                expect = encode_index(self._records)
                if len(buf) < len(expect) + FOOTER_SIZE:
                    self._buf = buf
                    return
                raw, buf = buf[:len(expect) + FOOTER_SIZE], buf[len(expect) + FOOTER_SIZE:]
                if raw[:len(expect)] != expect:
                    raise self._corrupt("its index does not match its blocks")
                try:
                    footer = parse_stream_footer(raw)
                except XzFormatError as e:
                    raise self._corrupt(e) from None
                if footer.backward_size != len(expect) or raw[-4:-2] != bytes((0, self._check)):
                    raise self._corrupt("stream footer does not match the index or stream header")
                self._after = _XzDecoder(self.max_output, streams=self._stream + 1, between_streams=True)
                yield from self._after.feed(buf)
                return
            size = (buf[0] + 1) * 4
            if len(buf) < size:
                self._buf = buf
                return
            try:
                header = parse_block_header(buf[:size])
            except XzFormatError as e:
                raise self._corrupt(e) from None
            assert header is not None
            self._block = _OneBlock(header, self._check, self.max_output, self._corrupt)

    def finish(self) -> None:
        if self._after is None:
            raise DecompressError("xz input is truncated: it ends inside a stream.")
        self._after.finish()


class _OneBlock:
    """One xz block decoded as it arrives, wrapped as a stream of one block for liblzma."""

    def __init__(self, header: BlockHeader, check: int, max_output: int,
                 corrupt: Callable[[object], DecompressError]) -> None:
        self.header, self._check, self.max_output, self._corrupt = header, check, max_output, corrupt
        self.unpadded = header.unpadded_size(check)
        self.total = header.total_size(check)  # the whole block's bytes; None until its end is found
        self._walk = _Lzma2End() if self.total is None else None
        self.fed = self.out = 0
        self._dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        self._dec.decompress(_stream_header(check))

    @property
    def done(self) -> bool:
        return self.total is not None and self.fed == self.total

    def belongs(self, buf: bytes) -> int:
        """How many of `buf`'s bytes, the block's next ones, are still the block's."""
        if self._walk is not None and self.total is None:
            skip = max(0, self.header.header_size - self.fed)  # what remains of the header
            if len(buf) > skip:
                try:
                    end = self._walk.scan(buf[skip:] if skip else buf)
                except ValueError as e:
                    raise self._corrupt(e) from None
                if end is not None:
                    data = self.header.header_size + self._walk.size
                    self.unpadded = data + check_size(self._check)
                    self.total = -data % 4 + self.unpadded
            if self.total is None:
                return len(buf)
        assert self.total is not None
        return min(len(buf), self.total - self.fed)

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self.fed += len(chunk)
        dec = self._dec
        try:
            out = dec.decompress(chunk, self.max_output)
            while True:
                if out:
                    self.out += len(out)
                    yield out
                if dec.needs_input or dec.eof:
                    return
                out = dec.decompress(b"", self.max_output)
        except lzma.LZMAError as e:
            raise self._corrupt(e) from None

    def end(self) -> tuple[int, int]:
        """Check the whole block (index and footer of its own stream); its index record."""
        assert self.unpadded is not None
        try:
            rest = self._dec.decompress(_one_block_tail(self.unpadded, self.out, self._check))
        except lzma.LZMAError as e:
            raise self._corrupt(e) from None
        if rest or not self._dec.eof or self._dec.unused_data:
            raise self._corrupt("a block does not end where its header or LZMA2 data says")
        return self.unpadded, self.out


class _Lzma2End:
    """Finds where LZMA2 data ends from its chunk headers alone, without decoding it."""

    def __init__(self) -> None:
        self.size = 0  # bytes scanned; once the end is found, the LZMA2 data's size
        self._skip = 0  # bytes of the current chunk's payload still to skip
        self._head = bytearray()  # the chunk header read so far

    def scan(self, data: bytes) -> int | None:
        """The offset in `data` just past the end marker, or None if it is not there yet."""
        pos, n, head = 0, len(data), self._head
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            head.append(data[pos])
            pos += 1
            control = head[0]
            if control == 0:  # end of the LZMA2 data
                self.size += pos
                return pos
            if 2 < control < 0x80:
                raise ValueError(f"invalid LZMA2 control byte 0x{control:02x}")
            if len(head) < (3 if control < 0x80 else 6 if control >= 0xC0 else 5):
                continue
            # uncompressed chunk: its size; LZMA chunk: bytes 3-4 are the packed size
            self._skip = (head[1] << 8 | head[2]) + 1 if control < 0x80 else (head[3] << 8 | head[4]) + 1
            head.clear()
        self.size += n
        return None
