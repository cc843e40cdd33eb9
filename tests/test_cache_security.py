"""The cache on an open provisioning network: no symlink followed, modes whatever the umask,
a root others could write to refused."""

import errno
import hashlib
import json
import os
import pathlib
import shutil
import stat
import tempfile

import pytest
from twisted.logger import globalLogPublisher

from talos_twisted import cachefs
from talos_twisted.cache import CacheRootError, CacheStore
from talos_twisted.metastore import MetadataStore
from talos_twisted.request import ImageKey

KEY = ImageKey("v1.11.2", "amd64", "ab" * 32, "openstack")
SECRET = b"root:x:0:0:root:/root:/bin/bash\n" * 100
NOBODY = 65534


def commit(store, key=KEY, data=b"image" * 2000):
    path, fd = store.open_temp(key)
    os.write(fd, data)
    os.close(fd)
    return store.commit(key, path, len(data), hashlib.sha256(data).hexdigest(), {})


def forged_sidecar(key, size):
    k = {"version": key.version, "arch": key.arch, "schematic": key.schematic, "platform": key.platform}
    return json.dumps({"key": k, "size": size, "sha256": "c" * 64, "created": 1.0, "info": {}})


@pytest.fixture
def warnings():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def outside(tmp_path):
    """A place outside the cache holding a secret, and a whole forged cache layout."""
    base = tmp_path / "outside"
    leaf = base / "images" / KEY.version / KEY.arch / KEY.schematic
    leaf.mkdir(parents=True)
    (base / "secret").write_bytes(SECRET)
    (leaf / "openstack.raw").write_bytes(SECRET)
    (leaf / "openstack.raw.json").write_text(forged_sidecar(KEY, len(SECRET)))
    return base


# the layout's levels, from the images directory to the sidecar
LEVELS = ["images", "version", "arch", "schematic", "image", "sidecar"]


def level_path(root, level):
    parts = ["images", KEY.version, KEY.arch, KEY.schematic]
    if level in ("image", "sidecar"):
        return os.path.join(root, *parts, "openstack.raw" + (".json" if level == "sidecar" else ""))
    return os.path.join(root, *parts[: LEVELS.index(level) + 1])


def level_target(outside, level):
    if level == "image":
        return str(outside / "secret")
    if level == "sidecar":
        return str(outside / "images" / KEY.version / KEY.arch / KEY.schematic / "openstack.raw.json")
    return level_path(str(outside), level)


def outside_untouched(outside):
    assert (outside / "secret").read_bytes() == SECRET
    leaf = outside / "images" / KEY.version / KEY.arch / KEY.schematic
    assert sorted(os.listdir(leaf)) == ["openstack.raw", "openstack.raw.json"]


@pytest.mark.parametrize("level", LEVELS)
def test_symlinks_planted_before_recovery_are_removed_and_never_served(tmp_path, outside, warnings, level):
    root = tmp_path / "cache"
    root.mkdir()
    link = level_path(str(root), level)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if level == "sidecar":  # a real image, its sidecar a symlink to a forged one
        open(link[: -len(".json")], "wb").write(SECRET)
    elif level == "image":  # the image a symlink to a secret, with a forged sidecar
        open(link + ".json", "w").write(forged_sidecar(KEY, len(SECRET)))
    os.symlink(level_target(outside, level), link)
    store = CacheStore(str(root))
    store.recover()
    assert store.entries() == [] and store.get(KEY) is None
    assert not os.path.islink(link), "the symlink is removed"
    assert any(
        e.get("log_level").name == "warn" and e.get("path") == link and "symlink" in e.get("log_format", "")
        for e in warnings
    ), "a warning names the symlink"
    outside_untouched(outside)
    # and the next download lands inside the cache
    entry = commit(store)
    assert os.path.realpath(entry.path) == entry.path and entry.path.startswith(str(root))
    outside_untouched(outside)


