"""Deterministic pseudo disk images and boot-asset blobs (pure, no reactor).

Images: mostly zeros, with a 64 KiB "boot" region at offset 0 and six data regions spread
over the image (together about ``data_fraction`` of it), always ending in a run of zeros.
Blobs (kernel, UKI, ISO, installer...) are data all through. The bytes derive from a seed
only. Compressed disk images have one of the ``BODY_SHAPES``:

- ``factory`` (the default): as the Talos imager writes them, i.e. ``xz -0 -T0`` (one
  stream of 1 MiB blocks whose headers carry both sizes, CRC64) and ``zstd -T0`` (one frame
  with the content size in its header and a checksum; level 3 here rather than the
  factory's 18, which would take minutes per GiB);
- ``multi``: several xz streams / zstd frames, one per ``stream_size`` raw bytes (each xz
  stream one liblzma block without sizes, each zstd frame with its content size);
- ``no-sizes``: xz as ``xz -T1`` writes it (one block, no sizes in its header: the total is
  only in the index), zstd without the content size in the frame header.

Other bodies are single-member gzip and gzip of a one-member tar. Bodies are computed
chunk by chunk from the seed (never the whole raw image at once); the caller caches them.
"""

from __future__ import annotations

import lzma
import random
import tarfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import zstandard

from talos_twisted.testing import shapes

KiB = 1024
MiB = 1024 * KiB

COMPRESSIONS = ("xz", "zst", "gz", "none")
BODY_SHAPES = ("factory", "multi", "no-sizes")

_BLOCK = 64 * KiB
_GEN_CHUNK = 1 * MiB
_ZSTD_LEVEL = 3  # the factory uses 18: far too slow for multi-GiB test images


@lru_cache(maxsize=256)
def _block(seed: bytes, index: int) -> bytes:
    """64 KiB of data for block ``index``: 16 KiB incompressible (squashfs-like), then
    4 KiB pieces of 512 pseudo-random bytes repeated (compressible, like filesystem data)."""
    r = random.Random(seed + index.to_bytes(8, "big"))
    head = r.randbytes(16 * KiB)
    return head + b"".join(r.randbytes(512) * 8 for _ in range(12))


def layout(size: int, fraction: float) -> tuple[tuple[int, int], ...]:
    """Data regions [start, end) of an image: boot region at 0, six regions spread over the
    first 15/16 of the image; the rest is zeros (so images always end in zeros)."""
    if size <= 0:
        return ()
    boot = min(64 * KiB, size)
    regions = [(0, boot)]
    n = 6
    usable_end = size - size // 16
    budget = int(size * fraction) - boot
    if budget >= n * 4 * KiB and usable_end > boot:
        span = (usable_end - boot) // n
        per = min(budget // n, span // 2) // (4 * KiB) * (4 * KiB)
        if per > 0:
            for i in range(n):
                start = (boot + i * span + span // 4) // (4 * KiB) * (4 * KiB)
                regions.append((start, start + per))
    return tuple(regions)


@dataclass(frozen=True)
class ImageSpec:
    """One pseudo image: its seed, size and data regions; reads any byte range."""

    seed: bytes
    size: int
    regions: tuple[tuple[int, int], ...]

    def has_data(self, start: int, end: int) -> bool:
        return any(rs < end and start < re_ for rs, re_ in self.regions)

    def read(self, start: int, length: int) -> bytes:
        end = min(self.size, start + length)
        if end <= start:
            return b""
        buf = bytearray(end - start)
        for rs, re_ in self.regions:
            lo, hi = max(start, rs), min(end, re_)
            if lo < hi:
                buf[lo - start : hi - start] = self._data(lo, hi)
        return bytes(buf)

    def _data(self, lo: int, hi: int) -> bytes:
        parts = []
        for k in range(lo // _BLOCK, (hi - 1) // _BLOCK + 1):
            b = _block(self.seed, k)
            base = k * _BLOCK
            parts.append(b[max(lo, base) - base : min(hi, base + _BLOCK) - base])
        return b"".join(parts)

    def chunks(self, start: int = 0, end: int | None = None, chunk: int = _GEN_CHUNK) -> Iterator[bytes]:
        end = self.size if end is None else min(end, self.size)
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            yield self.read(pos, n)
            pos += n


_zero_streams: dict[tuple[str, int], bytes] = {}


def _compress_stream(spec: ImageSpec, compression: str, start: int, end: int) -> bytes:
    if not spec.has_data(start, end) and (compression, end - start) in _zero_streams:
        return _zero_streams[(compression, end - start)]
    out = []
    if compression == "xz":
        cx = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=0)
        for c in spec.chunks(start, end):
            out.append(cx.compress(c))
        out.append(cx.flush())
    else:
        cz = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True, write_content_size=True)
        co = cz.compressobj(size=end - start)
        for c in spec.chunks(start, end):
            out.append(co.compress(c))
        out.append(co.flush())
    data = b"".join(out)
    if not spec.has_data(start, end):
        _zero_streams[(compression, end - start)] = data
    return data


def compress_image(spec: ImageSpec, compression: str, stream_size: int, shape: str = "factory") -> bytes:
    """The body the factory serves for ``compression`` ("xz", "zst", "gz") in ``shape``
    (one of ``BODY_SHAPES``; ``stream_size`` matters to ``multi`` only, gzip has one shape)."""
    if compression == "gz":
        return _gzip(spec.chunks())
    if compression not in ("xz", "zst"):
        raise ValueError(f"unknown compression {compression!r}")
    if shape not in BODY_SHAPES:
        raise ValueError(f"unknown body shape {shape!r} (one of {', '.join(BODY_SHAPES)})")
    if shape == "multi":
        streams = []
        for start in range(0, max(spec.size, 1), stream_size):
            streams.append(_compress_stream(spec, compression, start, min(spec.size, start + stream_size)))
        return b"".join(streams)
    chunks = spec.chunks()
    parts: Iterator[bytes]
    if compression == "xz":
        parts = shapes.xz_factory_shaped(chunks) if shape == "factory" else shapes.xz_no_sizes(chunks)
    else:
        parts = (shapes.zst_factory_shaped(chunks, spec.size, level=_ZSTD_LEVEL) if shape == "factory"
                 else shapes.zst_no_content_size(chunks, level=_ZSTD_LEVEL))
    return b"".join(parts)


def blob_spec(seed: bytes, size: int) -> ImageSpec:
    """A blob with data all through (kernel, UKI, ISO...), readable like an image."""
    return ImageSpec(seed, size, ((0, size),) if size > 0 else ())


def _gzip(chunks: Iterator[bytes]) -> bytes:
    co = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip wrapper, mtime 0: deterministic
    parts = [co.compress(c) for c in chunks]
    parts.append(co.flush())
    return b"".join(parts)


def _tar_chunks(spec: ImageSpec, member: str) -> Iterator[bytes]:
    info = tarfile.TarInfo(member)
    info.size, info.mtime, info.mode = spec.size, 0, 0o644
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    yield from spec.chunks()
    yield bytes(-spec.size % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)  # padding, end of archive


def tar_gz_image(spec: ImageSpec, member: str = "disk.raw") -> bytes:
    """A ``.tar.gz`` body: gzip of a tar holding the image as ``member`` (``disk.raw`` is
    the name GCP requires of its ``.raw.tar.gz`` images)."""
    return _gzip(_tar_chunks(spec, member))
