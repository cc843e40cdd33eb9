"""The seam between routes and transfers: follow an image, get a hit or a live source.

`Downloads.follow(image, need, timeout)` answers with a `Hit` (a complete cache entry) or
a `Live` source to stream from a download in progress, starting (or joining) the one
download of that image; it raises a `TalosError` for anything else. Routes never look at
a download's fields: images and `.sha256` files ask the same question with a different
`need`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from talos_twisted import tracing
from talos_twisted.cache import CacheEntry, CacheStore
from talos_twisted.download import Download
from talos_twisted.errors import TalosError, TooLarge, Unavailable
from talos_twisted.observe import OneShot, within
from talos_twisted.request import ImageKey, ResolvedImage
from talos_twisted.stream import SourceState
from talos_twisted.transfer import State

class Need(Enum):
    NOTHING = "nothing"  # start the download, wait for nothing
    SIZE = "size"  # HEAD: the raw size, when the upstream declares it early
    FIRST_BYTE = "first byte"  # a GET streams from the first byte on (with the size if it comes)
    COMPLETE = "complete"  # the .sha256 needs the whole image


@dataclass(frozen=True)
class Hit:
    entry: CacheEntry
    outcome: str = "HIT"  # or MISS / JOIN when the download completed while we waited


class LiveSource:
    """A download in progress, as a stream's `Source` (see `talos_twisted.stream`)."""

    def __init__(self, download: Download):
        self._download = download

    def available(self) -> int:
        n = self._download.available
        size = self.size()
        if size is not None and n >= size and not self._download.machine.complete:
            # the last byte waits for the end-of-stream checks: a response that looks
            # complete is one of an image that is complete and verified
            return size - 1
        return n

    def size(self) -> int | None:
        """The final raw size, once the upstream has declared it."""
        m = self._download.machine
        return m.size if m.size_settled else None

    def state(self) -> SourceState:
        st = self._download.state
        if self._download.machine.complete:
            # the bytes are the image's whatever happens to the hash and commit that follow:
            # a client still reading them (a dup of the fd) goes on even if the cache keeps nothing
            return SourceState.COMPLETE
        if st == State.FAILED:
            return SourceState.FAILED
        return SourceState.GROWING

    def open(self) -> int:
        fd = self._download.fd
        if fd is None:
            raise Unavailable("the download ended before this client could follow it; retry", retry_after=1)
        fd = os.dup(fd)
        if hasattr(os, "posix_fadvise"):
            # followers read right behind the writer, mostly holes: readahead would have the
            # kernel zero pages nobody asked for yet, in the reactor thread (issue 12, B7)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        return fd

    def zeros_at(self, offset: int, limit: int) -> int:
        runs = self._download.zero_runs
        return 0 if runs is None else runs.zeros_at(offset, limit)

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._download.subscribe(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        self._download.unsubscribe(listener)


@dataclass(frozen=True)
class Live:
    source: LiveSource
    outcome: str  # MISS (this request started the download) or JOIN


class Downloads:
    """The registry of in-flight downloads: at most one per cache key."""

    log = Logger()

    def __init__(self, make: Callable[[ResolvedImage], Download], cache: CacheStore, clock: IReactorTime):
        self._make = make
        self._cache = cache
        self._clock = clock
        self._active: dict[ImageKey, Download] = {}
        self._unsettled: set[Download] = set()
        self.closing = False  # shutting down: no new download starts, running ones go on

    def __len__(self) -> int:
        return len(self._active)

    def active(self) -> list[Download]:
        return list(self._active.values())

    def describe(self) -> list[dict[str, object]]:
        """The downloads in progress, for the status page and the cache listing."""
        now = self._clock.seconds()
        out: list[dict[str, object]] = []
        for d in self._active.values():
            elapsed = max(now - d.started, 1e-6)
            out.append({
                "key": str(d.key), "version": d.key.version, "arch": d.key.arch, "platform": d.key.platform,
                "schematic": d.key.schematic, "asset": d.key.asset, "url_path": d.image.url_path(), "state": d.state.value,
                "bytes": d.available, "compressed_bytes": d.machine.received, "size": LiveSource(d).size(),
                "elapsed": round(elapsed, 3), "rate": round(d.available / elapsed), "followers": d.followers,
            })
        return out

    def get_or_start(self, image: ResolvedImage) -> tuple[Download, bool]:
        """The download of `image`, and whether it was already running (a JOIN)."""
        existing = self._active.get(image.key)
        if existing is not None and not existing.machine.ended:
            return existing, True
        if self.closing:
            raise Unavailable("the server is shutting down")
        download = self._make(image)
        self._active[image.key] = download

        def forget(_: object) -> None:
            if self._active.get(download.key) is download:
                del self._active[download.key]

        download.ended.when().addCallback(forget)
        self._unsettled.add(download)
        download.settled.when().addCallback(lambda _: self._unsettled.discard(download))
        download.start().addErrback(lambda f: self.log.failure("download crashed", f))
        return download, False

    def _queued_ahead(self, download: Download) -> int:
        ahead = 0
        for other in self._active.values():  # dicts keep insertion order: start order
            if other is download:
                break
            if other.state == State.QUEUED:
                ahead += 1
        return ahead

    async def follow(self, image: ResolvedImage, need: Need, timeout: float | None) -> Hit | Live:
        """A hit, or the live download of `image` once `need` holds (within `timeout`)."""
        entry = self._cache.get(image.key)
        if entry is not None:
            return Hit(entry)
        download, joined = self.get_or_start(image)
        outcome = "JOIN" if joined else "MISS"
        if joined:
            tracing.link_current(download.span)  # the request's span to the download it joins
        if need is Need.NOTHING:
            return Live(LiveSource(download), outcome)
        deadline = None if timeout is None else self._clock.seconds() + timeout
        events: list[OneShot[Any]]
        if need is Need.SIZE:
            events = [download.size_known]
        elif need is Need.FIRST_BYTE:
            events = [download.first_data, download.size_known]
        else:
            events = [download.ended]
        for event in events:
            left = None if deadline is None else max(0.0, deadline - self._clock.seconds())
            if not await within(event, left, self._clock):
                break
        state = download.state
        if need is Need.SIZE and state != State.COMMITTED:
            # Ironic's pre-deploy HEAD check must never fail: what a GET would meet, it meets then
            return Live(LiveSource(download), outcome)
        if state == State.FAILED:
            assert download.error is not None
            raise download.error
        if state == State.COMMITTED:
            if download.entry is None:
                what = "no checksum can describe it" if need is Need.COMPLETE else "it was not kept; retry later"
                raise TooLarge(f"the image is larger than the cache (max_cache_size), so {what}")
            return Hit(download.entry, outcome)
        raise_waiting(download, need, timeout, self._queued_ahead(download))
        return Live(LiveSource(download), outcome)

    def settling(self) -> list[Download]:
        """Downloads started and not settled yet (running, or ended and closing their file)."""
        return list(self._unsettled)

    def quiesce(self) -> Deferred[list[None]]:
        """Fires once every download started so far has settled (tests, shutdown)."""
        return gatherResults([d.settled.when() for d in list(self._unsettled)])

    def stop(self) -> Deferred[list[None]]:
        """Abort every running download (daemon shutdown) and wait until they have settled."""
        self.closing = True
        # an image already verified is only being hashed and committed: let it finish (a
        # bounded step) rather than throw away a complete download
        running = [d for d in self._active.values() if not d.machine.ended and not d.machine.complete]
        if running:
            self.log.info(
                "shutting down: cancelling {count} downloads ({keys}); their temporary files are removed",
                count=len(running), keys=", ".join(str(d.key) for d in running),
                bytes={str(d.key): d.available for d in running},
            )
        for download in running:
            download.cancel(Unavailable("the server is shutting down"))
        return self.quiesce()


def raise_waiting(download: Download, need: Need, timeout: float | None, ahead: int) -> None:
    """Raise the 503 for a download that is not yet where `need` wants it; else return."""
    waited = f"{timeout or 0:g}s"
    if download.state == State.QUEUED:
        raise Unavailable(
            f"waiting for a download slot: {ahead} ahead (max_downloads); the download will start, retry later"
        )
    if need is Need.COMPLETE:
        raise Unavailable(
            f"the image is still being downloaded (not complete after {waited}); retry later"
        )
    if download.available == 0:
        raise Unavailable(
            f"the image factory is still building this image (no data after {waited}); the download goes on, retry later"
        )


__all__ = ["Downloads", "Hit", "Live", "LiveSource", "Need", "TalosError"]
