"""The background scrub: a flipped byte is found and the entry dropped, at the rate asked."""

import hashlib
import os
from dataclasses import replace

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool

from talos_twisted.cache import CacheStore
from talos_twisted.request import ImageKey
from talos_twisted.scrub import CHUNK, Hashing, ScrubService, next_entry, pause_for

KiB = 1024


def key(n):
    return ImageKey("v1.11.2", "amd64", f"{n:064x}", "openstack")


class SetTime:
    def __init__(self, t=1_700_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def commit(store, k, data):
    path, fd = store.open_temp(k)
    os.write(fd, data)
    os.close(fd)
    return store.commit(k, path, len(data), hashlib.sha256(data).hexdigest(), {})


class SyncPool:
    """A thread pool stand-in that runs each job at once; `before` runs ahead of each."""

    def __init__(self):
        self.jobs = 0
        self.before = None

    def callInThreadWithCallback(self, on_result, f, *args):
        self.jobs += 1
        if self.before is not None:
            self.before()
        try:
            result = f(*args)
        except BaseException as e:
            on_result(False, e)
        else:
            on_result(True, result)


def call(f, *args):
    f(*args)


@pytest.fixture
def events():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def run_until(clock, condition, step=0.01, limit=100_000):
    """Advance the clock until `condition()`; fails rather than spinning forever."""
    for _ in range(limit):
        if condition():
            return
        clock.advance(step)
    raise AssertionError("condition not reached")


def scrubber(store, clock, pool=None, rate=1_000_000, **kw):
    return ScrubService(store, rate, clock, pool or SyncPool(), from_thread=call, chunk=64 * KiB, **kw)


# --- the plan -------------------------------------------------------------------------


def test_next_entry_is_the_least_recently_verified_not_done(tmp_path):
    clock = SetTime()
    store = CacheStore(str(tmp_path), now=clock)
    for n, verified in ((1, 30.0), (2, 10.0), (3, 20.0)):
        commit(store, key(n), b"x")
        store._index[key(n)] = replace(store._index[key(n)], verified=verified)
    entries = store.entries()
    assert next_entry(entries, set()).key == key(2)
    assert next_entry(entries, {key(2)}).key == key(3)
    assert next_entry(entries, {key(1), key(2), key(3)}) is None


def test_pause_for_the_rate():
    assert pause_for(1000, 1000.0, started=5.0, now=5.0) == 1.0
    assert pause_for(1000, 1000.0, started=5.0, now=5.4) == pytest.approx(0.6)
    assert pause_for(1000, 1000.0, started=5.0, now=7.0) == 0.0, "slower than the rate: no sleep"
    assert pause_for(0, 1000.0, started=5.0, now=5.0) == 0.0


def test_hashing_a_sparse_file_reads_only_its_data(tmp_path):
    path = tmp_path / "sparse"
    size = 8 * CHUNK + 123
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(3 * CHUNK + 5)
        f.write(b"data" * 1000)
        f.seek(size - 10)
        f.write(b"end")
    content = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    job = Hashing(fd, size)
    hashed = 0
    for _ in range(1000):
        if job.done:
            break
        hashed += job.step(CHUNK)
    os.close(fd)
    assert job.hexdigest() == hashlib.sha256(content).hexdigest()
    assert 4003 <= job.read < size, "the holes were not read"
    assert hashed == size, "every byte was hashed, holes included"


# --- the service ----------------------------------------------------------------------


def test_a_flipped_byte_is_found_and_the_entry_removed(tmp_path, events):
    clock = Clock()
    store = CacheStore(str(tmp_path))
    datas = {n: os.urandom(100 * KiB) for n in (1, 2, 3)}
    for n, data in datas.items():
        commit(store, key(n), data)
    victim = store.get(key(2))
    with open(victim.path, "r+b") as f:  # in place: same file, same size, one bit
        f.seek(54321)
        byte = f.read(1)
        f.seek(54321)
        f.write(bytes([byte[0] ^ 0x01]))
    scrub = scrubber(store, clock)
    scrub.startService()
    run_until(clock, lambda: scrub.scrub_passes >= 1)
    assert scrub.scrub_mismatches == 1
    # the pass read every byte once; the next one has started with its first chunk
    assert 300 * KiB <= scrub.scrubbed_bytes <= 364 * KiB
    assert store.get(key(2)) is None and not os.path.exists(victim.path)
    assert not os.path.exists(victim.path + ".json")
    assert {e.key for e in store.entries()} == {key(1), key(3)}
    [error] = [e for e in events if e.get("log_level") and e["log_level"].name == "error"]
    assert error["key"] == str(key(2)) and error["path"] == victim.path
    assert error["expected"] == victim.sha256 and error["found"] != victim.sha256
    scrub.stopService()
    assert clock.getDelayedCalls() == []


def test_the_rate_is_kept_and_passes_follow_each_other(tmp_path):
    clock = Clock()
    store = CacheStore(str(tmp_path))
    for n in (1, 2):
        commit(store, key(n), os.urandom(256 * KiB))
    pool = SyncPool()
    scrub = scrubber(store, clock, pool, rate=128 * KiB)  # 512 KiB at 128 KiB/s: 4 s a pass
    scrub.startService()
    run_until(clock, lambda: scrub.scrub_passes >= 1)
    assert 4.0 <= clock.seconds() <= 4.1
    run_until(clock, lambda: scrub.scrub_passes >= 2)
    assert 8.0 <= clock.seconds() <= 8.2, "the next pass starts when one ends"
    # two passes of 8 chunks each, and the first chunk of the third
    assert scrub.scrubbed_bytes == (2 * 8 + 1) * 64 * KiB and scrub.scrub_mismatches == 0
    assert pool.jobs == 2 * 8 + 1
    scrub.stopService()


def test_holes_count_towards_the_rate(tmp_path):
    # an idle daemon whose cache holds sparse images must not hash zeros at full speed
    clock = Clock()
    store = CacheStore(str(tmp_path))
    commit(store, key(1), b"x" * (64 * KiB) + bytes(4 * 1024 * KiB))  # 4 MiB of zeros at the end
    entry = store.get(key(1))
    with open(entry.path, "r+b") as f:  # make the zeros a hole, as the writer does
        f.truncate(64 * KiB)
        f.truncate(entry.size)
    pool = SyncPool()
    scrub = scrubber(store, clock, pool, rate=1024 * KiB)  # 4.0625 MiB at 1 MiB/s: about 4 s a pass
    scrub.startService()
    run_until(clock, lambda: scrub.scrub_passes >= 1)
    assert 4.0 <= clock.seconds() <= 4.2 and scrub.scrub_mismatches == 0
    scrub.stopService()


def test_rate_0_is_off(tmp_path):
    clock = Clock()
    store = CacheStore(str(tmp_path))
    commit(store, key(1), b"x" * 1000)
    pool = SyncPool()
    scrub = scrubber(store, clock, pool, rate=0)
    scrub.startService()
    clock.advance(3600)
    assert pool.jobs == 0 and clock.getDelayedCalls() == [] and scrub.scrubbed_bytes == 0
    assert scrub.stopService() is None


def test_an_empty_cache_is_looked_at_again_later(tmp_path):
    clock = Clock()
    store = CacheStore(str(tmp_path))
    scrub = scrubber(store, clock, idle=60.0)
    scrub.startService()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [60.0]
    commit(store, key(1), os.urandom(64 * KiB))
    run_until(clock, lambda: scrub.scrub_passes >= 1, step=1.0)
    assert 60.0 <= clock.seconds() <= 62.0 and scrub.scrub_passes == 1
    scrub.stopService()


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_an_entry_removed_or_replaced_while_hashed_is_skipped(tmp_path, events, how):
    clock = Clock()
    store = CacheStore(str(tmp_path))
    commit(store, key(1), os.urandom(256 * KiB))
    pool = SyncPool()
    new = os.urandom(256 * KiB)

    def meddle():
        if pool.jobs == 2:  # after the first chunk was hashed
            if how == "removed":
                store.remove(key(1))
            else:
                commit(store, key(1), new)

    pool.before = meddle
    scrub = scrubber(store, clock, pool)
    scrub.startService()
    run_until(clock, lambda: scrub.scrub_passes >= 1)
    assert scrub.scrub_mismatches == 0 and pool.jobs >= 4
    assert any("skipped" in e.get("log_format", "") for e in events)
    if how == "replaced":
        entry = store.get(key(1))
        assert entry is not None and open(entry.path, "rb").read() == new, "the new entry is kept"
    else:
        assert store.entries() == []
    scrub.stopService()


def test_a_pinned_entry_is_scrubbed_and_its_verification_is_kept(tmp_path):
    clock = Clock()
    now = SetTime()
    store = CacheStore(str(tmp_path), now=now)
    entry = commit(store, key(1), os.urandom(64 * KiB))
    commit(store, key(2), os.urandom(64 * KiB))
    store.pin(key(1))  # being served
    now.t += 3600
    scrub = scrubber(store, clock)
    scrub.startService()
    run_until(clock, lambda: scrub.scrub_passes >= 1)
    scrub.stopService()
    assert store.peek(key(1)).verified == now.t and scrub.scrub_mismatches == 0
    # written to the sidecar (it moved by more than a minute): the order survives a restart
    fresh = CacheStore(str(tmp_path), now=now)
    fresh.recover()
    assert fresh.peek(key(1)).verified == now.t and fresh.peek(key(1)).sha256 == entry.sha256
    now.t += 3600
    fresh._index[key(2)] = replace(fresh._index[key(2)], verified=5.0)
    assert next_entry(fresh.entries(), set()).key == key(2)


def test_stopping_while_sleeping_closes_everything(tmp_path):
    clock = Clock()
    store = CacheStore(str(tmp_path))
    commit(store, key(1), os.urandom(512 * KiB))
    fds = len(os.listdir("/proc/self/fd"))
    scrub = scrubber(store, clock, rate=64 * KiB)
    scrub.startService()
    clock.advance(1.0)  # in the middle of the file
    assert len(os.listdir("/proc/self/fd")) == fds + 1
    d = scrub.stopService()
    fired = []
    d.addCallback(fired.append)
    assert fired == [None] and clock.getDelayedCalls() == []
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest_twisted.ensureDeferred
async def test_with_a_real_thread_pool(tmp_path):
    store = CacheStore(str(tmp_path))
    for n in (1, 2):
        commit(store, key(n), os.urandom(512 * KiB))
    bad = store.get(key(1))
    with open(bad.path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    pool = ThreadPool(minthreads=1, maxthreads=1, name="scrub-test")
    pool.start()
    scrub = ScrubService(store, 100_000_000, reactor, pool)
    try:
        scrub.startService()
        await scrub.passed.when()  # bounded by the test's timeout
        assert scrub.scrub_mismatches == 1 and [e.key for e in store.entries()] == [key(2)]
    finally:
        await scrub.stopService()
        pool.stop()
