"""Cut a single-stream .xz file into whole blocks as it arrives, for parallel decoding.

Pure logic, no I/O; the container is parsed with `talos_twisted.xzformat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from talos_twisted.xzformat import (
    FOOTER_SIZE, HEADER_MAGIC, HEADER_SIZE, BlockHeader, XzFormatError, XzIndex, encode_index, decode_block,
    parse_block_header, parse_index, parse_stream_footer, parse_stream_header,
)


# Events of XzBlockSplitter, in file order; streams are numbered from 0.
@dataclass(frozen=True)
class StreamStart:
    stream: int
    offset: int
    check_type: int


@dataclass(frozen=True)
class Block:
    stream: int
    number: int  # within the stream
    offset: int  # file offset of the block header
    uncompressed_offset: int  # in the output of all streams
    header: BlockHeader
    data: bytes  # the whole block, header to check
    check_type: int

    def decode(self) -> bytes:
        """decode_block of this block: thread-safe, for an executor."""
        return decode_block(self.header, self.data, self.check_type)


@dataclass(frozen=True)
class IndexStart:
    stream: int
    offset: int


@dataclass(frozen=True)
class StreamEnd:
    stream: int
    index: XzIndex  # checked against the blocks seen
    end_offset: int  # just after the footer


@dataclass(frozen=True)
class NeedSequential:
    """A block cannot be cut out without decoding it: the caller must decode sequentially.

    If `replay` is set (the block is its stream's first), a fresh
    lzma.LZMADecompressor(FORMAT_XZ) fed replay, then the rest of the input, continues;
    otherwise the stream goes on from `rest` (then the rest of the input) block by block,
    its index checked against all its blocks (`talos_twisted.decompress` does), or from a
    restart at the file's start (skipping uncompressed_offset).
    """
    reason: str
    stream: int
    block: int
    offset: int
    uncompressed_offset: int
    replay: bytes | None
    # the input from `offset` on that the splitter had buffered (the start of the block): with
    # the stream's blocks so far, enough to go on with the rest of the stream block by block
    rest: bytes = b""


XzEvent = Union[StreamStart, Block, IndexStart, StreamEnd, NeedSequential]


class XzSplitError(XzFormatError):
    """An XzFormatError raised by `XzBlockSplitter.feed`, with the events before the fault.

    A caller handling them as if the error came after them sees the faults of a file in
    file order, as a sequential decoder would.
    """

    def __init__(self, message: str, events: list[XzEvent]) -> None:
        super().__init__(message)
        self.events = events


class XzBlockSplitter:
    """Cut xz input, fed in arbitrary pieces, into whole blocks; holds at most one block.

    Concatenated streams and stream padding are followed, as xz-utils decodes them.
    """

    def __init__(self, max_block_size: int = 64 << 20, max_uncompressed: int = 256 << 20) -> None:
        self.max_block_size, self.max_uncompressed = max_block_size, max_uncompressed
        self.offset = self.uncompressed_offset = 0  # file offset of _buf[0]; output so far
        self._buf = bytearray()
        self._state = "header"  # header | block | index | padding | abandoned
        self._stream, self._stream_offset, self._header, self._check = -1, 0, b"", 0
        self._records: list[tuple[int, int]] = []  # of the current stream's blocks
        self._pending: BlockHeader | None = None  # header of the block being buffered
        self._padding = 0

    def feed(self, data: bytes | memoryview) -> list[XzEvent]:
        if self._state == "abandoned":
            raise RuntimeError("XzBlockSplitter was abandoned after NeedSequential")
        self._buf += data
        events: list[XzEvent] = []
        try:
            while self._state != "abandoned" and self._step(events):
                pass
        except XzFormatError as e:
            raise XzSplitError(str(e), events) from None
        return events

    def finish(self) -> None:
        """Raise XzFormatError unless the input ended after a whole stream (and padding)."""
        if self._state == "abandoned":
            return
        if self._stream < 0 and not self._buf:
            raise XzFormatError("xz input is empty")
        if self._state != "padding" or self._buf:
            raise XzFormatError("xz input is truncated (or has trailing garbage)")
        if self._padding % 4:
            raise XzFormatError("xz stream padding is not a multiple of four bytes")

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]  # bytearray deletes from the front in O(1)
        self.offset += n
        return out

    def _step(self, events: list[XzEvent]) -> bool:
        """Consume one unit if it is all buffered; False when more input is needed."""
        buf = self._buf
        if self._state == "padding":
            zeros = len(buf) - len(buf.lstrip(b"\0"))
            self._padding += zeros
            self._take(zeros)
            if not buf:
                return False
            if self._padding % 4:
                raise XzFormatError("xz stream padding is not a multiple of four bytes")
            self._state = "header"
        if self._state == "header":
            if len(buf) < HEADER_SIZE:
                return False
            if buf[:6] != HEADER_MAGIC and self._stream >= 0:
                raise XzFormatError("trailing garbage follows the last xz stream")
            self._check = parse_stream_header(bytes(buf[:HEADER_SIZE])).check_type
            self._stream += 1
            self._stream_offset, self._records, self._state = self.offset, [], "block"
            self._header = self._take(HEADER_SIZE)
            events.append(StreamStart(self._stream, self._stream_offset, self._check))
        elif self._state == "index":
            # The blocks seen fix the index's exact size: no incremental index parser needed.
            size = len(encode_index(self._records))
            if len(buf) < size + FOOTER_SIZE:
                return False
            raw = self._take(size + FOOTER_SIZE)
            index = parse_index(raw[:size], self._check, self._stream_offset)
            if list(index.records) != self._records:
                raise XzFormatError(f"index of stream {self._stream + 1} does not match its blocks")
            if parse_stream_footer(raw).backward_size != size or raw[-4:-2] != self._header[6:8]:
                raise XzFormatError("stream footer does not match the index or stream header")
            events.append(StreamEnd(self._stream, index, self.offset))
            self._state, self._padding = "padding", 0
        elif not buf:
            return False
        elif buf[0] == 0 and self._pending is None:
            self._state = "index"
            events.append(IndexStart(self._stream, self.offset))
        else:
            return self._block(events)
        return True

    def _block(self, events: list[XzEvent]) -> bool:
        buf, check = self._buf, self._check
        header = self._pending or parse_block_header(bytes(buf[:(buf[0] + 1) * 4]))
        if header is None:
            return False
        self._pending = header
        total, unpadded = header.total_size(check), header.unpadded_size(check)
        size = header.uncompressed_size
        if total is None or unpadded is None or size is None:
            reason = "block header lacks its compressed or uncompressed size"
        elif total > self.max_block_size or size > self.max_uncompressed:
            reason = f"block of {total} bytes ({size} raw) exceeds the limits"
        elif len(buf) < total:
            return False
        else:
            events.append(Block(self._stream, len(self._records), self.offset,
                                self.uncompressed_offset, header, self._take(total), check))
            self._records.append((unpadded, size))
            self.uncompressed_offset += size
            self._pending = None
            return True
        rest = bytes(buf)
        replay = None if self._records else self._header + rest
        events.append(NeedSequential(reason, self._stream, len(self._records), self.offset,
                                     self.uncompressed_offset, replay, rest))
        self._state, self._buf = "abandoned", bytearray()
        return False
