"""One download: the Twisted adapter that carries out the effects of its `Transfer`.

The upstream body is queued by the state machine and handed, one batch at a time, to a
writer in a dedicated thread pool (decompress, hash, sparse write). The upstream is paced
by decompression and disk only, never by a client. Every decision is the machine's
(`talos_twisted.transfer`); this module only does the I/O those decisions call for.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from talos_twisted import tracing, transfer as t
from talos_twisted.cache import CacheEntry, CacheStore
from talos_twisted.decompress import Decoder, make_decoder
from talos_twisted.errors import InternalError, StorageError, TalosError, UpstreamNotFound
from talos_twisted.factory import FactoryClient, as_talos_error, content_range, image_path
from talos_twisted.metrics import Metrics, error_kind
from talos_twisted.observe import OneShot
from talos_twisted.request import ImageKey, ResolvedImage
from talos_twisted.sizeprobe import ZstdHead, xz_size_from_tail
from talos_twisted.transfer import State, Transfer
from talos_twisted.writer import ImageWriter, writer_error


# disk room made before each batch is written: more than one batch can decode to
RESERVE_AHEAD = 64 * 1024 * 1024


@dataclass
class DownloadContext:
    """What every download shares: the reactor, pools, cache, factory and settings."""

    reactor: Any  # IReactorTime + IReactorThreads
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


class _BodyReceiver(Protocol):
    def __init__(self, download: Download, generation: int):
        self._download = download
        self._generation = generation  # which attempt this body belongs to

    def connectionMade(self) -> None:
        # a response body's transport is a producer (_newclient.TransportProxyProducer)
        self._download._transport_for(self._generation, cast(IPushProducer, self.transport))

    def dataReceived(self, data: bytes) -> None:
        self._download._body(self._generation, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._download._body_ended(self._generation, reason)


class _Abandon(Protocol):
    def connectionMade(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()


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
        self._path = ""
        self._range_url: bytes | None = None  # where the first response came from, if it honours Range
        self._transport: IPushProducer | None = None
        self._transport_gen = 0
        self._idle_call: IDelayedCall | None = None
        self._resume_call: IDelayedCall | None = None
        self._listeners: list[Callable[[], None]] = []
        self.first_data: OneShot[None] = OneShot()  # a byte is readable, or the download ended
        self.size_known: OneShot[int | None] = OneShot()  # the raw size, None: not before the end
        self._zstd_head: ZstdHead | None = ZstdHead() if self._compression == "zst" else None
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
            img = self.image
            remote_id = await ctx.factory.ensure_schematic(img.schematic)
            self._path = self._factory_path(remote_id)
            try:
                response = await ctx.factory.open_image(self._path)
            except UpstreamNotFound:
                # a factory that lost the schematic (a self-hosted one restarted without its
                # storage) answers 404 for ever unless it is POSTed again: once, then retry
                self.log.info("the image factory does not know {id}: POSTing it again", id=remote_id)
                ctx.factory.forget_schematic(remote_id)
                remote_id = await ctx.factory.ensure_schematic(img.schematic)
                self._path = self._factory_path(remote_id)
                response = await ctx.factory.open_image(self._path)
        except Exception as e:
            self._apply(self.machine.failed(as_talos_error(e, "image download")))
            return
        if self.machine.ended:  # cancelled while the factory was building
            response.deliverBody(_Abandon())
            return
        try:
            self._temp_path, self.fd = ctx.cache.open_temp(self.key)
        except OSError as e:
            self._apply(self.machine.failed(StorageError(f"cannot write to the cache: {e.strerror}")))
            return
        self._writer = ImageWriter(self.fd, self._decoder(), on_progress=self._progress_from_thread)
        self.log.info("downloading {key} from {path}", key=str(self.key), path=self._path)
        length = None if response.length is UNKNOWN_LENGTH else response.length
        accepts = (response.headers.getRawHeaders(b"accept-ranges") or [b""])[0].lower() == b"bytes"
        # where the server says it honours Range (an object store behind a redirect), a
        # broken transfer can continue from the compressed offset reached
        self._range_url = response.request.absoluteURI if accepts else None
        self._apply(self.machine.opened(length, accepts), response)
        self._probe_size(length)

    def _factory_path(self, remote_id: str) -> str:
        img = self.image
        if img.asset:
            return f"/image/{remote_id}/{img.version}/{img.asset}"
        return image_path(remote_id, img.version, img.platform, img.arch, self._compression)

    # --- the raw size, as early as the upstream tells it ------------------------------------

    def _probe_size(self, length: int | None) -> None:
        compression = self._compression
        if self.key in self._ctx.distrust:
            self._apply(self.machine.size_declared(None))
        elif compression == "none":
            self._apply(self.machine.size_declared(length))
        elif compression == "xz":
            if self._range_url is not None and length is not None:
                # the total is only in the index at the end: read the footer and index with
                # a small ranged request while the body streams
                with tracing.current(self.span):
                    Deferred.fromCoroutine(self._xz_tail(self._range_url, length))
            else:
                self._apply(self.machine.size_declared(None))
        # zst: the frame header, in the first bytes of the body (`_body`)

    async def _xz_tail(self, url: bytes, length: int) -> None:
        size: int | None = None
        try:
            size = await xz_size_from_tail(self._ctx.factory, url, length)
        except Exception as e:  # the size stays unknown until the end; the body decides
            self.log.info("no early size for {key}: {error}", key=str(self.key), error=str(e))
        self._apply(self.machine.size_declared(size))

    def _body(self, generation: int, data: bytes) -> None:
        if self._ctx.metrics is not None:
            self._ctx.metrics.upstream_bytes(len(data))
        head = self._zstd_head
        if head is not None and not self.machine.size_settled and generation == self.machine.generation:
            if self.machine.received == 0:
                head.restart()
            decided, size = head.feed(data)
            if decided:
                self._apply(self.machine.body(generation, data))
                self._apply(self.machine.size_declared(size))
                return
        self._apply(self.machine.body(generation, data))

    def _decoder(self) -> Decoder:
        return make_decoder(self._compression, self._ctx.max_output)

    # --- carrying out effects --------------------------------------------------------------

    def _apply(self, effects: list[t.Effect], response: IResponse | None = None) -> None:
        attached = False
        for effect in effects:
            if isinstance(effect, t.Attach):
                assert response is not None
                attached = True
                self._transport = None
                response.deliverBody(_BodyReceiver(self, effect.generation))
            else:
                self._do(effect)
        if response is not None and not attached:
            response.deliverBody(_Abandon())

    def _do(self, effect: t.Effect) -> None:
        m = self.machine
        reactor = self._ctx.reactor
        match effect:
            case t.PauseUpstream():
                if self._transport is not None:
                    self._transport.pauseProducing()
            case t.ResumeUpstream():
                if self._transport is not None:
                    self._transport.resumeProducing()
            case t.StopUpstream():
                if self._transport is not None:
                    self._transport.stopProducing()
                self._transport = None
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
                self._in_pool(self._writer_or_fail().finish).addCallbacks(
                    lambda result: self._apply(m.finished(*result)), self._write_failed
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
                self._open_resume(offset)
            case t.OpenFresh():
                self._open_resume(None)
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

    # --- upstream events -----------------------------------------------------------------

    def _transport_for(self, generation: int, transport: IPushProducer) -> None:
        if generation == self.machine.generation:
            self._transport = transport
        else:
            transport.stopProducing()

    def _body_ended(self, generation: int, reason: Failure) -> None:
        if generation == self.machine.generation:
            self._transport = None
        compressed = self._compression != "none"
        # without Content-Length the end of the connection is the end of the body; the
        # decoder's end-of-stream check then tells a truncated one
        clean = bool(reason.check(ResponseDone) or (reason.check(PotentialDataLoss) and compressed))
        self._apply(self.machine.body_ended(generation, clean))

    def _idle(self) -> None:
        self._idle_call = None
        self._apply(self.machine.idle_timeout(self._ctx.idle_timeout))

    def _resume_due(self) -> None:
        self._resume_call = None
        self._apply(self.machine.resume_due())

    def _open_resume(self, offset: int | None) -> None:
        with tracing.current(self.span):  # its factory calls are the download's children
            Deferred.fromCoroutine(self._resume(offset, self.machine.generation))

    async def _resume(self, offset: int | None, generation: int) -> None:
        m = self.machine
        factory = self._ctx.factory
        try:
            if offset is not None and self._range_url is not None:
                response = await factory.open_range(self._range_url, offset)
                start, total = content_range(response)
                effects = m.range_opened(generation, response.code, start, total)
                if any(isinstance(e, t.Attach) for e in effects):
                    self.log.info("resumed {key} at compressed byte {offset}", key=str(self.key), offset=offset)
                self._apply(effects, response)
                return
            response = await factory.open_image(self._path)
        except Exception as e:
            self._apply(m.resume_failed(generation, as_talos_error(e, "image download").message))
            return
        length = None if response.length is UNKNOWN_LENGTH else response.length
        self._apply(m.fresh_opened(generation, length), response)

    # --- the writer's progress -----------------------------------------------------------

    def _progress_from_thread(self, size: int) -> None:
        self._ctx.reactor.callFromThread(self._progress, size)

    def _progress(self, size: int) -> None:
        self._apply(self.machine.progress(size))

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
