"""Continuous background scrub: re-hash cached images and drop those that no longer match.

Without it a byte flipped on disk would be served forever under the old ETag and ``.sha256``.
Entries are verified least recently verified first, one pass after another; the hashing runs
in a thread, one chunk at a time, and the service sleeps on its clock between chunks so the
disk sees at most `rate` bytes/s. A mismatch removes the entry, so the next request
downloads it again; an entry removed or replaced while it was hashed is skipped. An entry in
use (pinned) is scrubbed too: the scrub only reads.

The last verification time lives in each entry's sidecar (`CacheEntry.verified`), which the
cache rewrites only when it moved by more than a minute: the order survives a restart for at
most one sidecar write per entry and pass.

Holes of the sparse images are hashed as zeros without reading them (``SEEK_DATA``); the rate
and `scrubbed_bytes` count the bytes read from disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any, Callable, Iterable, Protocol, TypeVar

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.logger import Logger, LogLevel

from talos_twisted.cache import CacheStore
from talos_twisted.cache_entry import CacheEntry
from talos_twisted.observe import OneShot
from talos_twisted.request import ImageKey

DEFAULT_RATE = 50_000_000  # bytes/s
CHUNK = 1024 * 1024  # bytes read per step in the thread
HOLE_STEP = 64 * 1024 * 1024  # zeros of a hole hashed per step at most (keeps a step short)
IDLE = 60.0  # an empty cache is looked at again after this many seconds
_ZEROS = bytes(CHUNK)

T = TypeVar("T")


# --- the plan (pure) -------------------------------------------------------------------


def next_entry(entries: Iterable[CacheEntry], done: set[ImageKey]) -> CacheEntry | None:
    """The least recently verified entry not yet verified in this pass, or None: pass over."""
    todo = [e for e in entries if e.key not in done]
    return min(todo, key=lambda e: (e.verified, e.created, e.key.relpath), default=None)


def pause_for(nbytes: int, rate: float, started: float, now: float) -> float:
    """How long to sleep after reading `nbytes` in a step started at `started`, for `rate`."""
    return max(0.0, started + nbytes / rate - now)


# --- hashing one file (in a thread) ------------------------------------------------------


class Hashing:
    """The sha256 of the first `size` bytes of `fd`, computed a step at a time."""

    def __init__(self, fd: int, size: int):
        self._fd = fd
        self._size = size
        self._sha = hashlib.sha256()
        self.offset = 0
        self.read = 0  # bytes read from disk (holes are hashed, not read)
        self._sparse = True  # False once the file system says it cannot tell holes

    @property
    def done(self) -> bool:
        return self.offset >= self._size

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def _next_data(self) -> tuple[int, int]:
        """(start, end) of the next data extent at or after `offset` (the end of the file if none)."""
        if self._sparse:
            try:
                start = os.lseek(self._fd, self.offset, os.SEEK_DATA)
                return start, min(os.lseek(self._fd, start, os.SEEK_HOLE), self._size)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole up to the end
                    return self._size, self._size
                self._sparse = False
        return self.offset, self._size

    def step(self, chunk: int = CHUNK) -> int:
        """Hash the next part; returns the bytes hashed, holes included (which are not read:
        `read` counts what was). The scrub paces on this: hashing a hole's zeros costs the
        same CPU as hashing data, and a mostly sparse cache must not keep a core busy."""
        start, end = self._next_data()
        start = min(start, self._size)
        if start > self.offset:
            zeros = min(start - self.offset, HOLE_STEP)
            for _ in range(zeros // CHUNK):
                self._sha.update(_ZEROS)
            self._sha.update(_ZEROS[: zeros % CHUNK])
            self.offset += zeros
            return zeros
        n = min(chunk, end - self.offset)
        data = os.pread(self._fd, n, self.offset)
        if len(data) != n:
            raise OSError(errno.EIO, f"the file ended at {self.offset + len(data)} bytes, not {self._size}")
        self._sha.update(data)
        self.offset += n
        self.read += n
        return n


# --- the service -------------------------------------------------------------------------


class _Pool(Protocol):
    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], object], func: Callable[..., Any], *args: Any) -> None: ...


class ScrubService(service.Service):
    """Scrubs `cache` at `rate` bytes/s (0: off), sleeping on `clock`, hashing in `pool`.

    `from_thread` hands a result back to the reactor thread: by default the clock's
    ``callFromThread`` (pass the reactor); tests with a `Clock` and a synchronous pool pass
    a plain call. Counters for the metrics: `scrubbed_bytes`, `scrub_mismatches`, `scrub_passes`.
    """

    log = Logger()

    def __init__(
        self,
        cache: CacheStore,
        rate: float,
        clock: IReactorTime,
        pool: _Pool,
        *,
        from_thread: Callable[..., object] | None = None,
        chunk: int = CHUNK,
        idle: float = IDLE,
    ):
        if from_thread is None:
            if not IReactorFromThreads.providedBy(clock):
                raise TypeError("ScrubService needs from_thread when the clock is not a reactor")
            from_thread = clock.callFromThread
        self.cache = cache
        self.rate = rate
        self._clock = clock
        self._pool = pool
        self._from_thread = from_thread
        self._chunk = chunk
        self._idle = idle
        self._sleeping: Deferred[None] | None = None
        self._loop: Deferred[None] | None = None
        self.scrubbed_bytes = 0
        self.scrub_mismatches = 0
        self.scrub_passes = 0
        self.passed: OneShot[int] = OneShot()  # fires at the end of the pass under way

    def startService(self) -> None:
        service.Service.startService(self)
        if self.rate > 0:
            self._loop = Deferred.fromCoroutine(self._run())
            self._loop.addErrback(lambda f: self.log.failure("the scrub crashed", f))

    def stopService(self) -> Deferred[None] | None:
        """Fires once no thread is hashing and no file is open any more."""
        service.Service.stopService(self)
        if self._sleeping is not None:
            self._sleeping.cancel()
        return self._loop

    # --- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        done: set[ImageKey] = set()
        began = self._clock.seconds()
        try:
            while self.running:
                entry = next_entry(self.cache.entries(), done)
                if entry is None:
                    if done:
                        self.scrub_passes += 1
                        passed, self.passed = self.passed, OneShot()
                        passed.fire(self.scrub_passes)
                        took = self._clock.seconds() - began
                        # a small cache is passed over many times a minute: no info line for each
                        self.log.emit(LogLevel.info if took >= 60 else LogLevel.debug,
                                      "scrub pass {passes} done: {count} images verified in {seconds:.0f}s",
                                      passes=self.scrub_passes, count=len(done), seconds=took)
                        done.clear()
                    else:
                        await self._sleep(self._idle)
                    began = self._clock.seconds()
                    continue
                done.add(entry.key)
                await self._scrub(entry)
        except CancelledError:
            pass  # stopped while sleeping

    def _sleep(self, seconds: float) -> Deferred[None]:
        # always through the clock, even for 0: the loop yields to the reactor between steps
        def cancel(d: Deferred[None]) -> None:
            call.cancel()

        d: Deferred[None] = Deferred(cancel)
        call: IDelayedCall = self._clock.callLater(seconds, d.callback, None)
        self._sleeping = d

        def awake(result: object) -> object:
            self._sleeping = None
            return result

        return d.addBoth(awake)

    def _in_thread(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()

        def finished(ok: bool, result: Any) -> None:
            self._from_thread(d.callback if ok else d.errback, result)

        self._pool.callInThreadWithCallback(finished, f, *args)
        return d

    async def _scrub(self, entry: CacheEntry) -> None:
        try:
            fd = self.cache.open_entry(entry)
        except OSError:
            return  # gone, or dropped (and logged) by the cache
        job = Hashing(fd, entry.size)
        error: OSError | None = None
        try:
            while not job.done:
                started = self._clock.seconds()
                try:
                    n = await self._in_thread(job.step, self._chunk)
                except OSError as e:
                    error = e
                    break
                self.scrubbed_bytes += n
                if not self.running:
                    return
                await self._sleep(pause_for(n, self.rate, started, self._clock.seconds()))
        finally:
            os.close(fd)  # no thread is using it: every step has returned
        self._judge(entry, job, error)

    def _judge(self, entry: CacheEntry, job: Hashing, error: OSError | None) -> None:
        if not self.cache.is_current(entry):
            self.log.info("scrub skipped {key}: removed or replaced while being verified", key=str(entry.key))
            return
        found = f"unreadable: {error}" if error is not None else job.hexdigest()
        if found == entry.sha256:
            self.cache.mark_verified(entry)
            return
        self.scrub_mismatches += 1
        self.log.error(
            "scrub: {key} at {path} no longer matches sha256 {expected} (found {found}); removed, "
            "the next request downloads it again",
            key=str(entry.key), path=entry.path, expected=entry.sha256, found=found,
        )
        self.cache.remove(entry.key)
