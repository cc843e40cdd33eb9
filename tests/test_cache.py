import errno
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from talos_twisted import cache as cache_module
from talos_twisted import cachefs
from talos_twisted.cache import CacheStore
from talos_twisted.request import ImageKey


class FakeTime:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        self.t += 1
        return self.t


def key(n=0, version="v1.11.2"):
    return ImageKey(version, "amd64", f"{n:064x}", "openstack")


def put(store, k, data=b"x" * 10000, sha="a" * 64):
    tmp = store.temp_path(k)
    with open(tmp, "wb") as f:
        f.write(data)
    return store.commit(k, tmp, len(data), sha, {"extensions": []})


def test_commit_layout_and_sidecar(tmp_path):
    store = CacheStore(str(tmp_path), now=FakeTime())
    e = put(store, key(1))
    assert e.path == str(tmp_path / "images" / "v1.11.2" / "amd64" / f"{1:064x}" / "openstack.raw")
    side = json.loads(open(e.path + ".json").read())
    assert side["size"] == 10000 and side["sha256"] == "a" * 64
    assert store.get(key(1)).sha256 == "a" * 64
    assert [p for p in os.listdir(os.path.dirname(e.path)) if ".tmp-" in p] == []


def test_commit_refuses_size_mismatch(tmp_path):
    store = CacheStore(str(tmp_path))
    tmp = store.temp_path(key(1))
    open(tmp, "wb").write(b"abc")
    with pytest.raises(OSError):
        store.commit(key(1), tmp, 4, "a" * 64, {})
    assert not os.path.exists(tmp) and store.get(key(1)) is None


def test_lru_eviction_spares_pinned(tmp_path):
    store = CacheStore(str(tmp_path), now=FakeTime())
    for n in range(3):
        put(store, key(n), os.urandom(100_000))
    usage = store.total_usage
    store.get(key(0))  # 0 is now the most recent; 1 is the oldest
    store.pin(key(1))
    store.max_size = usage - 1  # one entry must go
    assert store.evict() == [key(2)]
    store.unpin(key(1))
    store.max_size = 1
    assert store.evict() == [key(1), key(0)]
    assert store.entries() == [] and not os.path.exists(store.path_for(key(0)))


def test_image_larger_than_cache_is_not_kept(tmp_path):
    store = CacheStore(str(tmp_path), max_size=4096)
    assert put(store, key(1), os.urandom(100_000)) is None
    assert store.get(key(1)) is None and os.listdir(os.path.dirname(store.path_for(key(1)))) == []


def test_recover_removes_temps_and_orphans(tmp_path):
    store = CacheStore(str(tmp_path), now=FakeTime())
    good = put(store, key(1))
    orphan = put(store, key(2))
    os.unlink(orphan.path + ".json")
    tmp = store.temp_path(key(3))
    open(tmp, "wb").write(b"partial")
    bad = put(store, key(4))
    with open(bad.path + ".json", "w") as f:
        f.write("{not json")
    fresh = CacheStore(str(tmp_path))
    fresh.recover()
    assert [e.key for e in fresh.entries()] == [key(1)]
    assert fresh.get(key(1)).sha256 == good.sha256
    for gone in (orphan.path, tmp, bad.path, bad.path + ".json"):
        assert not os.path.exists(gone)


def test_min_free_space_evicts(tmp_path):
    free = {"bytes": 10**9}
    store = CacheStore(str(tmp_path), min_free=5 * 10**8, now=FakeTime(), free_space=lambda p: free["bytes"])
    put(store, key(1))
    put(store, key(2))
    free["bytes"] = 0
    assert store.evict() == [key(1), key(2)]


class SetTime:
    """A clock that moves only when told to."""

    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def sidecar_access(entry):
    with open(entry.path + ".json") as f:
        return json.load(f)["last_access"]


def test_last_access_is_persisted_only_when_the_stored_value_is_over_a_minute_old(tmp_path):
    clock = SetTime()
    t0 = clock.t
    store = CacheStore(str(tmp_path), now=clock)
    e = put(store, key(1))
    assert sidecar_access(e) == t0
    clock.t = t0 + 30
    assert store.get(key(1)).last_access == t0 + 30
    assert sidecar_access(e) == t0, "a hit within a minute of the stored value writes nothing"
    clock.t = t0 + 61
    store.get(key(1))
    assert sidecar_access(e) == t0 + 61
    clock.t = t0 + 100
    assert store.get(key(1)).last_access == t0 + 100
    assert sidecar_access(e) == t0 + 61
    clock.t = t0 + 122
    store.get(key(1))
    assert sidecar_access(e) == t0 + 122
    # the rest of the sidecar is untouched
    side = json.load(open(e.path + ".json"))
    assert side["created"] == t0 and side["size"] == 10000 and side["sha256"] == "a" * 64


