"""Prefetch (talos.prefetch): configured images are fetched at start-up and when `latest` moves."""

import json

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from talos_twisted.config import Config, PrefetchImage, TalosConfig
from talos_twisted.prefetch import (
    CACHED, DOWNLOADING, FAILED, MIN_INTERVAL, ROUND_SLACK, STARTED, PrefetchService, describe,
)
from talos_twisted.schematic import Overlay, Schematic
from talos_twisted.tap import build

QGA = Schematic(extensions=("siderolabs/qemu-guest-agent",))
RPI = Schematic(overlay=Overlay("rpi_generic", "siderolabs/sbc-raspberrypi"))
QGA_LATEST = PrefetchImage(extensions=("qemu-guest-agent",))
RPI_METAL = PrefetchImage(version="v1.11.2", arch="arm64", platform="metal", overlay="rpi_generic")


def header(resp, name):
    values = resp.headers.getRawHeaders(name)
    return values[0] if values else None


@pytest.fixture
def log_events():
    """Every log event from now on (list this fixture before `stack` to see start-up)."""
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def prefetch_service(stack) -> PrefetchService:
    return stack.service.getServiceNamed("prefetch")


async def settle(stack):
    """Wait for the running prefetch round, then for the downloads it started."""
    await prefetch_service(stack).idle()
    await stack.app.downloads.quiesce()


async def cache_listing(stack):
    resp, body = await stack.get(f"{stack.url}/images/talos/cache")
    assert resp.code == 200
    return json.loads(body)["entries"]


@pytest.mark.stack(prefetch=(QGA_LATEST, RPI_METAL))
@pytest_twisted.ensureDeferred
async def test_prefetch_at_startup_fills_the_cache_and_a_request_is_a_hit(stack):
    await settle(stack)
    assert stack.fake.counts["image_get"] == 2
    entries = await cache_listing(stack)
    assert {(e["version"], e["arch"], e["platform"], e["schematic"]) for e in entries} == {
        ("v1.11.2", "amd64", "openstack", QGA.id),
        ("v1.11.2", "arm64", "metal", RPI.id),
    }
    assert [o.status for o in prefetch_service(stack).prefetcher.last_round] == [STARTED, STARTED]

    resp, body = await stack.get(stack.image_url(version="latest", query="?extensions=qemu-guest-agent"))
    assert resp.code == 200 and header(resp, "X-Talos-Cache") == "HIT"
    assert body == stack.expected(QGA.id)
    resp, body = await stack.get(stack.image_url(arch="arm64", platform="metal", query="?overlay=rpi-generic"))
    assert header(resp, "X-Talos-Cache") == "HIT" and body == stack.expected(RPI.id, platform="metal", arch="arm64")
    assert stack.fake.counts["image_get"] == 2


@pytest.mark.stack(prefetch=(QGA_LATEST, RPI_METAL))
@pytest_twisted.ensureDeferred
async def test_a_round_over_cached_images_costs_no_download_and_no_access(stack):
    await settle(stack)
    before = dict(stack.fake.counts)
    access = {e["schematic"]: e["last_access"] for e in await cache_listing(stack)}
    outcomes = await stack.service.getServiceNamed("prefetch").prefetcher.run_round()
    assert [o.status for o in outcomes] == [CACHED, CACHED]
    await stack.app.downloads.quiesce()
    # metadata is fresh (metadata_ttl): not even a metadata call
    assert dict(stack.fake.counts) == before
    # a prefetch round is not a client's access: LRU order stays the clients'
    assert {e["schematic"]: e["last_access"] for e in await cache_listing(stack)} == access


@pytest.mark.stack(prefetch=(PrefetchImage(),), metadata_ttl=0)
@pytest_twisted.ensureDeferred
async def test_when_latest_moves_a_round_fetches_the_new_latest(stack):
    await settle(stack)
    empty = Schematic().id
    assert stack.fake.counts["image_get"] == 1
    svc = prefetch_service(stack)
    await svc.run_now()
    assert [o.status for o in svc.prefetcher.last_round] == [CACHED]
    assert stack.fake.counts["image_get"] == 1

    # a pre-release does not move `latest`; a newer stable release does
    stack.fake.versions = stack.fake.versions + ["v1.12.0-rc.1", "v1.11.3"]
    await svc.run_now()
    [outcome] = svc.prefetcher.last_round
    assert outcome.status == STARTED and outcome.key.version == "v1.11.3"
    await stack.app.downloads.quiesce()
    assert stack.fake.counts["image_get"] == 2
    assert {e["version"] for e in await cache_listing(stack)} == {"v1.11.2", "v1.11.3"}

    resp, body = await stack.get(stack.image_url(version="latest"))
    assert header(resp, "X-Talos-Cache") == "HIT" and header(resp, "X-Talos-Version") == "v1.11.3"
    assert body == stack.expected(empty, version="v1.11.3")
    await svc.run_now()
    assert [o.status for o in svc.prefetcher.last_round] == [CACHED]
    assert stack.fake.counts["image_get"] == 2


