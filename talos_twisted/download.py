"""One download: the Twisted adapter that carries out the effects of its `Transfer`.

The upstream body is queued by the state machine and handed, one batch at a time, to a
writer in a dedicated thread pool (decompress, hash, sparse write). The upstream is paced
by decompression and disk only, never by a client. Every decision is the machine's
(`talos_twisted.transfer`); this module only does the I/O those decisions call for, the
factory's side of it (requests, the body's transport, the early size) in `download_upstream`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IResponse

from talos_twisted import tracing, transfer as t
from talos_twisted.cache import CacheEntry, CacheStore
from talos_twisted.decompress import Decoder, make_decoder
from talos_twisted.download_upstream import Upstream
from talos_twisted.errors import InternalError, StorageError, TalosError
from talos_twisted.factory import FactoryClient
from talos_twisted.factory_errors import as_talos_error
from talos_twisted.metrics import Metrics, error_kind
from talos_twisted.observe import OneShot
from talos_twisted.reactortypes import IDaemonReactor
from talos_twisted.request import ImageKey, ResolvedImage
from talos_twisted.transfer import State, Transfer
from talos_twisted.writer import ImageWriter, writer_error
from talos_twisted.zeroruns import ZeroRuns


# disk room made before each batch is written: more than one batch can decode to
RESERVE_AHEAD = 64 * 1024 * 1024


@dataclass
class DownloadContext:
    """What every download shares: the reactor, pools, cache, factory and settings."""

    reactor: IDaemonReactor
    pool: ThreadPool
    cache: CacheStore
    factory: FactoryClient
    compression: str = "zst"
    idle_timeout: float = 120.0
    slots: DeferredSemaphore | None = None
    max_output: int = 1024 * 1024
    policy: t.ResumePolicy = t.ResumePolicy()
    rng: random.Random = field(default_factory=random.Random)
    # images whose upstream declared a raw size its body then contradicted: their next
    # download does not trust the declaration (an upstream writing several zstd frames)
    distrust: set[ImageKey] = field(default_factory=set)
    metrics: Metrics | None = None


class Download:
    log = Logger()

    def __init__(self, image: ResolvedImage, ctx: DownloadContext):
        self.image = image
        self.key: ImageKey = image.key
        self._ctx = ctx
        # a mirrored asset is kept as the factory sent it: no decoder, its own path
        self._compression = "none" if image.asset else ctx.compression
        self.machine = Transfer(ctx.policy, ctx.rng, queued=ctx.slots is not None, now=ctx.reactor.seconds)
        self.started = ctx.reactor.seconds()
        self.entry: CacheEntry | None = None  # once committed (None: too large to keep)
        self.fd: int | None = None
        self._temp_path: str | None = None
        self._writer: ImageWriter | None = None
        self._upstream = Upstream(self, ctx, self._compression)
        self._idle_call: IDelayedCall | None = None
        self._resume_call: IDelayedCall | None = None
        self._listeners: list[Callable[[], None]] = []
        self.first_data: OneShot[None] = OneShot()  # a byte is readable, or the download ended
        self.size_known: OneShot[int | None] = OneShot()  # the raw size, None: not before the end
        self.ended: OneShot[None] = OneShot()
        self.settled: OneShot[None] = OneShot()  # ended, and no file or thread is left open
        self.span: tracing.Span | None = None  # its trace span from start() until it settles

    # --- what followers see ----------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def available(self) -> int:
        return self.machine.available

    @property
    def zero_runs(self) -> ZeroRuns | None:
        """Where the file is known to be zeros (the writer's holes), once writing began."""
        return self._writer.zero_runs if self._writer is not None else None

    @property
    def error(self) -> TalosError | None:
        return self.machine.error

    @property
    def followers(self) -> int:
        """Clients streaming from this download now."""
        return len(self._listeners)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener()` is called after every change of `available` or of the end state."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                self.log.failure("download listener failed")

    # --- running -----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        # a child of the current span (the request that starts it); current for what it starts
        self.span = tracing.start_download(self.image)
        if self.span is not None:
            self.settled.when().addCallback(lambda _: self._end_span())
        with tracing.current(self.span):
            return Deferred.fromCoroutine(self._run())

    def _end_span(self) -> None:
        m, span = self.machine, self.span
        self.span = None
        error = m.error
        outcome = "committed" if m.state == State.COMMITTED else error_kind(error) if error else m.state.value
        tracing.end_download(span, outcome, m.available, m.received, error.message if error else None)

    def cancel(self, error: TalosError) -> None:
        self._apply(self.machine.shutdown(error))

    async def _run(self) -> None:
        ctx = self._ctx
        if ctx.metrics is not None:
            ctx.metrics.download_queued()
        try:
            if ctx.slots is not None:
                await ctx.slots.acquire()
                self._apply(self.machine.slot_acquired())
                if self.machine.ended:
                    return
            if ctx.metrics is not None:
                ctx.metrics.download_started()
            response = await self._upstream.open()
        except Exception as e:
            self._apply(self.machine.failed(as_talos_error(e, "image download")))
            return
        if self.machine.ended:  # cancelled while the factory was building
            self._upstream.abandon(response)
            return
        try:
            self._temp_path, self.fd = ctx.cache.open_temp(self.key)
        except OSError as e:
            self._apply(self.machine.failed(StorageError(f"cannot write to the cache: {e.strerror}")))
            return
        self._writer = ImageWriter(self.fd, self._decoder(), on_progress=self._progress_from_thread)
        self.log.info("downloading {key} from {path}", key=str(self.key), path=self._upstream.path)
        length, accepts = self._upstream.opened(response)
        self._apply(self.machine.opened(length, accepts), response)
        self._upstream.probe_size(length)

    def _decoder(self) -> Decoder:
        return make_decoder(self._compression, self._ctx.max_output)

    # --- carrying out effects --------------------------------------------------------------

    def _apply(self, effects: list[t.Effect], response: IResponse | None = None) -> None:
        attached = False
        for effect in effects:
            if isinstance(effect, t.Attach):
                assert response is not None
                attached = True
                self._upstream.attach(response, effect.generation)
            else:
                self._do(effect)
        if response is not None and not attached:
            self._upstream.abandon(response)

    def _do(self, effect: t.Effect) -> None:
        m = self.machine
        reactor = self._ctx.reactor
        match effect:
            case t.PauseUpstream():
                self._upstream.pause()
            case t.ResumeUpstream():
                self._upstream.resume()
            case t.StopUpstream():
                self._upstream.stop()
            case t.ArmIdle():
                if self._idle_call is not None and self._idle_call.active():
                    self._idle_call.reset(self._ctx.idle_timeout)
                else:
                    self._idle_call = reactor.callLater(self._ctx.idle_timeout, self._idle)
            case t.DisarmIdle():
                if self._idle_call is not None and self._idle_call.active():
                    self._idle_call.cancel()
                self._idle_call = None
            case t.Write(data=data):
                # room on disk first (min_free_space, max_cache_size): evicting if need be, or
                # failing this download cleanly rather than filling the filesystem
                if not self._ctx.cache.reserve(self.key, RESERVE_AHEAD):
                    self._apply(m.write_failed(StorageError(
                        "not enough free space in the cache for this image (min_free_space); nothing could be evicted"
                    )))
                    return
                self._in_pool(self._writer_or_fail().write, data).addCallbacks(
                    lambda available: self._apply(m.written(available, len(data))), self._write_failed
                )
            case t.Restart():
                self.log.info("re-downloading {key} from the start, checking the bytes already written", key=str(self.key))
                self._in_pool(self._writer_or_fail().restart, self._decoder()).addCallbacks(
                    lambda available: self._apply(m.written(available, 0)), self._write_failed
                )
            case t.Finish():
                self._in_pool(self._writer_or_fail().verify).addCallbacks(
                    lambda size: self._apply(m.verified(size)), self._write_failed
                )
            case t.Seal():
                self._in_pool(self._writer_or_fail().seal).addCallbacks(
                    lambda sha256: self._apply(m.sealed(sha256)), self._write_failed
                )
            case t.ScheduleResume(delay=delay, attempt=attempt, why=why):
                if self._ctx.metrics is not None:
                    self._ctx.metrics.download_resumed()
                self.log.info(
                    "resuming {key} in {delay:.2f}s (attempt {attempt}) after: {why}",
                    key=str(self.key), delay=delay, attempt=attempt, why=why,
                )
                self._resume_call = reactor.callLater(delay, self._resume_due)
            case t.CancelResume():
                if self._resume_call is not None and self._resume_call.active():
                    self._resume_call.cancel()
                self._resume_call = None
            case t.OpenRange(offset=offset):
                self._upstream.reopen(offset)
            case t.OpenFresh():
                self._upstream.reopen(None)
            case t.Progress():
                self.first_data.fire(None)
                self._notify()
            case t.Commit(size=size, sha256=sha256):
                self._commit(size, sha256)
            case t.Committed():
                if self._ctx.metrics is not None:
                    self._ctx.metrics.download_committed()
                self._close_fd()
                elapsed = reactor.seconds() - self.started
                entry = self.entry
                self.log.info(
                    "cached {key}: {size} bytes from {received} compressed in {seconds:.1f}s, sha256 {sha256}",
                    key=str(self.key), size=m.available, received=m.received, seconds=elapsed,
                    sha256=entry.sha256 if entry else "(not kept)",
                )
                self._end()
            case t.Failed(error=error):
                if self._ctx.metrics is not None:
                    self._ctx.metrics.download_failed(error_kind(error))
                if isinstance(error, InternalError):
                    self.log.error("download of {key} failed: {error}", key=str(self.key), error=error.message)
                else:
                    self.log.warn("download of {key} failed: {error}", key=str(self.key), error=error.message)
                self._end()
            case t.Discard():
                # only once the writer thread is done with the fd: closing it under the
                # thread could let a reused fd number receive its writes
                self._close_fd()
                if self._temp_path is not None:
                    self._ctx.cache.discard(self._temp_path)
            case t.ReleaseSlot():
                if self._ctx.slots is not None:
                    self._ctx.slots.release()
            case t.Settled():
                self._ctx.cache.release(self.key)
                self.settled.fire(None)
            case t.SizeKnown(size=size):
                if size is not None:
                    self.log.info("{key} is {size} bytes (declared by the upstream)", key=str(self.key), size=size)
                self.size_known.fire(size)
                self._notify()
            case _:
                raise AssertionError(f"unhandled effect {effect!r}")

    def _end(self) -> None:
        error = self.machine.error
        if isinstance(error, t.SizeMismatch):
            self._ctx.distrust.add(self.key)
        self.size_known.fire(self.machine.size)
        self.first_data.fire(None)
        self.ended.fire(None)
        self._notify()

    def _writer_or_fail(self) -> ImageWriter:
        assert self._writer is not None, "no writer before the first response"
        return self._writer

    def _in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._ctx.reactor, self._ctx.pool, f, *args)

    def _write_failed(self, failure: Failure) -> None:
        error = writer_error(cast(BaseException, failure.value))
        if isinstance(error, InternalError):
            self.log.failure("writing {key} failed", failure, key=str(self.key))
        elif isinstance(error, StorageError):
            # an operational fault (disk full, I/O error), not a bug: no traceback
            self.log.error("writing {key} to the cache failed: {error}", key=str(self.key), error=error.message)
        self._apply(self.machine.write_failed(error))

    def _commit(self, size: int, sha256: str) -> None:
        info = {
            "version": self.image.version,
            "extensions": list(self.image.schematic.extensions),
            "overlay": self.image.schematic.overlay.name if self.image.schematic.overlay else None,
            "schematic": self.image.schematic.to_yaml(),
            "compressed_bytes": self.machine.received,
        }
        assert self._temp_path is not None
        try:
            self.entry = self._ctx.cache.commit(self.key, self._temp_path, size, sha256, info)
        except OSError as e:
            self._apply(self.machine.failed(StorageError(f"cannot write to the cache: {e.strerror or e}")))
            return
        self._apply(self.machine.committed())

    # --- timers ---------------------------------------------------------------------------

    def _idle(self) -> None:
        self._idle_call = None
        self._apply(self.machine.idle_timeout(self._ctx.idle_timeout))

    def _resume_due(self) -> None:
        self._resume_call = None
        self._apply(self.machine.resume_due())

    # --- the writer's progress -----------------------------------------------------------

    def _progress_from_thread(self, size: int) -> None:
        self._ctx.reactor.callFromThread(self._progress, size)

    def _progress(self, size: int) -> None:
        self._apply(self.machine.progress(size))

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