def test_peek_is_not_an_access(tmp_path):
    clock = SetTime()
    store = CacheStore(str(tmp_path), now=clock)
    e = put(store, key(1))
    clock.t += 3600
    assert store.peek(key(1)).last_access == e.last_access
    assert sidecar_access(e) == e.last_access
    assert store.peek(key(2)) is None


def test_lru_order_survives_a_restart(tmp_path):
    clock = SetTime()
    t0 = clock.t
    store = CacheStore(str(tmp_path), now=clock)
    for n in range(3):
        clock.t += 1
        put(store, key(n), os.urandom(100_000))
    usage = store.total_usage
    clock.t = t0 + 120
    store.get(key(0))  # 0 becomes the most recent, and that is recorded: 1 is the oldest now
    fresh = CacheStore(str(tmp_path), now=clock)
    fresh.recover()
    assert [e.key for e in fresh.entries()] == [key(0), key(2), key(1)]
    assert fresh.get(key(0)).last_access == t0 + 120
    fresh.max_size = usage - 1
    assert fresh.evict() == [key(1)]


def test_a_failed_last_access_write_does_not_fail_the_hit(tmp_path, monkeypatch):
    clock = SetTime()
    t0 = clock.t
    store = CacheStore(str(tmp_path), now=clock)
    e = put(store, key(1))

    def broken(entry):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_sidecar", broken)
    clock.t = t0 + 100
    assert store.get(key(1)).last_access == t0 + 100
    monkeypatch.undo()
    clock.t = t0 + 101
    store.get(key(1))  # still older than a minute on disk: written now
    assert sidecar_access(e) == t0 + 101


# --- commit: a failure at any step leaves a whole entry or nothing ----------------------

# the os calls a commit makes that touch the disk, in the order they come
DISK_CALLS = {"open", "write", "fsync", "replace", "unlink", "fchmod", "utime", "mkdir"}


class FailingOS:
    """`os` for cache.py and cachefs.py: the `fail_at`-th disk call raises ENOSPC; with
    `crash`, every later one too (the process died there: nothing can be cleaned up)."""

    def __init__(self, fail_at, crash):
        self.fail_at = fail_at
        self.crash = crash
        self.calls = 0
        self.failed = False

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in DISK_CALLS:
            return real

        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at or (self.crash and self.failed):
                self.failed = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)

        return call


def put_real(store, k, data):
    """A temp file written as the download does, committed with its real sha256."""
    path, fd = store.open_temp(k)
    os.write(fd, data)
    os.close(fd)
    return path, store.commit(k, path, len(data), hashlib.sha256(data).hexdigest(), {})


def leaf_files(store, k):
    d = os.path.dirname(store.path_for(k))
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def assert_whole_or_nothing(store, k, contents):
    """The key's directory holds a whole entry whose sidecar describes its image (one of
    `contents`), or nothing at all; recovery then indexes exactly that."""
    before = leaf_files(store, k)
    fresh = CacheStore(store.root)
    fresh.recover()
    files = leaf_files(fresh, k)
    if {"openstack.raw", "openstack.raw.json"} <= set(before):
        assert files, f"recovery removed a whole entry: {before}"
    if not files:
        assert fresh.get(k) is None
        return None
    assert files == ["openstack.raw", "openstack.raw.json"], files
    data = open(fresh.path_for(k), "rb").read()
    side = json.load(open(fresh.path_for(k) + ".json"))
    assert data in contents and side["sha256"] == hashlib.sha256(data).hexdigest() and side["size"] == len(data)
    assert fresh.get(k).sha256 == side["sha256"]
    return data


