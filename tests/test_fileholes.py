"""The holes of a committed cache file (talos_twisted.fileholes), and a hit that sends them
without reading them."""

from __future__ import annotations

import errno
import os

import pytest
import pytest_twisted

from talos_twisted import fileholes
from talos_twisted.fileholes import FileHoles
from talos_twisted.schematic import Schematic

from .conftest import MiB
from .rawhttp import body_of, open_raw

KiB = 1024
CHUNK = 256 * KiB


def sparse_file(path, size, extents):
    """A file of `size` bytes whose only written parts are `extents` [(start, data)]."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
    for start, data in extents:
        os.pwrite(fd, data, start)
    os.ftruncate(fd, size)
    os.fsync(fd)
    return fd


def rebuild(fd, size, holes):
    """The file as a response sends it: zeros where `holes` says so, reads elsewhere."""
    out = bytearray()
    offset = 0
    while offset < size:
        want = min(CHUNK, size - offset)
        zeros = holes.zeros_at(offset, offset + want)
        if zeros:
            out += bytes(zeros)
            offset += zeros
        else:
            out += os.pread(fd, want, offset)
            offset += want
    return bytes(out)


@pytest.mark.parametrize("extents", [
    [(0, b"\x01" * 70_000), (3 * MiB + 5, b"\x02" * 100_000), (8 * MiB - 10, b"\x03" * 10)],  # data at both ends
    [(2 * MiB, b"\x04" * 4096)],  # a hole first and last
    [],  # nothing but a hole
    [(0, os.urandom(8 * MiB))],  # no hole at all
])
def test_a_file_sent_by_its_holes_is_the_file(tmp_path, extents):
    size = 8 * MiB
    fd = sparse_file(tmp_path / "img", size, extents)
    try:
        holes = FileHoles(fd, size)
        assert rebuild(fd, size, holes) == os.pread(fd, size, 0)
    finally:
        os.close(fd)


def test_the_holes_are_found_not_read(tmp_path, monkeypatch):
    size = 64 * MiB
    fd = sparse_file(tmp_path / "img", size, [(0, b"\x01" * 70_000), (40 * MiB, b"\x02" * 70_000)])
    asked = []
    real = os.lseek
    monkeypatch.setattr(fileholes.os, "lseek", lambda f, o, how: asked.append(o) or real(f, o, how))
    try:
        holes = FileHoles(fd, size)
        zeros = sum(holes.zeros_at(o, min(o + CHUNK, size)) for o in range(0, size, CHUNK))
        # a few extents' worth of questions for 256 chunks, and every hole's chunk known as zeros
        assert len(asked) <= 2 * 256 // 8 and zeros >= size - 2 * CHUNK - 2 * 70_000
    finally:
        os.close(fd)


def test_a_file_system_that_cannot_tell_is_read_like_data(tmp_path, monkeypatch):
    fd = sparse_file(tmp_path / "img", 4 * MiB, [(MiB, b"\x01" * 100)])

    def unsupported(f, o, how):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(fileholes.os, "lseek", unsupported)
    try:
        holes = FileHoles(fd, 4 * MiB)
        assert [holes.zeros_at(o, o + CHUNK) for o in range(0, 4 * MiB, CHUNK)] == [0] * 16
    finally:
        os.close(fd)


@pytest.mark.stack(image_size=16 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_hit_sends_the_holes_without_reading_them(stack, image_reads):
    resp, first = await stack.get(stack.image_url())  # the miss, cached
    del image_reads[:]
    for headers in ({}, {"Range": "bytes=1000-9999999"}):
        client = await open_raw(stack.url, "/images/talos/v1.11.2/amd64/openstack.raw", headers=headers)
        await client.closed
        data, complete = body_of(client)
        assert b"X-Talos-Cache: HIT" in client.split()[0]
        assert complete and data == (first if not headers else first[1000:10_000_000])
    assert first == stack.expected(Schematic().id)
    assert sum(image_reads) < len(first) // 4, f"read {sum(image_reads)} bytes for two hits of {len(first)}: the holes were read"