@pytest.mark.parametrize("level", ["images", "version", "arch", "schematic"])
def test_a_directory_symlink_planted_after_recovery_is_neither_served_nor_written_through(tmp_path, outside, level):
    root = tmp_path / "cache"
    store = CacheStore(str(root))
    store.recover()
    entry = commit(store)
    # the real directory moved out of the cache, and a symlink to it in its place: every
    # byte is reachable as before, but only through the symlink
    real = level_path(str(root), level)
    moved = tmp_path / "moved"
    os.rename(real, moved)
    os.symlink(moved, real)
    with pytest.raises(OSError) as e:
        store.open_entry(entry)
    assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert store.get(KEY) is None and store.entries() == [], "the entry is dropped"
    before = sorted(str(p) for p in moved.rglob("*"))
    with pytest.raises(OSError):
        store.open_temp(KEY)
    temp = store.temp_path  # the old API refuses too
    with pytest.raises(OSError):
        temp(KEY)
    with pytest.raises(OSError):
        commit(store)
    assert sorted(str(p) for p in moved.rglob("*")) == before, "nothing written outside the cache"
    store.recover()
    assert not os.path.lexists(real) or not os.path.islink(real)
    assert commit(store).path.startswith(str(root))


def test_an_image_symlink_planted_after_recovery_is_not_served_and_is_replaced_not_followed(tmp_path, outside):
    root = tmp_path / "cache"
    store = CacheStore(str(root))
    data = b"x" * len(SECRET)
    entry = commit(store, data=data)
    os.unlink(entry.path)
    os.symlink(outside / "secret", entry.path)
    with pytest.raises(OSError) as e:
        store.open_entry(entry)
    assert e.value.errno == errno.ELOOP
    assert store.get(KEY) is None
    # a new download renames over the symlink itself
    again = commit(store, data=data)
    assert not os.path.islink(again.path) and open(again.path, "rb").read() == data
    fd = store.open_entry(again)
    assert os.pread(fd, 10, 0) == data[:10]
    os.close(fd)
    outside_untouched(outside)


def test_a_sidecar_symlink_planted_after_recovery_is_replaced_not_written_through(tmp_path, outside):
    now = [1_700_000_000.0]
    store = CacheStore(str(tmp_path / "cache"), now=lambda: now[0])
    entry = commit(store)
    forged = outside / "images" / KEY.version / KEY.arch / KEY.schematic / "openstack.raw.json"
    before = forged.read_bytes()
    os.unlink(entry.path + ".json")
    os.symlink(forged, entry.path + ".json")
    now[0] += 120
    assert store.get(KEY) is not None  # the last access is written: over the link, not through it
    assert not os.path.islink(entry.path + ".json") and forged.read_bytes() == before
    assert json.load(open(entry.path + ".json"))["sha256"] == entry.sha256


def test_a_replaced_or_special_file_is_not_served(tmp_path):
    store = CacheStore(str(tmp_path))
    entry = commit(store)
    os.unlink(entry.path)
    os.mkfifo(entry.path)  # opening a FIFO would block the reactor
    with pytest.raises(OSError):
        store.open_entry(entry)
    assert store.get(KEY) is None and not os.path.exists(entry.path), "dropped, and removed"
    entry = commit(store)
    other = tmp_path / "other"
    other.write_bytes(b"y" * entry.size)
    os.replace(other, entry.path)  # same size, another file
    with pytest.raises(OSError) as e:
        store.open_entry(entry)
    assert e.value.errno == errno.ESTALE and store.get(KEY) is None


def test_open_temp_is_exclusive_and_does_not_follow(tmp_path, monkeypatch):
    store = CacheStore(str(tmp_path))
    path, fd = store.open_temp(KEY)
    flags = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
    assert flags & os.O_ACCMODE == os.O_RDWR and flags & os.O_CLOEXEC
    os.close(fd)
    store.discard(path)
    # a name taken (a symlink planted on a predicted name) is refused, not followed
    monkeypatch.setattr(cachefs, "temp_name", lambda name: name + ".tmp-fixed")
    os.symlink(tmp_path / "target", os.path.dirname(path) + "/openstack.raw.tmp-fixed")
    with pytest.raises(FileExistsError):
        store.open_temp(KEY)
    assert not (tmp_path / "target").exists()


