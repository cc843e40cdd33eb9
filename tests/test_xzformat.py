"""talos_twisted.xzformat against files from the real xz CLI and from testing.shapes."""

from __future__ import annotations

import lzma
import random
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from talos_twisted import xzformat as xf
from talos_twisted import xzsplit as xs
from talos_twisted.testing import shapes

MiB = 1 << 20


def xz_cli(data, *args):
    return subprocess.run(["xz", *args, "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout


def xz_list(tmp_path, blob):
    """Rows of `xz --robot --list -vv`, by row type."""
    path = tmp_path / "f.xz"
    path.write_bytes(blob)
    out = subprocess.run(["xz", "--robot", "--list", "-vv", str(path)], stdout=subprocess.PIPE,
                         check=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        cols = line.split("\t")
        rows.setdefault(cols[0], []).append(cols)
    return rows


@pytest.fixture(scope="module")
def raw():
    return b"".join(shapes.disk_like(3 * MiB + 1234, seed=7, random_every=4))


@pytest.fixture(scope="module")
def cli_xz(raw):
    return xz_cli(raw, "-0", "-T2", "--block-size=1MiB")


@pytest.fixture(scope="module")
def factory_xz(raw):
    return b"".join(shapes.xz_factory_shaped(shapes.rechunk([raw], 100_000)))


@pytest.fixture(params=["cli", "factory"])
def xz_file(request, cli_xz, factory_xz):
    return cli_xz if request.param == "cli" else factory_xz


def split(blob, pieces=None, seed=0, **kw):
    """Feed `blob` to a splitter in random pieces; return (events, splitter)."""
    splitter, events, rng, pos = xs.XzBlockSplitter(**kw), [], random.Random(seed), 0
    while pos < len(blob) and not (events and isinstance(events[-1], xs.NeedSequential)):
        n = rng.randint(1, pieces or 200_000)
        events += splitter.feed(blob[pos:pos + n])
        pos += n
    return events, splitter


def with_crc(b):
    return b + struct.pack("<I", zlib.crc32(b))


def test_stream_header_and_footer(cli_xz):
    assert xf.parse_stream_header(cli_xz) == xf.StreamHeader(xf.CHECK_CRC64)
    footer = xf.parse_stream_footer(cli_xz)
    assert footer.check_type == xf.CHECK_CRC64
    assert xf.parse_index(cli_xz[-12 - footer.backward_size:-12], 4).index_size == footer.backward_size


@pytest.mark.parametrize("pos, expect", [(0, "magic"), (7, "CRC32"), (9, "CRC32")])
def test_stream_header_corruption(cli_xz, pos, expect):
    bad = bytearray(cli_xz[:12])
    bad[pos] ^= 0x01
    with pytest.raises(xf.XzFormatError, match=expect):
        xf.parse_stream_header(bytes(bad))


@pytest.mark.parametrize("pos, expect", [(11, "magic"), (1, "CRC32"), (5, "CRC32"), (8, "CRC32")])
def test_stream_footer_corruption(cli_xz, pos, expect):
    bad = bytearray(cli_xz[-12:])
    bad[pos] ^= 0x01
    with pytest.raises(xf.XzFormatError, match=expect):
        xf.parse_stream_footer(bytes(bad))


def test_reserved_stream_flags_rejected():
    body = struct.pack("<I", 1) + b"\x00\x14"  # CRC32 right, reserved flag bit set
    with pytest.raises(xf.XzFormatError, match="unsupported stream flags"):
        xf.parse_stream_footer(struct.pack("<I", zlib.crc32(body)) + body + b"YZ")


def test_index_matches_xz_list(tmp_path, xz_file, raw):
    index = xf.index_from_tail(xz_file[-xf.DEFAULT_TAIL_GUESS:], len(xz_file))
    assert isinstance(index, xf.XzIndex)
    assert index.uncompressed_size == len(raw) and index.stream_size == len(xz_file)
    rows = xz_list(tmp_path, xz_file)
    assert len(rows["stream"]) == 1 and len(rows["block"]) == 4 == len(index.blocks)
    for info, row in zip(index.blocks, rows["block"]):
        # columns: compressed offset, uncompressed offset, total size, uncompressed size
        assert (info.compressed_offset, info.uncompressed_offset, info.total_size,
                info.uncompressed_size) == tuple(int(c) for c in row[4:8])
        assert row[12] == "cu"  # both sizes in the block header


def test_raw_size_from_tail(xz_file, raw):
    first, last = xf.tail_range(len(xz_file))
    assert (first, last) == (max(0, len(xz_file) - 65536), len(xz_file) - 1)
    assert xf.raw_size_from_tail(xz_file[first:], len(xz_file)) == len(raw)
    assert xf.raw_size_from_tail(xz_file, len(xz_file)) == len(raw)  # tail is the whole file


def test_index_larger_than_tail_asks_for_more(raw):
    blob = b"".join(shapes.xz_factory_shaped([raw[:MiB]], block_size=2048))
    assert xf.raw_size_from_tail(blob[-5:], len(blob)) == xf.NeedMore(len(blob) - 12)
    need = xf.raw_size_from_tail(blob[-200:], len(blob))
    assert isinstance(need, xf.NeedMore)
    assert need.start == len(blob) - 12 - xf.parse_stream_footer(blob).backward_size
    assert len(blob) - need.start > 1000  # 512 records
    assert xf.raw_size_from_tail(blob[need.start:], len(blob)) == MiB


def test_multiple_streams_give_unknown(raw, cli_xz):
    multi = b"".join(shapes.xz_multi_stream([raw], blocks_per_stream=2))
    result = xf.raw_size_from_tail(multi[-65536:], len(multi))
    assert isinstance(result, xf.UnknownSize) and "several streams" in result.reason
    concatenated = cli_xz + cli_xz  # what `cat a.xz b.xz` makes
    assert isinstance(xf.raw_size_from_tail(concatenated[-65536:], len(concatenated)), xf.UnknownSize)
    padded = cli_xz + bytes(8)
    result = xf.raw_size_from_tail(padded[-65536:], len(padded))
    assert isinstance(result, xf.UnknownSize) and "padding" in result.reason
    assert isinstance(xf.raw_size_from_tail(b"", 16), xf.UnknownSize)


def _index_of(blob):
    size = xf.parse_stream_footer(blob).backward_size
    return len(blob) - 12 - size, size


def test_corrupt_index_rejected(factory_xz):
    start, size = _index_of(factory_xz)
    index = factory_xz[start:start + size]
    bad = bytearray(index)
    bad[3] ^= 0x01
    with pytest.raises(xf.XzFormatError, match="index: CRC32"):
        xf.parse_index(bytes(bad), 4)
    with pytest.raises(xf.XzFormatError, match="index: CRC32"):
        xf.raw_size_from_tail(factory_xz[:start] + bytes(bad) + factory_xz[-12:], len(factory_xz))
    with pytest.raises(xf.XzFormatError, match="indicator"):
        xf.parse_index(with_crc(b"\x01\x00\x00\x00"), 4)
    with pytest.raises(xf.XzFormatError, match="truncated"):  # two records claimed, one there
        xf.parse_index(with_crc(b"\x00\x02\x20\x05"), 4)
    with pytest.raises(xf.XzFormatError, match="padding"):  # non-null padding
        xf.parse_index(with_crc(b"\x00\x01\x20\x05\x00\x01\x00\x00"), 4)
    with pytest.raises(xf.XzFormatError, match="non-minimal"):
        xf.parse_index(with_crc(b"\x00\x81\x00\x00"), 4)
    with pytest.raises(xf.XzFormatError, match="unpadded"):  # too small for a CRC64 block
        xf.parse_index(with_crc(b"\x00\x01\x08\x05"), 4)
    with pytest.raises(xf.XzFormatError, match="multiple of 4"):
        xf.parse_index(index[:-1], 4)


def test_truncated_file_rejected(factory_xz):
    start, size = _index_of(factory_xz)
    cut = factory_xz[:start + size - 8] + factory_xz[-12:]  # part of the index lost
    with pytest.raises(xf.XzFormatError):
        xf.raw_size_from_tail(cut, len(cut))
    with pytest.raises(xf.XzFormatError, match="exceeds the file"):
        xf.raw_size_from_tail(factory_xz[-size - 12:], size + 16)
    with pytest.raises(xf.XzFormatError, match="describes"):  # file shorter than its index says
        xf.raw_size_from_tail(factory_xz[-65536:], len(factory_xz) - 1000)
    with pytest.raises(xf.XzFormatError, match="multiple of 4"):
        xf.raw_size_from_tail(factory_xz[-65536:], len(factory_xz) - 1)


def test_block_headers_of_cli_files(tmp_path, raw):
    for args, sized in ((("-T2",), True), (("-T1",), False)):
        blob = xz_cli(raw, "-0", "--block-size=1MiB", *args)
        rows = xz_list(tmp_path, blob)["block"]
        for row in rows:
            header = xf.parse_block_header(blob[int(row[4]):])
            assert header.header_size == int(row[11])
            assert header.filters == (xf.FilterFlags(0x21, bytes([12])),)  # 256 KiB
            assert xf.lzma_filters(header) == [{"id": lzma.FILTER_LZMA2, "dict_size": 256 << 10}]
            if sized:
                assert header.compressed_size == int(row[13])
                assert header.uncompressed_size == int(row[7])
                assert header.total_size(4) == int(row[6])
            else:
                assert header.compressed_size is header.uncompressed_size is None
                assert header.total_size(4) is None
        assert xf.parse_block_header(blob[12:20]) is None  # incomplete


def test_block_header_corruption(cli_xz):
    hsize = (cli_xz[12] + 1) * 4
    header = bytearray(cli_xz[12:12 + hsize])
    header[3] ^= 0x01
    with pytest.raises(xf.XzFormatError, match="CRC32"):
        xf.parse_block_header(bytes(header))
    reserved = bytearray(cli_xz[12:12 + hsize - 4])
    reserved[1] |= 0x04
    with pytest.raises(xf.XzFormatError, match="reserved"):
        xf.parse_block_header(with_crc(bytes(reserved)))
    with pytest.raises(xf.XzFormatError, match="index indicator"):
        xf.parse_block_header(b"\x00\x01")


def test_decode_block_and_raw_filters(cli_xz, raw):
    index = xf.index_from_tail(cli_xz, len(cli_xz))
    out = []
    for info in index.blocks:
        block = cli_xz[info.compressed_offset:info.compressed_offset + info.total_size]
        header = xf.parse_block_header(block)
        data = xf.decode_block(header, block, xf.CHECK_CRC64)
        payload = block[header.header_size:header.header_size + header.compressed_size]
        dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=xf.lzma_filters(header))
        assert dec.decompress(payload) == data and dec.eof
        out.append(data)
    assert b"".join(out) == raw


@pytest.mark.parametrize("check", [xf.CHECK_NONE, xf.CHECK_CRC32, xf.CHECK_CRC64, xf.CHECK_SHA256])
def test_decode_block_checks(raw, check):
    blob = b"".join(shapes.xz_factory_shaped([raw[:MiB + 100]], check=check))
    events, _ = split(blob)
    blocks = [e for e in events if isinstance(e, xs.Block)]
    assert b"".join(b.decode() for b in blocks) == raw[:MiB + 100]
    last = blocks[-1]
    if check != xf.CHECK_NONE:
        bad = last.data[:-1] + bytes([last.data[-1] ^ 1])  # the check's last byte
        with pytest.raises(xf.XzFormatError, match="corrupt block"):
            xf.decode_block(last.header, bad, check)


def test_decode_block_rejects_bad_blocks(factory_xz):
    events, _ = split(factory_xz)
    block = next(e for e in events if isinstance(e, xs.Block))
    data = bytearray(block.data)
    data[block.header.header_size + 5] ^= 0x40
    with pytest.raises(xf.XzFormatError, match="corrupt block"):
        xf.decode_block(block.header, bytes(data), 4)
    with pytest.raises(xf.XzFormatError, match="header says"):
        xf.decode_block(block.header, block.data[:-4], 4)
    no_sizes = xf.BlockHeader(block.header.header_size, None, None, block.header.filters)
    with pytest.raises(xf.XzFormatError, match="sequentially"):
        xf.decode_block(no_sizes, block.data, 4)
    with pytest.raises(xf.XzFormatError, match="unsupported filter 0xa"):
        xf.lzma_filters(xf.BlockHeader(12, 1, 1, (xf.FilterFlags(0x0A, b""),)))


def test_delta_and_bcj_filters(raw):
    blob = xz_cli(raw, "-T2", "--block-size=512KiB", "--delta=dist=4", "--x86", "--lzma2=preset=0")
    events, splitter = split(blob)
    blocks = [e for e in events if isinstance(e, xs.Block)]
    splitter.finish()
    assert len(blocks) == 7 and b"".join(b.decode() for b in blocks) == raw
    assert xf.lzma_filters(blocks[0].header) == [
        {"id": lzma.FILTER_DELTA, "dist": 4}, {"id": lzma.FILTER_X86, "start_offset": 0},
        {"id": lzma.FILTER_LZMA2, "dict_size": 256 << 10}]


def test_splitter_reassembles(xz_file, raw):
    events, splitter = split(xz_file)
    splitter.finish()
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["StreamStart"] + ["Block"] * 4 + ["IndexStart", "StreamEnd"]
    blocks = [e for e in events if isinstance(e, xs.Block)]
    assert b"".join(b.decode() for b in blocks) == raw
    index = events[-1].index
    assert index == xf.index_from_tail(xz_file, len(xz_file))
    assert [(b.offset, b.uncompressed_offset) for b in blocks] == [
        (i.compressed_offset, i.uncompressed_offset) for i in index.blocks]
    assert events[-1].end_offset == len(xz_file) == splitter.offset


def test_splitter_byte_by_byte(raw):
    blob = b"".join(shapes.xz_factory_shaped([raw[:20_000]], block_size=4096, check=1))
    events, splitter = split(blob, pieces=1)
    splitter.finish()
    assert b"".join(e.decode() for e in events if isinstance(e, xs.Block)) == raw[:20_000]


def test_thread_pool_decode(raw):
    blob = b"".join(shapes.xz_factory_shaped(shapes.rechunk([raw], 65536)))
    events, _ = split(blob)
    blocks = [e for e in events if isinstance(e, xs.Block)]
    with ThreadPoolExecutor(2) as pool:
        assert b"".join(pool.map(xs.Block.decode, blocks)) == raw


@pytest.mark.parametrize("source", ["cli-T1", "shapes-one-block", "shapes-blocks"])
def test_splitter_without_sizes_falls_back(raw, source):
    blob = {"cli-T1": lambda: xz_cli(raw, "-0", "-T1", "--block-size=1MiB"),
            "shapes-one-block": lambda: b"".join(shapes.xz_no_sizes([raw])),
            "shapes-blocks": lambda: b"".join(shapes.xz_no_sizes([raw], block_size=MiB))}[source]()
    splitter = xs.XzBlockSplitter()
    events = splitter.feed(blob[:5000])
    assert [type(e) for e in events] == [xs.StreamStart, xs.NeedSequential]
    fallback = events[1]
    assert (fallback.block, fallback.offset, fallback.uncompressed_offset) == (0, 12, 0)
    assert "lacks" in fallback.reason
    dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    assert dec.decompress(fallback.replay) + dec.decompress(blob[5000:]) == raw and dec.eof
    with pytest.raises(RuntimeError):
        splitter.feed(b"more")
    splitter.finish()  # the caller took over


def test_splitter_block_limit_mid_stream(raw):
    blob = b"".join(shapes.xz_factory_shaped([bytes(MiB) + raw]))  # block 0 compresses well
    events, _ = split(blob, max_block_size=100_000)
    assert [type(e) for e in events] == [xs.StreamStart, xs.Block, xs.NeedSequential]
    assert (events[2].block, events[2].uncompressed_offset, events[2].replay) == (1, MiB, None)
    assert events[2].offset == 12 + events[1].header.total_size(4)


def test_splitter_multi_stream_with_padding(raw):
    blob = b"".join(shapes.xz_multi_stream([raw], blocks_per_stream=1, padding=8,
                                           trailing_padding=4, check=xf.CHECK_CRC32))
    events, splitter = split(blob, pieces=50_000)
    splitter.finish()
    ends = [e for e in events if isinstance(e, xs.StreamEnd)]
    assert [e.stream for e in ends] == [0, 1, 2, 3]
    assert b"".join(e.decode() for e in events if isinstance(e, xs.Block)) == raw
    assert [e.offset for e in events if isinstance(e, xs.StreamStart)][1] == ends[0].end_offset + 8


def test_splitter_rejects_bad_endings(factory_xz):
    for tail, expect in ((b"\0\0", "multiple of four"), (b"", "truncated")):
        _, splitter = split(factory_xz + tail if tail else factory_xz[:-1])
        with pytest.raises(xf.XzFormatError, match=expect):
            splitter.finish()
    with pytest.raises(xf.XzFormatError, match="multiple of four"):  # between streams
        split(factory_xz + b"\0\0" + factory_xz)
    with pytest.raises(xf.XzFormatError, match="trailing garbage"):
        split(factory_xz + b"\0\0\0\0garbage!rubbish!")
    with pytest.raises(xf.XzFormatError, match="empty"):
        xs.XzBlockSplitter().finish()
    with pytest.raises(xf.XzFormatError, match="magic"):
        xs.XzBlockSplitter().feed(b"\x28\xb5\x2f\xfd" + bytes(20))


def test_splitter_checks_index_against_blocks(factory_xz):
    start, size = _index_of(factory_xz)
    index = bytearray(factory_xz[start:start + size - 4])
    count, pos = index[1], 2
    assert count == 4
    pos = next(i for i in range(pos, len(index)) if not index[i] & 0x80) + 1  # skip unpadded
    assert index[pos:pos + 3] == b"\x80\x80\x40"  # 1 MiB
    index[pos] = 0x81  # claim 1 MiB + 1
    forged = factory_xz[:start] + with_crc(bytes(index)) + factory_xz[-12:]
    assert xf.raw_size_from_tail(forged, len(forged)) == xf.raw_size_from_tail(
        factory_xz, len(factory_xz)) + 1  # the tail alone cannot tell
    with pytest.raises(xf.XzFormatError, match="does not match its blocks"):
        split(forged)
