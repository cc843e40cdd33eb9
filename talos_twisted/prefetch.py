"""Prefetch: keep the configured images (``talos.prefetch``) in the cache.

`Prefetcher.run_round` resolves every configured image (so ``latest`` follows the factory)
and starts the download of those neither cached nor downloading; it does not wait for the
downloads, which run, are cached and are joined by clients like any other. A round over
images all cached costs no image download (and no metadata call while the metadata is
fresh). One image failing to resolve (unknown extension, factory down) is logged and the
others go on.

`PrefetchService` runs a round at start-up and then periodically on the injected clock,
guarded: a failing round is logged and the loop keeps running.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from talos_twisted.cache import CacheStore
from talos_twisted.config import PrefetchImage
from talos_twisted.downloads import Downloads
from talos_twisted.errors import TalosError
from talos_twisted.observe import OneShot
from talos_twisted.request import ImageKey, ImageRequest, ResolvedImage, parse_image_request
from talos_twisted.resolver import ImageResolver

# outcomes of one item in a round
CACHED, DOWNLOADING, STARTED, FAILED = "cached", "downloading", "started", "failed"

# The versions list is reused for `metadata_ttl` from the moment it arrived, a little after
# the round that fetched it started: a round every `metadata_ttl` exactly would find it
# still fresh every other time. The slack lets each round see a list refreshed since the last.
ROUND_SLACK = 5.0
MIN_INTERVAL = 60.0  # metadata_ttl may be 0 ("refresh on every use"): not a busy loop


def describe(item: PrefetchImage) -> str:
    """How an item is named in logs: its URL path and query, as a client would ask for it."""
    query = []
    if item.extensions:
        query.append("extensions=" + ",".join(item.extensions))
    if item.overlay:
        query.append("overlay=" + item.overlay)
    path = f"{item.version}/{item.arch}/{item.platform}.raw"
    return path + ("?" + "&".join(query) if query else "")


def image_request(item: PrefetchImage, platforms: Iterable[str]) -> ImageRequest:
    """The request a client would make for `item`, validated exactly as a URL is."""
    query: dict[bytes | str, list[bytes | str]] = {}  # the shape of a request's `args`
    if item.extensions:
        query["extensions"] = list(item.extensions)
    if item.overlay:
        query["overlay"] = [item.overlay]
    return parse_image_request(item.version, item.arch, f"{item.platform}.raw", query, platforms)


@dataclass(frozen=True)
class Outcome:
    item: PrefetchImage
    status: str  # CACHED | DOWNLOADING | STARTED | FAILED
    key: ImageKey | None = None
    error: str | None = None


class Prefetcher:
    log = Logger()

    def __init__(
        self,
        items: Iterable[PrefetchImage],
        *,
        resolver: ImageResolver,
        downloads: Downloads,
        cache: CacheStore,
        clock: IReactorTime,  # injected
        platforms: Iterable[str],
    ):
        self.items = tuple(items)
        self._resolver = resolver
        self._downloads = downloads
        self._cache = cache
        self._clock = clock
        self._platforms = tuple(platforms)
        self.stopped = False  # no download is started once set (daemon shutdown)
        self.last_round: list[Outcome] = []

    async def run_round(self) -> list[Outcome]:
        """Start the download of every configured image neither cached nor downloading."""
        started = self._clock.seconds()
        outcomes = []
        for item in self.items:
            if self.stopped:
                break
            outcomes += await self._one(item)
        self.last_round = outcomes
        counts = {s: sum(1 for o in outcomes if o.status == s) for s in (CACHED, DOWNLOADING, STARTED, FAILED)}
        self.log.info(
            "prefetch round of {count} images in {seconds:.1f}s: {started} started, {cached} cached,"
            " {downloading} already downloading, {failed} failed",
            count=len(outcomes),
            seconds=self._clock.seconds() - started,
            started=counts[STARTED],
            cached=counts[CACHED],
            downloading=counts[DOWNLOADING],
            failed=counts[FAILED],
        )
        return outcomes

    async def _one(self, item: PrefetchImage) -> list[Outcome]:
        """One outcome per asset of `item` (its disk image, its PXE boot files)."""
        name = describe(item)
        try:
            disk = await self._resolver.resolve(image_request(item, self._platforms))
        except TalosError as e:
            message = e.message
            self.log.warn("prefetch of {item} failed: {error}", item=name, error=message)
            return [Outcome(item, FAILED, error=message)]
        except CancelledError:
            raise
        except Exception as e:
            self.log.failure("prefetch of {item} failed", item=name)
            return [Outcome(item, FAILED, error=f"internal error: {type(e).__name__}")]
        return [self._start(item, replace(disk, asset=boot_asset(a, disk)), name) for a in item.assets]

    def _start(self, item: PrefetchImage, image: ResolvedImage, name: str) -> Outcome:
        # peek, not get: a prefetch round is not a client's access (LRU order, sidecar writes)
        if self._cache.peek(image.key) is not None:
            return Outcome(item, CACHED, image.key)
        if self.stopped:
            return Outcome(item, FAILED, image.key, "the prefetcher was stopped")
        download, joined = self._downloads.get_or_start(image)
        if joined:
            return Outcome(item, DOWNLOADING, image.key)
        self.log.info("prefetching {item} as {key}", item=name, key=str(image.key))
        return Outcome(item, STARTED, image.key)


def boot_asset(kind: str, disk: ResolvedImage) -> str:
    """The factory asset path of a prefetch `assets` entry ("" for the disk image itself)."""
    platform, arch = disk.platform, disk.arch
    secure = platform.endswith("-secureboot")
    base = platform.removesuffix("-secureboot")
    return {
        "disk": "",
        "kernel": f"kernel-{arch}",
        "initramfs": f"initramfs-{arch}.xz",
        "cmdline": f"cmdline-{base}-{arch}{'-secureboot' if secure else ''}",
    }[kind]


class PrefetchService(service.Service):
    """Runs `prefetcher.run_round` at start-up, then every `interval` seconds of `clock`."""

    log = Logger()

    def __init__(self, prefetcher: Prefetcher, interval: float, clock: IReactorTime):
        self.setName("prefetch")
        self.prefetcher = prefetcher
        self.interval = interval
        self._clock = clock
        self._loop: LoopingCall | None = None
        self._round: Deferred[None] | None = None
        self._idle: OneShot[None] = OneShot()
        self._idle.fire(None)
        self.rounds = 0  # rounds finished (successfully or not)

    @staticmethod
    def interval_for(metadata_ttl: float) -> float:
        return max(metadata_ttl, MIN_INTERVAL) + ROUND_SLACK

    def startService(self) -> None:
        super().startService()
        self.prefetcher.stopped = False
        loop = self._loop = LoopingCall(self._guarded_round)
        loop.clock = self._clock
        # _guarded_round never fails, so this Deferred only fires when the loop is stopped
        loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        self.prefetcher.stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._round is not None:
            self._round.cancel()  # waiting for metadata only: the factory client's fetch goes on
        return None

    def _guarded_round(self) -> Deferred[None]:
        if self._round is not None:  # one round at a time (run_now may have started one)
            return self.idle()

        def failed(f: Failure) -> None:
            if not f.check(CancelledError):
                self.log.failure("prefetch round failed; the next one runs in {interval:g}s", f, interval=self.interval)

        def done(_: object) -> None:
            self._round = None
            self.rounds += 1
            self._idle.fire(None)

        # addCallbacks returns the same Deferred, whose result is None from then on
        d = self._round = Deferred.fromCoroutine(self.prefetcher.run_round()).addCallbacks(lambda _: None, failed)
        self._idle = OneShot()
        d.addBoth(done)
        return d

    def idle(self) -> Deferred[None]:
        """A new Deferred firing once no round is running (at once if none is)."""
        return self._idle.when()

    def run_now(self) -> Deferred[None]:
        """Run a round now (tests, operators), unless one is running: then wait for it."""
        return self._guarded_round()
