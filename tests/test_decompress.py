import hashlib
import lzma
import random
import tracemalloc

import pytest
import zstandard

from talos_twisted.decompress import DecompressError, make_decoder

KINDS = ["xz", "zst", "none"]


def sample(size_random=20000, seed=1):
    """Deterministic mix of incompressible, zero and repetitive data."""
    rng = random.Random(seed)
    return rng.randbytes(size_random) + bytes(70000) + b"talos linux " * 5000 + rng.randbytes(1000)


def zst(data, **kw):
    kw.setdefault("write_checksum", True)
    return zstandard.ZstdCompressor(**kw).compress(data)


def compress(kind, data):
    if kind == "xz":
        return lzma.compress(data, preset=0)
    if kind == "zst":
        return zst(data)
    return data


def split(data, rng, max_chunk):
    pos, parts = 0, []
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        parts.append(data[pos:pos + n])
        pos += n
    return parts


def decode(kind, parts, max_output=1 << 20, finish=True):
    dec = make_decoder(kind, max_output)
    chunks = []
    for part in parts:
        for chunk in dec.feed(part):
            assert isinstance(chunk, bytes) and 0 < len(chunk) <= max_output
            chunks.append(chunk)
    if finish:
        dec.finish()
    return b"".join(chunks), dec


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_output", [1 << 20, 1000])
def test_round_trip_random_splits(kind, max_output):
    data = sample()
    packed = compress(kind, data)
    rng = random.Random(7)
    for max_chunk in (len(packed), 100000, 5000, 17):
        out, dec = decode(kind, split(packed, rng, max_chunk), max_output)
        assert out == data
        assert dec.compressed_in == len(packed)
        assert dec.decompressed_out == len(data)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_one_byte_feeds(kind):
    data = sample(size_random=500)[:30000]
    packed = compress(kind, data)
    out, dec = decode(kind, [packed[i:i + 1] for i in range(len(packed))], max_output=4096)
    assert out == data
    assert (dec.compressed_in, dec.decompressed_out) == (len(packed), len(data))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_feeds_are_harmless(kind):
    data = sample()
    packed = compress(kind, data)
    out, _ = decode(kind, [b"", packed[:1000], b"", packed[1000:], b""])
    assert out == data


@pytest.mark.parametrize("padding", [b"", b"\0" * 4, b"\0" * 12])
def test_multi_stream_xz(padding):
    rng = random.Random(3)
    pieces = [rng.randbytes(3000) + bytes(5000), b"", b"second" * 999, rng.randbytes(10)]
    checks = [lzma.CHECK_CRC32, lzma.CHECK_CRC64, lzma.CHECK_SHA256, lzma.CHECK_NONE]
    packed = padding.join(lzma.compress(p, check=c) for p, c in zip(pieces, checks)) + padding
    for parts in ([packed], [packed[i:i + 1] for i in range(len(packed))]):
        out, dec = decode("xz", parts, max_output=1000)
        assert out == b"".join(pieces)
        assert dec.compressed_in == len(packed)


@pytest.mark.parametrize("padding", [b"\0", b"\0" * 3, b"\0" * 6])
def test_xz_padding_not_multiple_of_four(padding):
    one = lzma.compress(b"abc")
    for packed in (one + padding, one + padding + one):
        with pytest.raises(DecompressError, match="padding"):
            decode("xz", [packed])


def test_multi_frame_zst():
    rng = random.Random(4)
    pieces = [rng.randbytes(3000) + bytes(300000), b"", b"second" * 999, rng.randbytes(10)]
    # third frame is streamed: no content size in its header and no checksum
    cobj = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False).compressobj()
    frames = [zst(pieces[0], level=3), zst(pieces[1]), cobj.compress(pieces[2]) + cobj.flush(), zst(pieces[3], level=19)]
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"meta!"
    packed = frames[0] + skippable + b"".join(frames[1:]) + skippable
    for parts in ([packed], [packed[i:i + 1] for i in range(len(packed))]):
        out, dec = decode("zst", parts, max_output=50000)
        assert out == b"".join(pieces)
        assert dec.compressed_in == len(packed)


@pytest.fixture(scope="module")
def big():
    """64 MiB that compresses ~60x: zero runs (zstd RLE blocks), a repeated word, some noise."""
    rng = random.Random(5)
    data = bytes(24 << 20) + rng.randbytes(1 << 20) + b"talos" * (4 << 20) + bytes(19 << 20)
    assert len(data) == 64 << 20
    return data


