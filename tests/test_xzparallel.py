"""xz blocks decoded in a pool (xzparallel.ParallelXzDecoder) and the writer on top of it.

The parallel decoder must give exactly what the sequential one gives, for every shape the
factory (or anything else) may send, raise what it raises, and leave no work in the pool.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import random
import struct
import threading
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from talos_twisted import xzparallel as d
from talos_twisted.decompress import DecompressError, make_decoder
from talos_twisted.errors import StorageError, UpstreamCorrupt
from talos_twisted.testing import shapes
from talos_twisted.testing.fakefactory.images import ImageSpec, compress_image, layout
from talos_twisted.writer import ImageChanged, ImageWriter, writer_error
from talos_twisted.xzfallback import StreamRest, _Lzma2End
from talos_twisted.xzformat import CHECK_CRC32, CHECK_CRC64, CHECK_NONE, CHECK_SHA256, parse_block_header
from talos_twisted.xzsplit import Block, NeedSequential, XzBlockSplitter, XzSplitError

MiB = 1 << 20


def disk(size, seed=1, random_every=8):
    return b"".join(shapes.disk_like(size, seed=seed, random_every=random_every))


def feed_all(dec, blob, seed=0, max_piece=300_000):
    """Output of `dec` for `blob` fed in random pieces; finish() called."""
    rng, pos, out = random.Random(seed), 0, []
    while pos < len(blob):
        n = rng.randint(1, max_piece)
        for chunk in dec.feed(blob[pos:pos + n]):
            assert isinstance(chunk, bytes) and 0 < len(chunk) <= dec.max_output
            out.append(chunk)
        pos += n
    dec.finish()
    return b"".join(out)


def sequential(blob):
    return feed_all(make_decoder("xz", parallel=False), blob)


def mixed_stream(raw, sized, block_size=MiB, check=CHECK_CRC64):
    """One stream whose block i carries its sizes iff sized[i] (a legal, unusual shape)."""
    stream = shapes._XzStream(0, check)
    parts = [stream.header()]
    for i, piece in enumerate(shapes.rechunk([raw], block_size)):
        stream.sizes = sized[i]
        parts.append(stream.block(piece))
    return b"".join(parts) + stream.end()


@pytest.fixture(scope="module")
def raw():
    return disk(6 * MiB + 4321, seed=3)


@pytest.fixture(scope="module")
def factory_xz(raw):
    return b"".join(shapes.xz_factory_shaped(shapes.rechunk([raw], 200_000)))


@pytest.fixture(scope="module")
def fake_spec():
    size = 12 * MiB
    return ImageSpec(b"xzparallel", size, layout(size, 0.2))


@pytest.mark.parametrize("shape", ["factory", "multi", "no-sizes"])
def test_fake_factory_bodies_decode_as_sequentially(fake_spec, shape):
    blob = compress_image(fake_spec, "xz", 5 * MiB, shape)
    expect = fake_spec.read(0, fake_spec.size)
    assert sequential(blob) == expect
    for max_output, seed in ((MiB, 1), (256 * 1024, 2), (1000, 3)):
        dec = make_decoder("xz", max_output)
        assert feed_all(dec, blob, seed) == expect
        assert (dec.compressed_in, dec.decompressed_out) == (len(blob), len(expect))
        # the factory's shape is cut into blocks; the others fall back at their first block
        assert dec.sequential == (shape != "factory")
        if shape == "factory":
            assert dec.blocks_decoded + dec.blocks_remembered == 12


@pytest.mark.parametrize("check", [CHECK_NONE, CHECK_CRC32, CHECK_CRC64, CHECK_SHA256])
def test_shapes_decode_as_sequentially(raw, check):
    bodies = [
        b"".join(shapes.xz_factory_shaped([raw], check=check)),
        b"".join(shapes.xz_factory_shaped([raw], block_size=100_000, check=check)),
        b"".join(shapes.xz_multi_stream([raw], blocks_per_stream=2, padding=8, trailing_padding=4, check=check)),
        b"".join(shapes.xz_no_sizes([raw], check=check)),
        b"".join(shapes.xz_no_sizes([raw], block_size=MiB, check=check)),
    ]
    for i, blob in enumerate(bodies):
        assert sequential(blob) == raw
        assert feed_all(make_decoder("xz", 64 * 1024), blob, seed=i, max_piece=70_000) == raw


def test_zero_blocks_are_remembered_not_decoded(raw):
    image = bytes(20 * MiB) + raw + bytes(5 * MiB)
    blob = b"".join(shapes.xz_factory_shaped(shapes.rechunk([image], MiB)))
    dec = make_decoder("xz")
    out = feed_all(dec, blob)
    assert out == image and dec.sequential is False
    # 7 blocks hold data; a few zero ones are decoded before the first of them is known as zeros
    assert dec.blocks_remembered >= 20 and dec.blocks_decoded <= 7 + 4
    # the pieces of remembered blocks are one shared buffer, not 1 MiB allocated each
    pieces = [c for c in make_decoder("xz").feed(blob) if c == bytes(len(c))]
    assert len(pieces) > 20 and len({id(p) for p in pieces if len(p) == MiB}) == 1


def test_a_corrupt_copy_of_a_zero_block_is_still_caught():
    image = bytes(8 * MiB)
    blob = bytearray(b"".join(shapes.xz_factory_shaped([image])))
    blocks = [e for e in XzBlockSplitter().feed(bytes(blob)) if isinstance(e, Block)]
    assert len({b.data for b in blocks}) == 1  # identical: from the second on, remembered
    blob[blocks[4].offset + blocks[4].header.header_size + 20] ^= 0x01  # the 5th one's data
    dec = make_decoder("xz")
    out = []
    with pytest.raises(DecompressError, match="Corrupt xz data in stream 1"):
        for chunk in dec.feed(bytes(blob)):
            out.append(chunk)
    assert sum(map(len, out)) == 4 * MiB  # the blocks before it, in order, then the fault


def test_corrupt_block_in_the_pool_raises_after_the_blocks_before(factory_xz, raw):
    third = [e for e in XzBlockSplitter().feed(factory_xz) if isinstance(e, Block)][2]
    bad = bytearray(factory_xz)
    bad[third.offset + third.header.header_size + 100] ^= 0x40  # its LZMA2 data
    for max_piece in (len(bad), 50_000):
        dec = make_decoder("xz")
        got = bytearray()
        with pytest.raises(DecompressError, match="Corrupt xz data in stream 1: corrupt block"):
            rng, pos = random.Random(max_piece), 0
            while pos < len(bad):
                n = rng.randint(1, max_piece)
                for chunk in dec.feed(bytes(bad[pos:pos + n])):
                    got += chunk
                pos += n
        assert bytes(got) == raw[:2 * MiB]
        assert not dec._pending  # nothing left decoding for it
    check_bad = bytearray(factory_xz)
    check_bad[third.offset + len(third.data) - 1] ^= 0x01  # its CRC64
    with pytest.raises(DecompressError):
        feed_all(make_decoder("xz"), bytes(check_bad))


def test_faults_of_the_container_come_after_the_blocks_before(factory_xz, raw):
    cut = factory_xz[:-20]  # index and footer damaged: blocks fine
    dec = make_decoder("xz")
    out = b"".join(dec.feed(cut))
    assert out == raw
    with pytest.raises(DecompressError, match="truncated"):
        dec.finish()
    garbage = factory_xz + b"\0\0\0\0garbage!rubbish!"
    dec = make_decoder("xz")
    got = []
    with pytest.raises(DecompressError, match="garbage"):
        for chunk in dec.feed(garbage):
            got.append(chunk)
    assert b"".join(got) == raw


@pytest.mark.parametrize("sized", [
    [True, True, False, True, False, True, True],  # sizes missing past the first block
    [True, False, False, False, False, False, False],
])
def test_a_stream_that_loses_its_sizes_midway_goes_on_block_by_block(raw, sized):
    blob = mixed_stream(raw, sized)
    assert lzma.decompress(blob) == raw
    second = b"".join(shapes.xz_factory_shaped([raw[:MiB + 7]], check=CHECK_CRC32))
    for body, expect in ((blob, raw), (blob + bytes(8) + second, raw + raw[:MiB + 7])):
        for seed, max_output in ((0, MiB), (1, 4096)):
            dec = make_decoder("xz", max_output)
            assert feed_all(dec, body, seed, max_piece=40_000) == expect
            assert dec.sequential and isinstance(dec._then, StreamRest)
            assert (dec.compressed_in, dec.decompressed_out) == (len(body), len(expect))


def test_a_block_over_the_limit_midway_goes_on_block_by_block(raw):
    image = bytes(MiB) + raw  # block 0 small, block 1 (4 MiB) over the 2 MiB limit
    stream = shapes._XzStream(0, CHECK_CRC64)
    parts = [stream.header(), stream.block(image[:MiB]), stream.block(image[MiB:5 * MiB]),
             stream.block(image[5 * MiB:])]
    blob = b"".join(parts) + stream.end()
    dec = d.ParallelXzDecoder(MiB, max_block=2 * MiB)
    assert feed_all(dec, blob, max_piece=100_000) == image
    assert isinstance(dec._then, StreamRest)


def test_block_by_block_rest_checks_what_the_splitter_checks(raw):
    blob = mixed_stream(raw, [True, False, True, False, True, True, True])
    footer = blob[-12:]
    back = (int.from_bytes(footer[4:8], "little") + 1) * 4
    start = len(blob) - 12 - back
    forged = bytearray(blob)
    forged[start + 2] ^= 0x01  # an index record (CRC32 recomputed below)
    body = bytes(forged[start:start + back - 4])
    forged[start + back - 4:start + back] = struct.pack("<I", zlib.crc32(body))
    with pytest.raises(DecompressError, match="index does not match"):
        feed_all(make_decoder("xz"), bytes(forged))
    with pytest.raises(DecompressError, match="truncated"):
        feed_all(make_decoder("xz"), blob[:start + 3])
    block = bytearray(blob)
    second = 12 + parse_block_header(blob[12:]).total_size(CHECK_CRC64)  # block 1: no sizes
    assert parse_block_header(blob[second:]).compressed_size is None
    block[second + 200] ^= 0x01  # in the LZMA2 data of a block decoded block by block
    with pytest.raises(DecompressError):
        feed_all(make_decoder("xz"), bytes(block))


def test_lzma2_end_is_found_without_decoding():
    rng = random.Random(5)
    for data in (b"", b"x", rng.randbytes(200_000), bytes(3 * MiB) + rng.randbytes(70_000)):
        raw_lzma2 = lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}])
        for step in (1, 7, 4096, len(raw_lzma2) + 10):
            walk, pos, end = _Lzma2End(), 0, None
            padded = raw_lzma2 + b"\x01\x02\x03"
            while end is None and pos < len(padded):
                piece = padded[pos:pos + step]
                found = walk.scan(piece)
                if found is not None:
                    end = pos + found
                pos += len(piece)
            assert end == len(raw_lzma2) == walk.size
    with pytest.raises(ValueError, match="control byte"):
        _Lzma2End().scan(b"\x05")


def _peak(image):
    blob = b"".join(shapes.xz_factory_shaped([image]))
    dec = make_decoder("xz", 256 * 1024)
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        for i in range(0, len(blob), MiB):
            for chunk in dec.feed(blob[i:i + MiB]):
                digest.update(chunk)
        dec.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(image).digest()
    return peak


def test_bounded_memory_with_blocks_in_the_pool():
    rng = random.Random(9)
    unit = [rng.randbytes(64 * 1024) + bytes(192 * 1024) for _ in range(4)]  # 1 MiB, compresses 4x
    small, large = _peak(b"".join(unit * 16)), _peak(b"".join(unit * 48))
    # a 1 MiB batch of input and its blocks, the splitter's, at most 3 MiB decoded ahead
    # (_LOOKAHEAD: each block's output joined once more while decoding), the piece in hand:
    # a few MiB, whatever the image's size
    assert small < 9 * MiB and large < small + MiB // 2, (small, large)


def test_no_new_futures_decodes_in_the_calling_thread(factory_xz, raw):
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    dec = d.ParallelXzDecoder(MiB, pool=pool)
    assert feed_all(dec, factory_xz) == raw and dec.blocks_decoded > 0


def test_the_pool_is_small_and_idle_afterwards(factory_xz):
    for _ in range(3):
        feed_all(make_decoder("xz"), factory_xz)
    names = [t.name for t in threading.enumerate() if t.name.startswith("talos-xz")]
    assert 0 < len(names) <= d.block_workers()


# --- the writer on top -------------------------------------------------------------------


def open_file(tmp_path, name="img"):
    return os.open(str(tmp_path / name), os.O_RDWR | os.O_CREAT, 0o644)


def write(writer, blob, step=MiB):
    for i in range(0, len(blob), step):
        writer.write(blob[i:i + step])


def test_writer_output_identical_to_the_sequential_path(tmp_path, fake_spec):
    expect = fake_spec.read(0, fake_spec.size)
    for shape in ("factory", "multi", "no-sizes"):
        blob = compress_image(fake_spec, "xz", 5 * MiB, shape)
        results = []
        for parallel in (True, False):
            fd = open_file(tmp_path, f"{shape}-{parallel}")
            try:
                w = ImageWriter(fd, make_decoder("xz", parallel=parallel))
                write(w, blob, 70_000)
                results.append(w.finish())
                assert os.pread(fd, len(expect) + 1, 0) == expect
            finally:
                os.close(fd)
        assert results[0] == results[1] == (len(expect), hashlib.sha256(expect).hexdigest())


def test_restart_verifies_the_blocks_decoded_in_the_pool(tmp_path, factory_xz, raw):
    fd = open_file(tmp_path)
    try:
        w = ImageWriter(fd, make_decoder("xz"))
        w.write(factory_xz[:len(factory_xz) // 2])
        written = w.size
        assert written > MiB
        assert w.restart(make_decoder("xz")) == written
        write(w, factory_xz, 100_000)  # the same bytes again, from byte 0: checked, then continued
        assert w.finish() == (len(raw), hashlib.sha256(raw).hexdigest())
        assert os.pread(fd, len(raw) + 1, 0) == raw
    finally:
        os.close(fd)


def test_restart_onto_a_different_image_is_caught(tmp_path, factory_xz, raw):
    other = bytearray(raw)
    other[MiB + 5] ^= 0xFF  # in the second block
    other_xz = b"".join(shapes.xz_factory_shaped([bytes(other)]))
    fd = open_file(tmp_path)
    try:
        w = ImageWriter(fd, make_decoder("xz"))
        w.write(factory_xz[:len(factory_xz) * 2 // 3])
        w.restart(make_decoder("xz"))
        with pytest.raises(ImageChanged, match=f"offset {MiB}"):
            write(w, other_xz)
    finally:
        os.close(fd)
    error = writer_error(ImageChanged("x"))
    assert isinstance(error, UpstreamCorrupt) and "different image" in error.message


def test_a_write_error_with_blocks_in_the_pool_is_the_same_storage_error(tmp_path, factory_xz):
    path = tmp_path / "img"
    path.write_bytes(b"")
    fd = os.open(str(path), os.O_RDONLY)  # pwrite fails: EBADF, as a full or broken disk would
    try:
        dec = make_decoder("xz")
        w = ImageWriter(fd, dec)
        with pytest.raises(OSError) as info:
            w.write(factory_xz)
        assert not dec._pending  # the blocks decoding ahead were waited for, none is left
    finally:
        os.close(fd)
    error = writer_error(info.value)
    assert isinstance(error, StorageError) and error.message.startswith("cannot write to the cache: ")


def test_a_corrupt_block_is_upstream_corrupt_through_the_writer(tmp_path, factory_xz):
    bad = bytearray(factory_xz)
    bad[len(bad) // 2] ^= 0x10
    fd = open_file(tmp_path)
    try:
        w = ImageWriter(fd, make_decoder("xz"))
        with pytest.raises(DecompressError) as info:
            write(w, bytes(bad))
            w.finish()
    finally:
        os.close(fd)
    error = writer_error(info.value)
    assert isinstance(error, UpstreamCorrupt) and "Corrupt xz data" in error.message


# --- what the splitter hands over ----------------------------------------------------------


def test_splitter_error_carries_the_events_before_it(factory_xz):
    with pytest.raises(XzSplitError) as info:
        XzBlockSplitter().feed(factory_xz + b"\0\0\0\0garbage!rubbish!")
    kinds = [type(e).__name__ for e in info.value.events]
    assert kinds == ["StreamStart"] + ["Block"] * 7 + ["IndexStart", "StreamEnd"]
    assert "trailing garbage" in str(info.value)


def test_need_sequential_hands_over_the_bytes_it_buffered(raw):
    blob = mixed_stream(raw, [True, True, False, True, True, True, True])
    events = XzBlockSplitter().feed(blob)
    need = events[-1]
    assert isinstance(need, NeedSequential) and need.block == 2 and need.replay is None
    assert need.rest == blob[need.offset:]
    first = XzBlockSplitter().feed(b"".join(shapes.xz_no_sizes([raw[:1000]])))[-1]
    assert first.replay[:12] + first.rest == first.replay and first.block == 0
