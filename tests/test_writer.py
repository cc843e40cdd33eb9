import hashlib
import lzma
import os
import random

from talos_twisted.decompress import make_decoder
from talos_twisted.writer import BLOCK, ImageWriter


def disk_image(size, seed=1):
    """Mostly zeros with a few data regions, like a Talos disk image."""
    rng = random.Random(seed)
    buf = bytearray(size)
    for start in (0, size // 3 + 123, size - 70_000):
        buf[start:start + 50_000] = rng.randbytes(50_000)
    return bytes(buf)


def write_all(path, compressed, kind, feed=65536, progress=None):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        w = ImageWriter(fd, make_decoder(kind, 256 * 1024), on_progress=progress, progress_every=1 << 20)
        for i in range(0, len(compressed), feed):
            readable = w.write(compressed[i:i + feed])
            # every byte reported as written can be read back, holes included
            assert os.fstat(fd).st_size >= readable
        return w.finish()
    finally:
        os.close(fd)


def test_writes_exact_bytes_sparse(tmp_path):
    raw = disk_image(16 * 1024 * 1024)
    path = str(tmp_path / "img")
    size, sha = write_all(path, lzma.compress(raw, preset=0), "xz")
    assert size == len(raw) and sha == hashlib.sha256(raw).hexdigest()
    assert open(path, "rb").read() == raw
    st = os.stat(path)
    # ~150 KB of data in 16 MiB: allocated blocks follow the data, not the nominal size
    assert st.st_blocks * 512 < 2 * 1024 * 1024


def test_trailing_zeros_extend_the_file(tmp_path):
    raw = b"\x01" * 1000 + bytes(3 * BLOCK + 17)
    path = str(tmp_path / "img")
    size, _ = write_all(path, raw, "none", feed=4096)
    assert size == len(raw) and open(path, "rb").read() == raw


def test_progress_reported_from_inside_a_large_batch(tmp_path):
    raw = disk_image(8 * 1024 * 1024, seed=2)
    seen = []
    write_all(str(tmp_path / "img"), lzma.compress(raw, preset=0), "xz", feed=10**9, progress=seen.append)
    assert len(seen) >= 4 and seen == sorted(seen) and seen[-1] <= len(raw)


def _written(path, raw, runs=None):
    """A writer that has written and verified `raw` (uncompressed), not sealed yet."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    w = ImageWriter(fd, make_decoder("none", 256 * 1024))
    if runs is not None:
        w.zero_runs = runs
    for i in range(0, len(raw), 100_000):
        w.write(raw[i:i + 100_000])
    assert w.verify() == len(raw)
    return fd, w


def test_seal_hashes_the_file_with_its_holes_as_zeros(tmp_path):
    raw = disk_image(6 * 1024 * 1024, seed=3) + bytes(5 * BLOCK)  # ends in a hole
    fd, w = _written(str(tmp_path / "img"), raw)
    try:
        assert len(w.zero_runs) >= 3
        assert w.seal() == hashlib.sha256(raw).hexdigest()
    finally:
        os.close(fd)


def test_seal_reads_the_zeros_the_writer_did_not_record(tmp_path):
    from talos_twisted.zeroruns import ZeroRuns

    raw = disk_image(6 * 1024 * 1024, seed=4)
    fd, w = _written(str(tmp_path / "img"), raw, runs=ZeroRuns(max_runs=1))  # the rest are read back
    try:
        assert len(w.zero_runs) == 1
        assert w.seal() == hashlib.sha256(raw).hexdigest()
    finally:
        os.close(fd)


def test_seal_vouches_for_the_file_not_for_the_stream(tmp_path):
    raw = disk_image(4 * 1024 * 1024, seed=5)
    fd, w = _written(str(tmp_path / "img"), raw)
    try:
        os.pwrite(fd, b"\xff", 10)  # the file changed after it was written
        assert w.seal() == hashlib.sha256(raw[:10] + b"\xff" + raw[11:]).hexdigest() != hashlib.sha256(raw).hexdigest()
    finally:
        os.close(fd)