@pytest.mark.stack(prefetch=(PrefetchImage(extensions=("no-such-ext",)), QGA_LATEST))
@pytest_twisted.ensureDeferred
async def test_an_unknown_extension_is_logged_and_the_other_image_is_fetched(log_events, stack):
    await settle(stack)
    bad, good = prefetch_service(stack).prefetcher.last_round
    assert bad.status == FAILED and "unknown extension 'no-such-ext'" in bad.error
    assert good.status == STARTED and good.key.schematic == QGA.id
    warnings = [e for e in log_events if e.get("log_format", "").startswith("prefetch of {item} failed")]
    assert len(warnings) == 1 and warnings[0]["log_level"].name == "warn"
    assert warnings[0]["item"] == "latest/amd64/openstack.raw?extensions=no-such-ext"
    assert "no-such-ext" in warnings[0]["error"]
    resp, body = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent"))
    assert header(resp, "X-Talos-Cache") == "HIT" and body == stack.expected(QGA.id)


@pytest_twisted.ensureDeferred
async def test_a_factory_outage_fails_the_round_and_the_next_one_fetches(stack):
    await stack.stop_daemon()
    stack.fake.fail_next(3, 503, route="versions")  # every attempt of the first round
    await stack.start_daemon(prefetch=(QGA_LATEST,))
    await settle(stack)
    svc = prefetch_service(stack)
    [outcome] = svc.prefetcher.last_round
    assert outcome.status == FAILED and "503" in outcome.error
    assert stack.fake.counts["image_get"] == 0
    resp, _ = await stack.get(stack.url + "/healthz")
    assert resp.code == 200

    await svc.run_now()
    [outcome] = svc.prefetcher.last_round
    assert outcome.status == STARTED
    await stack.app.downloads.quiesce()
    resp, body = await stack.get(stack.image_url(query="?extensions=qemu-guest-agent"))
    assert header(resp, "X-Talos-Cache") == "HIT" and body == stack.expected(QGA.id)


@pytest.mark.stack(prefetch=(QGA_LATEST,))
@pytest_twisted.ensureDeferred
async def test_an_image_downloading_is_joined_not_started_again(stack):
    svc = prefetch_service(stack)
    await svc.idle()
    # resumed in the same turn as the round's end: its download cannot have finished yet
    [download] = stack.app.downloads.active()
    assert not download.ended.fired
    outcomes = await svc.prefetcher.run_round()  # metadata is fresh: runs without waiting
    assert [o.status for o in outcomes] == [DOWNLOADING]
    await stack.app.downloads.quiesce()
    assert stack.fake.counts["image_get"] == 1


# --- the service's loop, on a fake clock ---------------------------------------------


