import json
import os

import pytest

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