@pytest.mark.parametrize("crash", [False, True], ids=["error", "crash"])
@pytest.mark.parametrize("replacing", [False, True], ids=["new", "replacing"])
def test_disk_full_at_every_commit_step(tmp_path, monkeypatch, crash, replacing):
    old, new = b"old" * 3000, b"new" * 3000
    step = 0
    outcomes = set()
    while True:
        step += 1
        root = tmp_path / f"step{step}"
        store = CacheStore(str(root), now=FakeTime())
        if replacing:
            put_real(store, key(1), old)
        path, fd = store.open_temp(key(1))
        os.write(fd, new)
        os.close(fd)
        failing = FailingOS(step, crash)
        monkeypatch.setattr(cache_module, "os", failing)
        monkeypatch.setattr(cachefs, "os", failing)
        try:
            store.commit(key(1), path, len(new), hashlib.sha256(new).hexdigest(), {})
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            monkeypatch.undo()
        if not failing.failed:
            assert step > 5, "the commit made fewer disk calls than expected"
            assert store.get(key(1)) is not None and assert_whole_or_nothing(store, key(1), [new]) == new
            break
        if not crash:
            store.discard(path)  # as the failed download does
            # cleaned up at once: nothing of the key left and none indexed, or (failed
            # before it was touched) the entry replaced, still whole and indexed
            files, entry = leaf_files(store, key(1)), store.get(key(1))
            if files:
                assert files == ["openstack.raw", "openstack.raw.json"] and replacing, (step, files)
                assert entry is not None and entry.sha256 == hashlib.sha256(old).hexdigest()
            else:
                assert entry is None and store.entries() == []
        else:
            entry = store.get(key(1))
            assert entry is None or entry.sha256 == hashlib.sha256(old).hexdigest()
        outcomes.add(assert_whole_or_nothing(store, key(1), [old, new]))
    # the crash cases reach every state: (the old entry,) nothing, the new entry
    if crash:
        assert outcomes == ({old, None, new} if replacing else {None, new})


def test_recover_removes_orphans_of_every_kind(tmp_path):
    store = CacheStore(str(tmp_path), now=FakeTime())
    put_real(store, key(1), b"a" * 5000)
    d = os.path.dirname(store.path_for(key(1)))
    planted = {
        "openstack.raw.json.tmp-0123": b"{}",  # a sidecar temp of an interrupted commit
        "metal.raw": b"image without sidecar",
        "nocloud.raw.json": b'{"orphan": true}',  # a sidecar without image
        "notes.txt": b"unexpected",
    }
    for name, data in planted.items():
        open(os.path.join(d, name), "wb").write(data)
    os.mkfifo(os.path.join(d, "aws.raw"))  # a special file must not block recovery
    os.mkdir(os.path.join(d, "gcp.raw"))
    open(os.path.join(tmp_path, "images", "v1.11.2", "stray-file"), "wb").write(b"x")
    fresh = CacheStore(str(tmp_path))
    fresh.recover()
    assert leaf_files(fresh, key(1)) == ["openstack.raw", "openstack.raw.json"]
    assert os.listdir(tmp_path / "images" / "v1.11.2") == ["amd64"]
    assert [e.key for e in fresh.entries()] == [key(1)]


def test_a_forged_sidecar_naming_another_place_is_not_trusted(tmp_path):
    store = CacheStore(str(tmp_path), now=FakeTime())
    e = put_real(store, key(1), b"a" * 5000)[1]
    other = store.path_for(key(2))
    os.makedirs(os.path.dirname(other))
    os.link(e.path, other)  # and a hard link: never an image of ours either
    side = json.load(open(e.path + ".json"))
    open(other + ".json", "w").write(json.dumps(side))  # names key(1)'s place
    fresh = CacheStore(str(tmp_path))
    fresh.recover()
    assert [x.key for x in fresh.entries()] == [] and leaf_files(fresh, key(2)) == []
    # key(1) was itself hard-linked (nlink 2) when recovery looked at it: dropped too
    assert leaf_files(fresh, key(1)) == []


# --- reserve: room before writing --------------------------------------------------------


class Disk:
    """Free space as a test sets it; removing an entry frees its size."""

    def __init__(self, free):
        self.free = free

    def __call__(self, path):
        return self.free


