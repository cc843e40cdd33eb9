"""Decompress and write an image to a sparse file, then hash it; runs in a worker thread.

Synchronous and free of the reactor so it can be tested directly. All-zero blocks are
skipped (left as holes): Talos disk images are mostly zeros, so disk use and write I/O
follow the real data rather than the nominal size.

Decoding runs in the calling thread, except xz blocks, which the decoder hands to its
shared pool (`decompress`): they decode on every core while this thread hashes and
writes what came before. A second thread decoding ahead of the hashing one was measured
and left out: see docs/benchmarks.md ("the writer, in threads").

The sha256 is not computed on the way: hashing in the writer thread took a core's share
from the decoders while clients waited (a cold 1 GiB miss: 1.16 s, without it 0.82 s). It is
computed once the stream's end has been checked and the clients have every byte (`seal`),
from the file (the zero runs hashed as zeros, not read), so it also vouches for what is on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Callable

from talos_twisted.decompress import Decoder, DecompressError, is_zero
from talos_twisted.errors import InternalError, StorageError, TalosError, UpstreamCorrupt
from talos_twisted.xzformat import XzFormatError
from talos_twisted.zeroruns import ZeroRuns

BLOCK = 64 * 1024
_ZEROS = bytes(BLOCK)
SEAL_CHUNK = 1024 * 1024  # bytes read (or zeros hashed) at a time by `seal`
_SEAL_ZEROS = memoryview(bytes(SEAL_CHUNK))


class ImageChanged(ValueError):
    """A re-download from byte 0 produced bytes other than those already written."""


class ImageWriter:
    def __init__(
        self,
        fd: int,
        decoder: Decoder,
        on_progress: Callable[[int], None] | None = None,
        progress_every: int = 4 * 1024 * 1024,
    ):
        self._fd = fd
        self._decoder = decoder
        self._on_progress = on_progress
        self._every = progress_every
        self._reported = 0
        self._extent = 0  # length of the file as written so far (holes at the end not counted)
        self.size = 0  # decompressed bytes accepted
        self._replayed = 0  # after a restart: decoded bytes checked against the file so far
        self._replay_end = 0  # ... up to here, the size when the restart happened
        self.zero_runs = ZeroRuns()  # the holes left, for followers (talos_twisted.zeroruns)

    def restart(self, decoder: Decoder) -> int:
        """Decode from byte 0 again: output up to the current size is checked, not written.

        The factory's builds are not guaranteed reproducible, so a re-download may only
        continue an image if its first bytes are those already written (and hashed).
        """
        self._decoder = decoder
        self._replayed = 0
        self._replay_end = self.size
        return self.size

    def write(self, data: bytes) -> int:
        """Feed compressed bytes; returns the decompressed size now readable from the file."""
        for chunk in self._decoder.feed(data):
            if self._replayed < self._replay_end:
                chunk = self._verify(chunk)
                if not chunk:
                    continue
            self._put(chunk)
            if self._on_progress is not None and self.size - self._reported >= self._every:
                self._report()
        self._sync_length()
        return self.size

    def _verify(self, chunk: bytes) -> bytes:
        """Compare the replayed part of `chunk` with the file; return the new part."""
        n = min(len(chunk), self._replay_end - self._replayed)
        if os.pread(self._fd, n, self._replayed) != chunk[:n]:
            raise ImageChanged(f"the bytes at offset {self._replayed} differ from those already written")
        self._replayed += n
        return chunk[n:]

    def verify(self) -> int:
        """Check the stream's integrity at its end; returns the size, every byte of it readable."""
        if self._replayed < self._replay_end:
            raise ImageChanged(f"the new download ended at {self._replayed} bytes, before the {self._replay_end} already written")
        self._decoder.finish()
        self._sync_length()
        return self.size

    def seal(self) -> str:
        """The sha256 of the file as written (after `verify`), once it is durable."""
        sha = hashlib.sha256()
        pos = 0
        for start, end in self.zero_runs:
            self._hash_file(sha, pos, start)
            for at in range(start, end, SEAL_CHUNK):
                sha.update(_SEAL_ZEROS[: min(SEAL_CHUNK, end - at)])
            pos = end
        self._hash_file(sha, pos, self.size)
        os.fsync(self._fd)
        return sha.hexdigest()

    def finish(self) -> tuple[int, str]:
        """`verify` then `seal`: (size, sha256), for callers with no clients waiting."""
        size = self.verify()
        return size, self.seal()

    def _hash_file(self, sha: "hashlib._Hash", start: int, end: int) -> None:
        while start < end:
            data = os.pread(self._fd, min(SEAL_CHUNK, end - start), start)
            if not data:
                raise OSError(errno.EIO, f"the image file ended at {start} bytes, before {end}")
            sha.update(data)
            start += len(data)

    def _report(self) -> None:
        self._sync_length()
        self._reported = self.size
        assert self._on_progress is not None
        self._on_progress(self.size)

    def _put(self, chunk: bytes) -> None:
        base = self.size
        n = len(chunk)
        if is_zero(chunk):  # one memcmp for the whole chunk: most of a disk image
            self.zero_runs.add(base, base + n)
            self.size += n
            return
        view = memoryview(chunk)
        run_start = -1  # start (in chunk) of a run of non-zero blocks waiting to be written
        pos = 0
        while pos < n:
            # blocks aligned to the file offset, so holes are whole filesystem blocks
            step = min(BLOCK - (base + pos) % BLOCK, n - pos)
            zero = _ZEROS.startswith(view[pos : pos + step])  # memcmp, no copy
            if zero:
                self.zero_runs.add(base + pos, base + pos + step)
            if zero and run_start >= 0:
                self._pwrite(view, run_start, pos, base)
                run_start = -1
            elif not zero and run_start < 0:
                run_start = pos
            pos += step
        if run_start >= 0:
            self._pwrite(view, run_start, n, base)
        self.size += n

    def _pwrite(self, chunk: memoryview, start: int, end: int, base: int) -> None:
        view = chunk[start:end]
        offset = base + start
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written
        self._extent = max(self._extent, offset)

    def _sync_length(self) -> None:
        # readers may read up to `size`; trailing zeros exist only once the file is that long
        if self._extent < self.size:
            os.ftruncate(self._fd, self.size)
            self._extent = self.size


def writer_error(e: BaseException) -> TalosError:
    """What a failure of the writer thread means to clients."""
    if isinstance(e, (DecompressError, XzFormatError)):
        return UpstreamCorrupt(f"the image from the image factory is corrupt: {e}")
    if isinstance(e, ImageChanged):
        return UpstreamCorrupt(
            f"the image factory sent a different image when the download was resumed: {e}"
        )
    if isinstance(e, OSError):
        err = e
        return StorageError(f"cannot write to the cache: {err.strerror or err}")
    return InternalError("internal error while writing the image")
