"""/readyz: a reason per check; 503 with an unwritable cache, a full disk, or a factory that
cannot be reached while nothing is cached."""

import json
import os
import subprocess

import pytest
import pytest_twisted

from .conftest import MiB, listen
from .rawhttp import exchange

PATH = "/images/talos/v1.11.2/amd64/openstack.raw"


async def ready(stack):
    status, _, body = await exchange(stack.url, "/readyz")
    return status, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_ready_with_a_reachable_factory(stack):
    await exchange(stack.url, "/images/talos/versions")
    status, doc = await ready(stack)
    assert status == 200 and doc["ready"] is True
    assert set(doc["checks"]) == {"cache_writable", "free_space", "factory_or_cache"}
    assert doc["checks"]["factory_or_cache"]["factory_reachable"] is True


async def closed_url():
    from talos_twisted.testing.fakefactory import FakeFactory

    port = await listen(FakeFactory().resource())
    url = f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()  # nothing listens there any more
    return url


@pytest_twisted.ensureDeferred
async def test_not_ready_when_the_factory_is_down_and_nothing_is_cached_ready_once_something_is(stack):
    await exchange(stack.url, PATH)  # one image in the cache of the first daemon
    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url(), cache_directory=str(stack.tmp_path / "empty"))
    status, doc = await ready(stack)
    assert status == 503 and doc["ready"] is False
    check = doc["checks"]["factory_or_cache"]
    assert check["ok"] is False and "nothing is cached" in check["reason"]
    # once the probe it started has failed, the reason says why
    await stack.app.factory.probe
    status, doc = await ready(stack)
    assert "unreachable" in doc["checks"]["factory_or_cache"]["reason"]
    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url())  # the first cache, with its image
    status, doc = await ready(stack)
    assert status == 200 and "1 images are cached" in doc["checks"]["factory_or_cache"]["reason"]


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MiB tmpfs, mounted by the test (root, as in CI)."""
    assert os.geteuid() == 0, "this test mounts a tmpfs: run it as root (CI does)"
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0750", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest_twisted.ensureDeferred
async def test_not_ready_on_a_full_disk_or_a_read_only_cache(stack, small_fs):
    await stack.stop_daemon()
    cache = small_fs / "cache"
    await stack.start_daemon(cache_directory=str(cache))
    await exchange(stack.url, "/images/talos/versions")
    status, doc = await ready(stack)
    assert status == 200, doc
    filler = small_fs / "filler"
    filler.write_bytes(os.urandom(12 * MiB))  # leaves less than the 16 MiB floor
    status, doc = await ready(stack)
    assert status == 503 and doc["checks"]["free_space"]["ok"] is False
    filler.unlink()
    status, doc = await ready(stack)
    assert status == 200
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        status, doc = await ready(stack)
        assert status == 503 and doc["checks"]["cache_writable"]["ok"] is False
        assert "Read-only" in doc["checks"]["cache_writable"]["reason"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    await stack.stop_daemon()
    await stack.start_daemon()  # off the tmpfs before it is unmounted
