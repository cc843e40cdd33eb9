"""testing.shapes bodies checked by the xz and zstd CLIs and by python's lzma / zstandard."""

from __future__ import annotations

import hashlib
import lzma
import re
import subprocess

import pytest
import zstandard

from talos_twisted import zstdformat as zf
from talos_twisted.testing import shapes

MiB = 1 << 20
SIZE = 3 * MiB + 4321


def cli(args, data):
    return subprocess.run(args, input=data, stdout=subprocess.PIPE, check=True).stdout


def xz_list(tmp_path, blob):
    path = tmp_path / "f.xz"
    path.write_bytes(blob)
    out = subprocess.run(["xz", "--robot", "--list", "-vv", str(path)], stdout=subprocess.PIPE,
                         check=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        rows.setdefault(line.split("\t")[0], []).append(line.split("\t"))
    return rows


def zstd_list(tmp_path, blob):
    path = tmp_path / "f.zst"
    path.write_bytes(blob)
    return subprocess.run(["zstd", "-lv", str(path)], stdout=subprocess.PIPE, check=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def raw():
    return b"".join(shapes.disk_like(SIZE, seed=11, random_every=3))


def chunks(raw, size=100_000):
    return shapes.rechunk([raw], size)


def test_disk_like_and_rechunk():
    a = b"".join(shapes.disk_like(MiB + 5, seed=1))
    assert len(a) == MiB + 5 and a == b"".join(shapes.disk_like(MiB + 5, seed=1))
    assert a != b"".join(shapes.disk_like(MiB + 5, seed=2)) and a.count(0) < len(a)
    assert [len(p) for p in shapes.rechunk([b"a" * 5, b"b" * 7, b""], 4)] == [4, 4, 4]
    assert list(shapes.disk_like(0)) == []


def test_xz_factory_shaped(tmp_path, raw):
    blob = b"".join(shapes.xz_factory_shaped(chunks(raw)))
    cli(["xz", "-t"], blob)
    assert cli(["xz", "-dc"], blob) == raw
    assert lzma.decompress(blob) == raw
    rows = xz_list(tmp_path, blob)
    assert len(rows["stream"]) == 1 and rows["file"][0][1:3] == ["1", "4"]
    assert [r[12] for r in rows["block"]] == ["cu"] * 4  # sizes in every block header
    assert [int(r[7]) for r in rows["block"]] == [MiB, MiB, MiB, 4321]
    assert rows["summary"][0][2] == "yes"  # xz -dc -T could decode it in parallel
    assert all(r[15] == "--lzma2=dict=256KiB" for r in rows["block"])  # preset 0


@pytest.mark.parametrize("check, name", [(lzma.CHECK_NONE, "None"), (lzma.CHECK_CRC32, "CRC32"),
                                         (lzma.CHECK_CRC64, "CRC64"), (lzma.CHECK_SHA256, "SHA-256")])
def test_xz_checks(tmp_path, raw, check, name):
    blob = b"".join(shapes.xz_factory_shaped(chunks(raw[:MiB + 9]), block_size=512 * 1024,
                                             check=check))
    cli(["xz", "-t"], blob)
    rows = xz_list(tmp_path, blob)
    assert rows["stream"][0][8] == name and len(rows["block"]) == 3
    assert lzma.decompress(blob) == raw[:MiB + 9]


def test_xz_corruption_is_caught_by_xz(raw):
    blob = bytearray(b"".join(shapes.xz_factory_shaped([raw[:MiB]])))
    blob[-30] ^= 1  # inside the block's CRC64
    assert subprocess.run(["xz", "-t"], input=bytes(blob), capture_output=True).returncode == 1


def test_xz_is_incremental(raw):
    consumed = []

    def source():
        for piece in chunks(raw, 64 * 1024):
            consumed.append(len(piece))
            yield piece

    gen = shapes.xz_factory_shaped(source())
    assert len(next(gen)) == 12 and not consumed  # the stream header needs no input
    for k in range(1, 4):
        next(gen)
        assert sum(consumed) <= k * MiB + 64 * 1024  # at most one block ahead


def test_xz_empty_input():
    blob = b"".join(shapes.xz_factory_shaped([]))
    cli(["xz", "-t"], blob)
    assert len(blob) == 32 and lzma.decompress(blob) == b""


def test_xz_multi_stream(tmp_path, raw):
    blob = b"".join(shapes.xz_multi_stream(chunks(raw), blocks_per_stream=3, padding=12,
                                           trailing_padding=8))
    cli(["xz", "-t"], blob)
    assert cli(["xz", "-dc"], blob) == raw  # python's lzma.decompress stops at stream padding
    rows = xz_list(tmp_path, blob)
    assert [r[1] for r in rows["stream"]] == ["1", "2"]
    assert [r[9] for r in rows["stream"]] == ["12", "8"]  # stream padding after each
    unpadded = b"".join(shapes.xz_multi_stream(chunks(raw), blocks_per_stream=1))
    assert lzma.decompress(unpadded) == raw and len(xz_list(tmp_path, unpadded)["stream"]) == 4
    with pytest.raises(ValueError):
        list(shapes.xz_multi_stream([raw], padding=2))


def test_xz_no_sizes(tmp_path, raw):
    one = b"".join(shapes.xz_no_sizes(chunks(raw)))
    several = b"".join(shapes.xz_no_sizes(chunks(raw), block_size=MiB))
    for blob, blocks in ((one, 1), (several, 4)):
        cli(["xz", "-t"], blob)
        assert cli(["xz", "-dc"], blob) == raw
        rows = xz_list(tmp_path, blob)
        assert [r[12] for r in rows["block"]] == ["--"] * blocks
        assert rows["summary"][0][2] == "no"


def test_zst_factory_shaped(tmp_path, raw):
    pieces = list(shapes.zst_factory_shaped(chunks(raw), SIZE))
    blob = b"".join(pieces)
    assert len(pieces) > 3  # produced as input arrives, not at the end
    cli(["zstd", "-q", "-t"], blob)
    assert cli(["zstd", "-q", "-dc"], blob) == raw
    assert zf.frame_content_size(blob[:18]) == SIZE
    header = zf.parse_frame_header(blob)
    assert header.has_checksum and header.offset == 0
    listing = zstd_list(tmp_path, blob)
    assert re.search(rf"Decompressed Size: .*\({SIZE} B\)", listing)
    assert "Zstandard Frames: 1\n" in listing and "Check: XXH64" in listing
    assert zstandard.ZstdDecompressor().decompress(blob) == raw


@pytest.mark.parametrize("announced", [SIZE - 1, SIZE + 1])
def test_zst_wrong_total_size_raises(raw, announced):
    with pytest.raises(ValueError, match="announced"):
        list(shapes.zst_factory_shaped(chunks(raw), announced))


def test_zst_no_content_size(tmp_path, raw):
    blob = b"".join(shapes.zst_no_content_size(chunks(raw)))
    assert zf.frame_content_size(blob) is None
    assert cli(["zstd", "-q", "-dc"], blob) == raw
    assert "Decompressed Size" not in zstd_list(tmp_path, blob)


def test_zst_multi_frame(tmp_path, raw):
    blob = b"".join(shapes.zst_multi_frame(chunks(raw, 300_000), SIZE, frame_size=MiB,
                                           skippable=b"talos"))
    cli(["zstd", "-q", "-t"], blob)
    assert hashlib.sha256(cli(["zstd", "-q", "-dc"], blob)).digest() == hashlib.sha256(raw).digest()
    assert zf.frame_content_size(blob) == MiB  # only the first frame's size is visible
    listing = zstd_list(tmp_path, blob)
    assert "Zstandard Frames: 4\n" in listing and "Skippable Frames: 1" in listing
    assert re.search(rf"Decompressed Size: .*\({SIZE} B\)", listing)
    empty = b"".join(shapes.zst_multi_frame([], 0))
    assert cli(["zstd", "-q", "-dc"], empty) == b"" and zf.frame_content_size(empty) == 0
    with pytest.raises(ValueError, match="announced"):
        list(shapes.zst_multi_frame(chunks(raw), SIZE - 5, frame_size=MiB))