def test_reserve_evicts_lru_to_keep_min_free_space(tmp_path):
    disk = Disk(100_000)
    store = CacheStore(str(tmp_path), min_free=50_000, now=FakeTime(), free_space=disk)
    for n in (1, 2, 3):
        put(store, key(n))
    path, fd = store.open_temp(key(9))
    assert store.reserve(key(9), 40_000) and len(store.entries()) == 3
    evicted = []
    real_remove = store.remove

    def remove(k):
        evicted.append(k)
        disk.free += 10_000
        real_remove(k)

    store.remove = remove
    # 100k free - 60k reserved < 50k: one entry (the oldest) must go
    assert store.reserve(key(9), 60_000)
    assert evicted == [key(1)]
    # the bytes written leave the reservation: the file system's free space counts them
    os.write(fd, b"x" * 60_000)
    disk.free -= 60_000
    assert store.reserve(key(9), 0) and evicted == [key(1)], "50k free, nothing pending: enough"
    store.pin(key(2))
    store.pin(key(3))
    assert not store.reserve(key(9), 20_000), "pinned entries are not evicted: no room"
    assert [e.key for e in store.entries()] == [key(3), key(2)]
    assert store.get(key(2)) is not None, "hits are still served"
    # a refused reservation holds nothing
    assert store.reserve(key(9), 0) and len(store.entries()) == 2
    store.release(key(9))
    os.close(fd)
    store.discard(path)


def test_reserve_before_the_temp_file_and_several_downloads(tmp_path):
    disk = Disk(100_000)
    store = CacheStore(str(tmp_path), min_free=10_000, free_space=disk)
    assert store.reserve(key(1), 50_000)
    assert not store.reserve(key(2), 50_000), "both together leave less than min_free_space"
    path, fd = store.open_temp(key(1))  # the reservation moves to the temp file
    assert not store.reserve(key(2), 50_000)
    store.release(key(1))
    assert store.reserve(key(2), 50_000)
    os.close(fd)
    store.discard(path)


def test_reserve_keeps_max_cache_size_but_not_for_an_image_too_large_to_keep(tmp_path):
    store = CacheStore(str(tmp_path), now=FakeTime())
    for n in (1, 2):
        put(store, key(n), os.urandom(100_000))
    store.max_size = store.total_usage + 50_000
    path, fd = store.open_temp(key(9))
    assert store.reserve(key(9), 80_000) and [e.key for e in store.entries()] == [key(2)]
    assert store.reserve(key(9), 10**9), "too large to be kept: evicting would not help"
    assert [e.key for e in store.entries()] == [key(2)]
    os.close(fd)
    store.discard(path)


# --- on a real small file system ---------------------------------------------------------

MiB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("these tests mount a tmpfs and must run as root (as they do in CI)")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"mount -t tmpfs failed: {done.stderr}"
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_reserve_on_a_small_file_system(tmpfs):
    store = CacheStore(tmpfs, min_free=4 * MiB, now=FakeTime())
    store.check_root()
    for n in (1, 2):
        put_real(store, key(n), os.urandom(4 * MiB))
    assert 7 * MiB < shutil.disk_usage(tmpfs).free < 8 * MiB
    path, fd = store.open_temp(key(3))
    assert store.reserve(key(3), 6 * MiB), "room made by evicting the least recently used"
    assert [e.key for e in store.entries()] == [key(2)]
    os.write(fd, os.urandom(6 * MiB))
    store.pin(key(2))
    assert not store.reserve(key(3), 6 * MiB), "the only entry is in use: no room, refused"
    assert shutil.disk_usage(tmpfs).free >= 4 * MiB - 64 * 1024
    assert store.get(key(2)) is not None
    store.unpin(key(2))
    assert store.reserve(key(3), 3 * MiB) and store.entries() == []
    os.close(fd)
    store.discard(path)


def test_commit_on_a_full_file_system_leaves_nothing_partial(tmpfs):
    store = CacheStore(tmpfs, now=FakeTime())
    data = os.urandom(2 * MiB)
    path, fd = store.open_temp(key(1))
    os.write(fd, data)
    os.close(fd)
    with open(os.path.join(tmpfs, "filler"), "wb", buffering=0) as f:
        with pytest.raises(OSError) as full:
            while True:
                f.write(b"\xff" * 65536)
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as failed:
        store.commit(key(1), path, len(data), hashlib.sha256(data).hexdigest(), {})
    assert failed.value.errno == errno.ENOSPC
    assert leaf_files(store, key(1)) == [] and store.get(key(1)) is None
    store.recover()
    assert leaf_files(store, key(1)) == [] and store.entries() == []
    os.unlink(os.path.join(tmpfs, "filler"))
    assert put_real(store, key(1), data)[1] is not None
    assert open(store.path_for(key(1)), "rb").read() == data
