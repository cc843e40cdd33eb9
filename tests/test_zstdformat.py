"""talos_twisted.zstdformat against frames from python-zstandard and the zstd CLI."""

from __future__ import annotations

import random
import re
import struct
import subprocess

import pytest
import zstandard

from talos_twisted import zstdformat as zf
from talos_twisted.testing import shapes

MiB = 1 << 20
SIZES = [0, 1, 255, 256, 257, 65791, 65792, 65793, MiB + 3]


def libzstd_view(head):
    """What libzstd's ZSTD_getFrameHeader says about a frame header."""
    p = zstandard.get_frame_parameters(head)
    size = None if p.content_size == zstandard.CONTENTSIZE_UNKNOWN else p.content_size
    return size, p.window_size, p.dict_id or None, p.has_checksum


def ours(head):
    h = zf.parse_frame_header(head)
    return h.content_size, h.window_size, h.dictionary_id, h.has_checksum


@pytest.mark.parametrize("n", SIZES)
def test_content_size_written(n):
    frame = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(bytes(n))
    assert zf.frame_content_size(frame) == n
    assert ours(frame) == libzstd_view(frame)


@pytest.mark.parametrize("n", SIZES)
def test_content_size_absent(n):
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(n))
    assert zf.frame_content_size(frame) is None
    assert ours(frame) == libzstd_view(frame)


def test_streaming_compressor_without_size():
    comp = zstandard.ZstdCompressor(level=3).compressobj()
    frame = comp.compress(bytes(300_000)) + comp.flush()
    assert zf.frame_content_size(frame) is None
    comp = zstandard.ZstdCompressor(level=3).compressobj(size=300_000)
    frame = comp.compress(bytes(300_000)) + comp.flush()
    assert zf.frame_content_size(frame) == 300_000


def test_zstd_cli_file_and_pipe(tmp_path):
    raw = b"".join(shapes.disk_like(MiB + 77, seed=3, random_every=4))
    path = tmp_path / "img.raw"
    path.write_bytes(raw)
    subprocess.run(["zstd", "-q", "-T0", "-18", str(path), "-o", str(tmp_path / "img.zst")],
                   check=True)
    from_file = (tmp_path / "img.zst").read_bytes()
    assert zf.frame_content_size(from_file[:zf.MAX_HEADER_SIZE]) == len(raw)
    listing = subprocess.run(["zstd", "-lv", str(tmp_path / "img.zst")], stdout=subprocess.PIPE,
                             check=True, text=True).stdout
    assert re.search(rf"Decompressed Size:.*\({len(raw)} B\)", listing)
    assert re.search(r"Zstandard Frames: 1\n", listing)
    piped = subprocess.run(["zstd", "-q", "-c", "-3"], input=raw, stdout=subprocess.PIPE,
                           check=True).stdout  # a pipe has no known size
    assert zf.frame_content_size(piped) is None
    assert ours(piped) == libzstd_view(piped)


def test_skippable_frames_are_skipped():
    frame = zstandard.ZstdCompressor().compress(bytes(1000))
    body = shapes.zst_skippable(b"meta" * 10, 3) + shapes.zst_skippable(b"", 15) + frame
    header = zf.parse_frame_header(body)
    assert (header.offset, header.content_size) == (48 + 8, 1000)
    assert zf.frame_content_size(body[:4]) == zf.NeedMore(8)
    assert zf.frame_content_size(body[:20]) == zf.NeedMore(52)  # past the first frame
    assert zf.frame_content_size(body[:52]) == zf.NeedMore(56)


def test_truncated_heads_need_more():
    body = shapes.zst_skippable(b"x" * 5) + zstandard.ZstdCompressor().compress(bytes(70_000))
    header = zf.parse_frame_header(body)
    end = header.offset + header.header_size
    assert end == 13 + 9
    length = 0
    for k in range(end):  # every short head asks for more, and asking is enough to finish
        need = zf.frame_content_size(body[:k])
        assert isinstance(need, zf.NeedMore) and k < need.at_least <= end
        length = max(length, need.at_least)
    assert zf.frame_content_size(body[:length]) == 70_000
    assert zf.frame_content_size(body[:end]) == 70_000


def test_crafted_headers_agree_with_libzstd():
    rng = random.Random(5)
    for fcs_flag in range(4):
        for single in (0, 1):
            for did_flag in range(4):
                for checksum in (0, 1):
                    fhd = fcs_flag << 6 | single << 5 | checksum << 2 | did_flag
                    fcs_size = (single, 2, 4, 8)[fcs_flag]
                    fields = b"" if single else bytes([rng.randrange(0, 22 << 3)])
                    fields += rng.randbytes((0, 1, 2, 4)[did_flag]) + rng.randbytes(fcs_size)
                    head = struct.pack("<IB", zf.ZSTD_MAGIC, fhd) + fields
                    assert ours(head) == libzstd_view(head), hex(fhd)
                    h = zf.parse_frame_header(head)
                    assert h.header_size == len(head) and h.single_segment == bool(single)


def test_two_byte_field_is_offset_by_256():
    head = struct.pack("<IBBH", zf.ZSTD_MAGIC, 0x40, 0x58, 0)
    assert zf.frame_content_size(head) == 256
    head = struct.pack("<IBBH", zf.ZSTD_MAGIC, 0x40, 0x58, 0xFFFF)
    assert zf.frame_content_size(head) == 65791
    head = struct.pack("<IBQ", zf.ZSTD_MAGIC, 0xE0, 5 << 32)  # 8-byte field, single segment
    assert zf.frame_content_size(head) == 5 << 32 == libzstd_view(head)[0]


def test_not_zstd_is_rejected():
    with pytest.raises(zf.ZstdFormatError, match="not a zstd frame"):
        zf.frame_content_size(b"\xfd7zXZ\x00\x00\x04")
    with pytest.raises(zf.ZstdFormatError, match="offset 8"):
        zf.frame_content_size(shapes.zst_skippable(b"") + b"PK\x03\x04")
    with pytest.raises(zf.ZstdFormatError, match="reserved"):
        zf.frame_content_size(struct.pack("<IBB", zf.ZSTD_MAGIC, 0x08, 0x58))
    assert zf.frame_content_size(b"") == zf.NeedMore(4)