def test_discard_and_commit_take_only_temporary_files_of_the_cache(tmp_path, outside):
    store = CacheStore(str(tmp_path))
    entry = commit(store)
    store.discard(str(outside / "secret"))
    store.discard(entry.path)  # not a temporary file
    assert (outside / "secret").exists() and os.path.exists(entry.path)
    with pytest.raises(OSError):
        store.commit(KEY, str(outside / "secret"), len(SECRET), "a" * 64, {})
    assert (outside / "secret").exists()


# --- modes whatever the umask ---------------------------------------------------------


@pytest.fixture
def open_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_modes_of_everything_created_under_umask_0(tmp_path, open_umask):
    root = tmp_path / "new" / "cache"
    store = CacheStore(str(root))
    store.check_root()
    assert mode(root) == 0o750, "a missing root is made 0750"
    store.recover()
    path, fd = store.open_temp(KEY)
    assert mode(path) == 0o640
    os.close(fd)
    store.discard(path)
    entry = commit(store)
    for d in (root / "images", *[level_path(str(root), lv) for lv in ("version", "arch", "schematic")]):
        assert mode(d) == 0o750, d
    assert mode(entry.path) == 0o640 and mode(entry.path + ".json") == 0o640
    # a temp made the old way (temp_path, then opened 0644 by the caller) is 0640 once committed
    tmp = store.temp_path(KEY)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    assert mode(tmp) == 0o666
    store.commit(KEY, tmp, 0, hashlib.sha256(b"").hexdigest(), {})
    assert mode(entry.path) == 0o640
    meta = MetadataStore(str(root / "meta"))
    meta.save("versions", ["v1.11.2"])
    assert mode(root / "meta") == 0o750 and mode(root / "meta" / "versions.json") == 0o640
    assert meta.load("versions") == ["v1.11.2"]


def test_recovery_tightens_modes_left_by_a_umask(tmp_path, open_umask):
    store = CacheStore(str(tmp_path))
    entry = commit(store)
    for d in (tmp_path / "images", os.path.dirname(entry.path)):
        os.chmod(d, 0o777)
    os.chmod(entry.path, 0o666)
    os.chmod(entry.path + ".json", 0o666)
    fresh = CacheStore(str(tmp_path))
    fresh.recover()
    assert mode(tmp_path / "images") == 0o750 and mode(os.path.dirname(entry.path)) == 0o750
    assert mode(entry.path) == 0o640 and mode(entry.path + ".json") == 0o640
    assert fresh.get(KEY) is not None


def test_metadata_is_neither_read_nor_written_through_symlinks(tmp_path, outside):
    meta = tmp_path / "meta"
    meta.mkdir()
    (outside / "versions.json").write_text(json.dumps({"value": ["forged"]}))
    os.symlink(outside / "versions.json", meta / "versions.json")
    store = MetadataStore(str(meta))
    assert store.load("versions") is None
    store.save("versions", ["v1.11.2"])
    assert store.load("versions") == ["v1.11.2"] and not os.path.islink(meta / "versions.json")
    assert json.loads((outside / "versions.json").read_text()) == {"value": ["forged"]}
    os.unlink(meta / "versions.json")
    os.rmdir(meta)
    os.symlink(outside, meta)  # the directory itself
    assert store.load("versions") is None
    store.save("versions", ["v1.11.3"])
    assert sorted(os.listdir(outside)) == ["images", "secret", "versions.json"]
    assert json.loads((outside / "versions.json").read_text()) == {"value": ["forged"]}


# --- the cache root -------------------------------------------------------------------


