"""xz decoded block by block in a small shared thread pool (the factory's streams).

The factory's xz is one stream of blocks whose headers carry their sizes: cut out whole
by `talos_twisted.xzsplit`, each is decoded on its own (liblzma releases the GIL, so on N
cores N blocks decode at once) and checked by liblzma as a one-block stream; output comes
in order, bounded. Anything else falls back to `decompress._XzDecoder`, as xz-utils does,
or, for a stream given up on past its first block, to `xzfallback.StreamRest` (the rest
of that stream block by block, then `_XzDecoder`).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

from talos_twisted.decompress import Data, DecompressError, Decoder, _XzDecoder, is_zero, shared_zeros
from talos_twisted.xzfallback import StreamRest
from talos_twisted.xzformat import XzFormatError
from talos_twisted.xzsplit import Block, NeedSequential, StreamStart, XzBlockSplitter, XzSplitError

__all__ = ["ParallelXzDecoder", "block_workers"]


# --- the pool --------------------------------------------------

_SPLIT_FEED = 128 * 1024  # input handed to the splitter at once: a fallback copies at most this
_MAX_BLOCK = 8 << 20  # larger blocks (raw or compressed) are decoded sequentially, never held whole
_LOOKAHEAD = 3 << 20  # raw bytes of blocks decoding, or decoded, ahead of the consumer
_MAX_PENDING = 64
_MEMO_MAX = 4096  # a block this small that decoded to zeros is remembered (a disk image's holes)

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def block_workers() -> int:
    """Threads of the shared pool decoding xz blocks: one per core this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _block_pool() -> ThreadPoolExecutor:
    """The pool every download's xz blocks are decoded in, made on first use.

    Its tasks never wait for anything but liblzma, so they cannot deadlock; its threads
    are idle between downloads and end with the interpreter (concurrent.futures joins
    them at exit, once the block in hand, if any, is decoded).
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(block_workers(), thread_name_prefix="talos-xz")
        return _pool


def _decode(block: Block) -> bytes:
    return block.decode()


class ParallelXzDecoder(Decoder):
    """xz as _XzDecoder decodes it, with the blocks of a stream cut out whole decoded in a pool.

    Blocks whose headers carry both sizes (`xz -T0`, the factory) are cut out by
    XzBlockSplitter and decoded up to `lookahead` raw bytes ahead of the consumer, in the
    shared pool; each is checked by liblzma as a one-block stream (`xzformat.decode_block`:
    header CRC, sizes, the block's check) and the stream's index against every block. The
    output comes in order, in pieces of at most max_output bytes, and a fault is raised
    where the sequential decoder would raise it: after the output of the blocks before it.

    A block decoding to zeros is remembered (its bytes: small, as zeros compress a
    thousandfold): a later block with the very same bytes is the same zeros, since a block
    decodes on its own, and is not decoded again. The holes of a disk image cost nothing.

    Anything the splitter cannot cut (a block without sizes or over _MAX_BLOCK) goes
    on sequentially: from that stream's first block, the rest of the input with
    _XzDecoder; from a later block, the rest of the stream block by block
    (`xzfallback.StreamRest`), then the rest of the input with _XzDecoder.
    """

    def __init__(self, max_output: int, pool: ThreadPoolExecutor | None = None,
                 lookahead: int = _LOOKAHEAD, max_block: int = _MAX_BLOCK) -> None:
        super().__init__(max_output)
        self._pool = pool  # None: the shared one
        self._lookahead = lookahead
        self._split: XzBlockSplitter | None = XzBlockSplitter(max_block + (64 << 10), max_block)
        self._then: _XzDecoder | StreamRest | None = None  # what decodes sequentially, after a fallback
        self._stream = 0
        self._check = 0
        self._records: list[tuple[int, int]] = []  # (unpadded, raw size) of the stream's blocks so far
        # blocks decoding or decoded, in order: (future or zero pieces, memo key, raw size, stream)
        self._pending: deque[tuple[Future[bytes] | list[bytes], tuple[int, bytes] | None, int, int]] = deque()
        self._ahead = 0  # raw bytes of the futures in _pending
        self._zero_blocks: dict[tuple[int, bytes], list[bytes]] = {}
        self.blocks_decoded = 0  # blocks decoded in the pool
        self.blocks_remembered = 0  # blocks known to be zeros without decoding

    @property
    def sequential(self) -> bool:
        """True once the input is decoded sequentially (the splitter gave up)."""
        return self._then is not None

    def feed(self, data: Data) -> Iterator[bytes]:
        self.compressed_in += len(data)
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(view) and self._then is None:
                piece = view[pos:pos + _SPLIT_FEED]
                pos += len(piece)
                yield from self._split_feed(piece)
            yield from self._drain(0)
            if pos < len(view) and self._then is not None:
                yield from self._counted(self._then.feed(view[pos:]))
        finally:
            self._cancel()

    def finish(self) -> None:
        if self._then is not None:
            self._then.finish()
            return
        assert self._split is not None
        try:
            self._split.finish()
        except XzFormatError as e:
            raise DecompressError(f"{e}.") from None

    def _counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.decompressed_out += len(chunk)
            yield chunk

    def _split_feed(self, piece: memoryview) -> Iterator[bytes]:
        assert self._split is not None
        error: XzSplitError | None = None
        try:
            events = self._split.feed(piece)
        except XzSplitError as e:
            events, error = e.events, e
        for event in events:
            if isinstance(event, Block):
                yield from self._block(event)
            elif isinstance(event, StreamStart):
                self._stream, self._check, self._records = event.stream, event.check_type, []
            elif isinstance(event, NeedSequential):
                yield from self._fallback(event)
            # IndexStart, StreamEnd: the splitter checked the index against the blocks
        if error is not None:
            yield from self._drain(0)  # the faults of the blocks before come first
            raise DecompressError(f"Corrupt xz data in stream {self._stream + 1}: {error}.") from None

    def _block(self, block: Block) -> Iterator[bytes]:
        size, unpadded = block.header.uncompressed_size, block.header.unpadded_size(block.check_type)
        assert size is not None and unpadded is not None  # the splitter cuts out only such blocks
        self._records.append((unpadded, size))
        key = (block.check_type, block.data) if len(block.data) <= _MEMO_MAX else None
        zeros = self._zero_blocks.get(key) if key is not None else None
        if zeros is not None:
            self.blocks_remembered += 1
        else:  # at most `lookahead` raw bytes decoding or decoded ahead (at least one block)
            while self._ahead and self._ahead + size > self._lookahead:
                yield from self._drain(len(self._pending) - 1)
        while len(self._pending) >= _MAX_PENDING:
            yield from self._drain(len(self._pending) - 1)
        if zeros is not None:
            self._pending.append((zeros, None, size, block.stream))
        else:
            self._pending.append((self._start(block), key, size, block.stream))
            self._ahead += size

    def _start(self, block: Block) -> Future[bytes]:
        self.blocks_decoded += 1
        try:
            return (self._pool or _block_pool()).submit(_decode, block)
        except RuntimeError:  # the interpreter is shutting down: no new threads, decode here
            done: Future[bytes] = Future()
            try:
                done.set_result(block.decode())
            except XzFormatError as e:
                done.set_exception(e)
            return done

    def _drain(self, keep: int) -> Iterator[bytes]:
        """Yield the output of the oldest pending blocks until `keep` are left."""
        while len(self._pending) > keep:
            work, key, size, stream = self._pending[0]
            if isinstance(work, list):
                self._pending.popleft()
                for piece in work:
                    self.decompressed_out += len(piece)
                    yield piece
                continue
            try:
                out = work.result()
            except XzFormatError as e:
                raise DecompressError(f"Corrupt xz data in stream {stream + 1}: {e}.") from None
            finally:
                self._pending.popleft()
                self._ahead -= size
            if key is not None and is_zero(out):
                zeros = self._zeros(key, len(out))
                for piece in zeros:
                    self.decompressed_out += len(piece)
                    yield piece
            else:
                yield from self._emit(out)

    def _zeros(self, key: tuple[int, bytes], size: int) -> list[bytes]:
        """Remember that the block `key` decodes to `size` zeros; its output, shared."""
        full, last = divmod(size, self.max_output)
        pieces = [shared_zeros(self.max_output)] * full + ([shared_zeros(last)] if last else [])
        if len(self._zero_blocks) >= 4:
            self._zero_blocks.pop(next(iter(self._zero_blocks)))
        self._zero_blocks[key] = pieces
        return pieces

    def _cancel(self) -> None:
        """Drop the blocks not yielded (a fault, or the consumer stopped), once no thread decodes them."""
        for work, *_ in self._pending:
            if isinstance(work, Future) and not work.cancel():
                try:
                    work.result()
                except Exception:  # dropped with the rest: the caller is failing already
                    pass
        self._pending.clear()
        self._ahead = 0

    def _fallback(self, event: NeedSequential) -> Iterator[bytes]:
        yield from self._drain(0)
        self._split = None
        then: _XzDecoder | StreamRest
        if event.replay is not None:
            then = _XzDecoder(self.max_output, streams=event.stream)
            rest = event.replay
        else:
            then = StreamRest(self.max_output, event.stream, self._check, self._records)
            rest = event.rest
        self._then = then
        yield from self._counted(then.feed(rest))
