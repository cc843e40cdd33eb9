"""The zero runs the writer records (talos_twisted.zeroruns) and a follower that sends them
without reading the file's holes."""

from __future__ import annotations

import lzma
import os

import pytest
import pytest_twisted

from talos_twisted.decompress import make_decoder
from talos_twisted.schematic import Schematic
from talos_twisted.writer import BLOCK, ImageWriter
from talos_twisted.zeroruns import ZeroRuns

from .conftest import MiB
from .rawhttp import body_of, open_raw
from .test_writer import disk_image


def test_runs_merge_answer_within_a_limit_and_refuse_to_overlap():
    runs = ZeroRuns()
    runs.add(0, 10)
    runs.add(10, 20)  # contiguous: one run
    runs.add(30, 40)
    runs.add(5, 5)  # empty: nothing
    assert len(runs) == 2
    assert [runs.zeros_at(o, 100) for o in (0, 9, 19, 20, 25, 30, 39, 40, 99)] == [20, 11, 1, 0, 0, 10, 1, 0, 0]
    assert runs.zeros_at(12, 15) == 3 and runs.zeros_at(12, 12) == 0
    with pytest.raises(ValueError):
        runs.add(35, 50)


def test_beyond_the_cap_runs_are_not_recorded():
    runs = ZeroRuns(max_runs=2)
    for start in (0, 20, 40):
        runs.add(start, start + 10)
    assert len(runs) == 2 and runs.zeros_at(40, 100) == 0 and runs.zeros_at(20, 100) == 10


@pytest.mark.parametrize("feed", [4096, 65536, 1 << 20])
def test_the_writer_records_exactly_the_zero_blocks_it_left_as_holes(tmp_path, feed):
    raw = disk_image(8 * MiB) + b"\x07" * 100 + bytes(3 * BLOCK + 5)  # and a zero tail
    fd = os.open(tmp_path / "img", os.O_RDWR | os.O_CREAT, 0o640)
    w = ImageWriter(fd, make_decoder("xz", 256 * 1024))
    compressed = lzma.compress(raw, preset=0)
    for i in range(0, len(compressed), feed):
        w.write(compressed[i:i + feed])
    w.finish()
    os.close(fd)
    runs = list(w.zero_runs)
    for start, end in runs:  # every byte said to be zero is zero
        assert raw[start:end] == bytes(end - start), (start, end)
    assert all(a[1] < b[0] for a, b in zip(runs, runs[1:])), "in order, apart"
    # and the zeros of whole aligned blocks are all known: most of the image
    known = sum(end - start for start, end in runs)
    zero_blocks = sum(BLOCK for b in range(0, len(raw) - BLOCK + 1, BLOCK) if raw[b:b + BLOCK] == bytes(BLOCK))
    assert known >= zero_blocks > len(raw) // 2


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_follower_sends_the_holes_without_reading_them(stack, image_reads):
    stack.fake.rate_limit = 256 * 1024  # compressed bytes/s: the client follows for about a second
    client = await open_raw(stack.url, "/images/talos/v1.11.2/amd64/openstack.raw")
    await client.closed
    data, complete = body_of(client)
    assert complete and data == stack.expected(Schematic().id)
    assert sum(image_reads) < len(data) // 4, f"read {sum(image_reads)} of {len(data)} bytes: the holes were read"