class ScriptedPrefetcher:
    """Stands in for Prefetcher: each round runs the next step of a script."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.calls = 0
        self.stopped = False

    async def run_round(self):
        self.calls += 1
        step = self.steps.pop(0) if self.steps else "ok"
        if step == "fail":
            raise RuntimeError("round exploded")
        if isinstance(step, Deferred):
            await step
        return []


def test_rounds_run_at_start_then_every_interval_and_survive_a_failure(observe_errors):
    clock = Clock()
    prefetcher = ScriptedPrefetcher(["ok", "fail", "ok"])
    svc = PrefetchService(prefetcher, 100.0, clock)
    svc.startService()
    assert prefetcher.calls == 1 and svc.rounds == 1
    clock.advance(99)
    assert prefetcher.calls == 1
    clock.advance(1)
    assert prefetcher.calls == 2 and svc.rounds == 2
    # the failure was logged (taken out of the unexpected-errors list) and the loop goes on
    assert [e["log_format"] for e in observe_errors] == ["prefetch round failed; the next one runs in {interval:g}s"]
    observe_errors.clear()
    clock.advance(100)
    assert prefetcher.calls == 3
    svc.stopService()
    clock.advance(1000)
    assert prefetcher.calls == 3 and not clock.getDelayedCalls()


def test_a_slow_round_delays_the_next_and_stopping_cancels_it():
    clock = Clock()
    slow = Deferred()
    prefetcher = ScriptedPrefetcher([slow])
    svc = PrefetchService(prefetcher, 100.0, clock)
    svc.startService()
    clock.advance(250)
    assert prefetcher.calls == 1, "no second round while the first is still running"
    waiting = svc.idle()
    assert not waiting.called
    svc.stopService()
    assert prefetcher.stopped and waiting.called and slow.called  # cancelled, quietly
    assert svc.rounds == 1 and not clock.getDelayedCalls()


def test_interval_follows_metadata_ttl_with_a_floor():
    assert PrefetchService.interval_for(900) == 900 + ROUND_SLACK
    assert PrefetchService.interval_for(0) == MIN_INTERVAL + ROUND_SLACK


def test_describe_names_the_item_as_a_url():
    assert describe(PrefetchImage()) == "latest/amd64/openstack.raw"
    assert describe(RPI_METAL) == "v1.11.2/arm64/metal.raw?overlay=rpi_generic"
    assert describe(PrefetchImage(extensions=("a", "b"))) == "latest/amd64/openstack.raw?extensions=a,b"


@pytest.mark.parametrize("talos,present", [
    ({}, True),  # even with an empty list: a reload (SIGHUP) may fill it
    ({"prefetch": (QGA_LATEST,)}, True),
    ({"prefetch": (QGA_LATEST,), "enabled": False}, False),
])
def test_build_adds_the_prefetch_service_when_serving(tmp_path, talos, present):
    from twisted.internet import reactor

    top, _app = build(Config(talos=TalosConfig(cache_directory=str(tmp_path), **talos)), reactor)
    names = {s.name for s in top}
    assert ("prefetch" in names) == present


def test_rounds_never_overlap():
    clock = Clock()
    slow = Deferred()
    prefetcher = ScriptedPrefetcher(["ok", slow])
    svc = PrefetchService(prefetcher, 100.0, clock)
    svc.startService()
    running = svc.run_now()  # the second round waits on `slow`
    assert prefetcher.calls == 2 and not running.called
    clock.advance(100)  # the loop's turn comes while it runs: skipped, not doubled
    again = svc.run_now()
    assert prefetcher.calls == 2
    slow.callback(None)
    assert running.called and again.called and svc.rounds == 2
    clock.advance(100)
    assert prefetcher.calls == 3
    svc.stopService()


PXE_ASSETS = PrefetchImage(version="v1.11.2", platform="metal", extensions=("qemu-guest-agent",),
                           assets=("kernel", "initramfs", "cmdline"))


@pytest.mark.stack(prefetch=(PXE_ASSETS,), image_size=1024 * 1024)
@pytest_twisted.ensureDeferred
async def test_prefetch_of_pxe_assets_makes_a_netboot_a_hit(stack):
    await settle(stack)
    assert [o.status for o in prefetch_service(stack).prefetcher.last_round] == [STARTED] * 3
    assert stack.fake.counts["image_get"] == 3  # no disk image: not asked for
    resp, script = await stack.get(f"{stack.url}/pxe/{QGA.id}/v1.11.2/metal-amd64")
    assert resp.code == 200
    for line in script.decode().splitlines():
        if line.startswith(("kernel ", "initrd ")):
            path = "/" + line.split()[1].split("/", 3)[3]
            resp, body = await stack.get(stack.url + path)
            assert header(resp, "X-Talos-Cache") == "HIT"
            assert body == stack.fake.asset(QGA.id, "v1.11.2", path.rsplit("/", 1)[1])
    assert stack.fake.counts["image_get"] == 3


def test_prefetch_assets_are_checked(tmp_path):
    from talos_twisted.config import ConfigError, load_config

    conf = tmp_path / "c.yaml"
    conf.write_text("talos:\n  prefetch:\n    - assets: [kernel, bios]\n")
    with pytest.raises(ConfigError, match=r"prefetch\[0\]\.assets.*'bios' is not one of disk, kernel"):
        load_config(str(conf), {})
