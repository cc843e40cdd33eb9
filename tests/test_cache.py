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