@pytest.mark.parametrize(
    "chmod, problem",
    [
        (0o777, "is writable by others (mode 0777); chmod o-w"),
        (0o757, "is writable by others (mode 0757); chmod o-w"),
        (0o770, "is writable by its group (mode 0770); chmod g-w"),
    ],
)
def test_check_root_refuses_a_root_others_can_write_to(tmp_path, chmod, problem):
    root = tmp_path / "cache"
    root.mkdir()
    os.chmod(root, chmod)
    with pytest.raises(CacheRootError) as e:
        CacheStore(str(root)).check_root()
    assert str(e.value) == f"cache directory {root} {problem} {root}"
    assert "\n" not in str(e.value)


def test_check_root_refuses_a_root_owned_by_another_user(tmp_path):
    assert os.geteuid() == 0, "this test chowns a directory to another user: it runs as root (as in CI)"
    root = tmp_path / "cache"
    root.mkdir(mode=0o750)
    os.chown(root, NOBODY, -1)
    with pytest.raises(CacheRootError) as e:
        CacheStore(str(root)).check_root()
    assert str(e.value) == f"cache directory {root} is owned by uid {NOBODY}, not by uid 0 the daemon runs as; chown 0 {root}"


def test_check_root_refuses_unsafe_subdirectories(tmp_path, outside):
    root = tmp_path / "cache"
    root.mkdir(mode=0o750)
    (root / "images").mkdir(mode=0o750)
    os.chmod(root / "images", 0o777)
    with pytest.raises(CacheRootError, match=r"images is writable by others \(mode 0777\)"):
        CacheStore(str(root)).check_root()
    os.rmdir(root / "images")
    os.symlink(outside, root / "meta")
    with pytest.raises(CacheRootError, match=r"meta is a symlink; remove it"):
        CacheStore(str(root)).check_root()
    os.unlink(root / "meta")
    (root / "file").write_text("")
    with pytest.raises(CacheRootError, match="is not a directory"):
        CacheStore(str(root / "file")).check_root()
    os.chmod(root, 0o755)  # readable by others is fine
    CacheStore(str(root)).check_root()


def test_root_problem_from_stat_results():
    def st(mode, uid):
        return os.stat_result((stat.S_IFDIR | mode, 1, 1, 2, uid, 0, 4096, 0, 0, 0))

    assert cachefs.root_problem("/c", st(0o750, 1000), 1000) is None
    assert cachefs.root_problem("/c", st(0o700, 1000), 1000) is None
    assert "owned by uid 0, not by uid 1000" in cachefs.root_problem("/c", st(0o750, 0), 1000)
    assert "writable by others (mode 0702)" in cachefs.root_problem("/c", st(0o702, 1000), 1000)
    assert "writable by its group (mode 1770)" in cachefs.root_problem("/c", st(0o1770, 1000), 1000)
    regular = os.stat_result((stat.S_IFREG | 0o640, 1, 1, 1, 1000, 0, 0, 0, 0, 0))
    assert "not a directory" in cachefs.root_problem("/c", regular, 1000)


@pytest.fixture
def shared():
    """A directory every user can reach (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="talos-cache-test-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path)


def test_check_root_as_an_unprivileged_daemon(shared):
    """As root every permission check passes; the daemon's own view is run as nobody."""
    base = shared
    mine = base / "mine"
    mine.mkdir(mode=0o750)
    os.chown(mine, NOBODY, -1)
    theirs = base / "theirs"
    theirs.mkdir(mode=0o755)
    # a forked child (the interpreter's files may be unreadable by nobody) drops to nobody
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            lines = []
            for root in (mine, theirs, mine / "new"):
                try:
                    CacheStore(str(root)).check_root()
                    lines.append("ok")
                except CacheRootError as e:
                    lines.append(str(e))
            os.write(write, "\n".join(lines).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    assert out.splitlines() == [
        "ok",
        f"cache directory {theirs} is owned by uid 0, not by uid {NOBODY} the daemon runs as; chown {NOBODY} {theirs}",
        "ok",
    ]
    assert mode(mine / "new") == 0o750 and os.stat(mine / "new").st_uid == NOBODY