@pytest.mark.parametrize("kind", ["xz", "zst"])
def test_bounded_output_and_memory(kind, big):
    max_output = 64 << 10
    packed = compress(kind, big)
    assert len(packed) < len(big) // 50
    dec = make_decoder(kind, max_output)
    digest, largest, count = hashlib.sha256(), 0, 0
    tracemalloc.start()
    try:
        for chunk in dec.feed(packed):  # whole input at once: output must still come in small pieces
            largest = max(largest, len(chunk))
            count += len(chunk)
            digest.update(chunk)
        dec.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert largest <= max_output
    assert count == dec.decompressed_out == len(big)
    assert digest.digest() == hashlib.sha256(big).digest()
    # Nothing near the 64 MiB output is ever held: peak is at most one copy of the
    # (~1 MiB) compressed input, which the zstd decoder buffers, plus ~1 MiB.
    assert peak < len(packed) + (1 << 20), peak


def test_none_splits_into_max_output():
    dec = make_decoder("none", max_output=1000)
    chunks = list(dec.feed(bytes(range(256)) * 10))
    assert [len(c) for c in chunks] == [1000, 1000, 560]
    assert b"".join(chunks) == bytes(range(256)) * 10
    dec.finish()
    assert (dec.compressed_in, dec.decompressed_out) == (2560, 2560)


@pytest.mark.parametrize("kind", ["xz", "zst"])
def test_truncated(kind):
    data = sample()
    packed = compress(kind, data)
    for cut in (1, 3, 5, 12, len(packed) // 3, len(packed) // 2, len(packed) - 5, len(packed) - 1):
        with pytest.raises(DecompressError):
            decode(kind, [packed[:cut]])
        with pytest.raises(DecompressError):
            decode(kind, split(packed[:cut], random.Random(cut), 300))


def test_truncated_second_zst_frame():
    packed = zst(b"one" * 1000) + zst(b"two" * 1000)
    with pytest.raises(DecompressError, match="truncated"):
        decode("zst", [packed[:-3]])


def test_truncated_skippable_frame():
    packed = zst(b"one") + (0x184D2A50).to_bytes(4, "little") + (100).to_bytes(4, "little") + b"x" * 99
    with pytest.raises(DecompressError, match="truncated"):
        decode("zst", [packed])


@pytest.mark.parametrize("kind", ["xz", "zst"])
def test_corrupt_byte(kind):
    data = sample(size_random=200000)  # zstd stores this as raw blocks: only the checksum catches a flip
    packed = compress(kind, data)
    for pos in (len(packed) // 4, len(packed) // 2, len(packed) - 30):
        bad = bytearray(packed)
        bad[pos] ^= 0x10
        with pytest.raises(DecompressError):
            decode(kind, [bytes(bad)])
        with pytest.raises(DecompressError):
            decode(kind, split(bytes(bad), random.Random(pos), 1000))


def test_corrupt_zst_checksum():
    packed = bytearray(zst(b"payload" * 100))
    packed[-1] ^= 1
    with pytest.raises(DecompressError, match="checksum"):
        decode("zst", [bytes(packed)])


@pytest.mark.parametrize("kind", ["xz", "zst"])
@pytest.mark.parametrize("garbage", [b"garbage!", b"\x01", b"\0\0\0\0\x7fELF....", b"PK\x03\x04"])
def test_trailing_garbage(kind, garbage):
    packed = compress(kind, b"hello" * 100) + garbage
    with pytest.raises(DecompressError):
        decode(kind, [packed])
    with pytest.raises(DecompressError):
        decode(kind, [packed[i:i + 1] for i in range(len(packed))])


@pytest.mark.parametrize("kind", ["xz", "zst"])
def test_trailing_garbage_message(kind):
    with pytest.raises(DecompressError, match="garbage"):
        decode(kind, [compress(kind, b"hello") + b"garbage!"])


@pytest.mark.parametrize("kind", ["xz", "zst"])
def test_not_compressed_at_all(kind):
    with pytest.raises(DecompressError):
        decode(kind, [b"this is plain text, not compressed"])


@pytest.mark.parametrize("kind", ["xz", "zst"])
def test_empty_input_is_error(kind):
    with pytest.raises(DecompressError, match="empty"):
        decode(kind, [])
    with pytest.raises(DecompressError):
        decode(kind, [b""])


def test_empty_input_is_fine_for_none():
    out, dec = decode("none", [b""])
    assert out == b"" and dec.compressed_in == dec.decompressed_out == 0


def test_unknown_kind():
    with pytest.raises(ValueError):
        make_decoder("gz")


@pytest.mark.parametrize("kind", KINDS)
def test_counters_track_progress(kind):
    data = sample()
    packed = compress(kind, data)
    dec = make_decoder(kind, max_output=4096)
    fed = seen = 0
    for part in split(packed, random.Random(9), 2000):
        fed += len(part)
        for chunk in dec.feed(part):
            seen += len(chunk)
            assert dec.decompressed_out == seen  # counted as yielded
        assert dec.compressed_in == fed
    dec.finish()
    assert (dec.compressed_in, dec.decompressed_out) == (len(packed), len(data))
