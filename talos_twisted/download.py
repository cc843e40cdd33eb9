"""One in-flight download per cache key, written to a temp file that clients follow.

The upstream body is queued in the reactor and handed, one batch at a time, to a writer
in a dedicated thread pool (decompress, hash, sparse write). The upstream transport is
paused when the queue passes a high-water mark: it is paced by decompression and disk
only, never by a client.
"""

from __future__ import annotations

import os
import random
import re
from collections import deque
from typing import Any, Callable, TypeAlias, cast

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from talos_twisted.cache import CacheEntry, CacheStore
from talos_twisted.decompress import Decoder, DecompressError, make_decoder
from talos_twisted.factory import FactoryClient, RetryPolicy, UpstreamError, classify
from talos_twisted.request import ImageKey, ResolvedImage
from talos_twisted.writer import ImageChanged, ImageWriter

HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1 * 1024 * 1024
MAX_BATCH = 1 * 1024 * 1024

CONNECTING, STREAMING, COMMITTED, FAILED = "connecting", "streaming", "committed", "failed"


class _BodyReceiver(Protocol):
    def __init__(self, download: "Download", generation: int):
        self._download = download
        self._generation = generation  # which attempt this body belongs to

    def dataReceived(self, data: bytes) -> None:
        self._download._data(data, self.transport, self._generation)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._download._eof(reason, self._generation)


class _Restart:
    """A queue marker: decode from byte 0 again with a new decoder, verifying the replay."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder


# what the reactor hands to the writer thread, in order: body bytes, or a restart marker
_QueueItem: TypeAlias = bytes | _Restart


def _range_start(response: Any) -> tuple[int, int | None] | None:
    """(first byte, total) of a 206's Content-Range, or None."""
    value = (response.headers.getRawHeaders(b"content-range") or [b""])[0].decode("latin-1")
    m = re.match(r"^bytes (\d+)-(\d+)/(\d+|\*)$", value.strip())
    if m is None:
        return None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


class _Abandon(Protocol):
    def connectionMade(self) -> None:
        # a response body's transport is a producer (_newclient.TransportProxyProducer)
        cast(IPushProducer, self.transport).stopProducing()


class Download:
    log = Logger()

    def __init__(
        self,
        image: ResolvedImage,
        *,
        reactor: Any,  # IReactorTime + IReactorThreads, injected
        pool: ThreadPool,
        cache: CacheStore,
        factory: FactoryClient,
        compression: str = "xz",
        idle_timeout: float = 120.0,
        slots: DeferredSemaphore | None = None,
        max_output: int = 1024 * 1024,
        max_resumes: int = 3,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
    ):
        self.image = image
        self.key: ImageKey = image.key
        self._reactor = reactor
        self._pool = pool
        self._cache = cache
        self._factory = factory
        self._compression = compression
        self._idle_timeout = idle_timeout
        self._slots = slots
        self._max_output = max_output
        self._max_resumes = max_resumes
        self._retry = retry
        self._rng = rng or random.Random()
        self._resumes = 0
        self._resume_call: Any = None
        self._generation = 0
        self._expected_end: int | None = None
        self._range_url: bytes | None = None
        self._path = ""

        self.state = CONNECTING
        self.available = 0  # decompressed bytes readable from the temp file
        self.received = 0  # compressed bytes from upstream
        self.fd: int | None = None
        self.temp_path: str | None = None
        self.entry: CacheEntry | None = None
        self.error: UpstreamError | None = None
        self.sha256: str | None = None
        self.started = reactor.seconds()

        self._listeners: list[Callable[[], None]] = []
        self._queue: deque[_QueueItem] = deque()
        self._queued = 0
        self._busy = False
        self._eof_seen = False
        self._transport: Any = None
        self._paused = False
        self._idle_call: Any = None
        self._writer: ImageWriter | None = None
        self._holding_slot = False
        self._settled: list[Deferred[Download]] = []
        self.is_settled = False  # ended, and the temp file and fd are dealt with

    # --- observers -------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.state in (COMMITTED, FAILED)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """`listener()` is called after every change of `available` or `state`."""
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

    def when(self, condition: Callable[[], bool], timeout: float | None) -> Deferred[bool]:
        """A new Deferred firing True once `condition()` holds, False after `timeout`."""
        d: Deferred[bool] = Deferred()
        if condition():
            d.callback(True)
            return d
        call: IDelayedCall | None = None

        def check() -> None:
            if not d.called and condition():
                finish(True)

        def finish(result: bool) -> None:
            self.unsubscribe(check)
            if call is not None and call.active():
                call.cancel()
            if not d.called:
                d.callback(result)

        self.subscribe(check)
        if timeout is not None:
            call = self._reactor.callLater(timeout, finish, False)

        def cancelled(f: Failure) -> Failure:  # cancelled by a departing client
            finish(False)
            return f

        d.addErrback(cancelled)
        return d

    def first_byte(self, timeout: float | None) -> Deferred[bool]:
        return self.when(lambda: self.available > 0 or self.ended, timeout)

    def completed(self, timeout: float | None) -> Deferred[bool]:
        return self.when(lambda: self.ended, timeout)

    # --- running ---------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        try:
            if self._slots is not None:
                await self._slots.acquire()
                self._holding_slot = True
            remote_id = await self._factory.ensure_schematic(self.image.schematic)
            self._path = self.image.factory_path(self._compression).replace(self.image.schematic.id, remote_id)
            response = await self._factory.open_image(self._path)
        except Exception as e:
            self._fail(classify(e, "image download"))
            return
        if self.ended:  # cancelled while the factory was building
            response.deliverBody(_Abandon())
            return
        try:
            self.temp_path = self._cache.temp_path(self.key)
            self.fd = os.open(self.temp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            self._fail(UpstreamError(503, f"cannot write to the cache: {e.strerror}", retry_after=60))
            return
        self._writer = ImageWriter(self.fd, self._decoder(), on_progress=self._progress_from_thread)
        self.state = STREAMING
        self.log.info("downloading {key} from {path}", key=str(self.key), path=self._path)
        self._attach(response, 0)

    def _decoder(self) -> Decoder:
        return make_decoder(self._compression, self._max_output)

    def _attach(self, response: Any, offset: int) -> None:
        """Take the body of `response`, which starts at compressed offset `offset`."""
        self._generation += 1
        self._paused = False
        self._transport = None
        self.received = offset
        length = None if response.length is UNKNOWN_LENGTH else response.length
        self._expected_end = None if length is None else offset + length
        if offset == 0:
            accepts = (response.headers.getRawHeaders(b"accept-ranges") or [b""])[0].lower()
            # where the server says it honours Range (an object store behind a redirect),
            # a broken transfer can continue from the compressed offset reached
            self._range_url = response.request.absoluteURI if accepts == b"bytes" and length else None
        self._touch_idle()
        response.deliverBody(_BodyReceiver(self, self._generation))

    def _interrupted(self, message: str) -> None:
        """The upstream body broke off: resume it, or give up after a few attempts."""
        if self.ended:
            return
        self._generation += 1  # whatever the old response still says is ignored
        self._stop_idle()
        if self._transport is not None:
            self._transport.stopProducing()
            self._transport = None
        if self._resumes >= self._max_resumes:
            self._fail(UpstreamError(502, f"{message}; gave up after {self._resumes} resumed attempts"))
            return
        delay = self._retry.delay(self._resumes, self._rng)
        self._resumes += 1
        self.log.info(
            "resuming {key} in {delay:.2f}s after: {why}", key=str(self.key), delay=delay, why=message
        )
        self._resume_call = self._reactor.callLater(delay, lambda: Deferred.fromCoroutine(self._resume(message)))

    async def _resume(self, why: str) -> None:
        self._resume_call = None
        if self.ended:
            return
        generation = self._generation
        try:
            if self._range_url is not None and self.received > 0:
                response = await self._factory.open_range(self._range_url, self.received)
                if self.ended or generation != self._generation:
                    response.deliverBody(_Abandon())
                    return
                if response.code == 206 and _range_start(response) == (self.received, self._expected_end):
                    self.log.info("resumed {key} at compressed byte {offset}", key=str(self.key), offset=self.received)
                    self._attach(response, self.received)
                    return
                response.deliverBody(_Abandon())
            response = await self._factory.open_image(self._path)
        except Exception as e:
            if not self.ended and generation == self._generation:
                self._interrupted(f"{why}; resuming failed: {classify(e, 'image download').message}")
            return
        if self.ended or generation != self._generation:
            response.deliverBody(_Abandon())
            return
        # from byte 0 again: the bytes already written are decoded anew and must be identical
        self.log.info("re-downloading {key} from the start, checking the bytes already written", key=str(self.key))
        self._queue.append(_Restart(self._decoder()))
        self._attach(response, 0)

    def _progress_from_thread(self, size: int) -> None:
        self._reactor.callFromThread(self._progress, size)

    def _progress(self, size: int) -> None:
        if size > self.available and not self.ended:
            self.available = size
            self._notify()

    def _touch_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_timeout)
        elif not self._eof_seen:
            self._idle_call = self._reactor.callLater(self._idle_timeout, self._idle)

    def _idle(self) -> None:
        self._idle_call = None
        self._interrupted(f"the image factory sent no data for {self._idle_timeout:g}s mid-download")

    def _data(self, data: bytes, transport: Any, generation: int) -> None:
        if self.ended or generation != self._generation:
            return
        self._transport = transport
        self.received += len(data)
        self._queue.append(data)
        self._queued += len(data)
        self._touch_idle()
        if self._queued > HIGH_WATER and not self._paused:
            self._paused = True
            transport.pauseProducing()
        self._pump()

    def _eof(self, reason: Failure, generation: int) -> None:
        if self.ended or generation != self._generation:
            return
        self._stop_idle()
        self._transport = None
        clean = reason.check(ResponseDone) or (reason.check(PotentialDataLoss) and self._compression != "none")
        if clean and (self._expected_end is None or self.received == self._expected_end):
            # without a length, the decoder's own end-of-stream check tells truncation
            self._eof_seen = True
            self._pump()
        elif self._expected_end is not None:
            self._interrupted(f"the image factory sent {self.received} of {self._expected_end} bytes")
        else:
            self._interrupted(f"the download from the image factory broke off after {self.received} bytes")

    def _pump(self) -> None:
        if self._busy or self.ended:
            return
        assert self._writer is not None
        head = self._queue[0] if self._queue else None
        if isinstance(head, _Restart):
            self._queue.popleft()
            self._busy = True
            restarted = deferToThreadPool(self._reactor, self._pool, self._writer.restart, head.decoder)
            restarted.addCallbacks(self._wrote, self._write_failed, callbackArgs=(0,))
        elif head is not None:
            parts: list[bytes] = []
            size = 0
            while self._queue and size < MAX_BATCH:
                part = self._queue[0]
                if isinstance(part, _Restart):
                    break  # the batch ends at a restart marker
                self._queue.popleft()
                parts.append(part)
                size += len(part)
            batch = b"".join(parts)
            self._busy = True
            wrote = deferToThreadPool(self._reactor, self._pool, self._writer.write, batch)
            wrote.addCallbacks(self._wrote, self._write_failed, callbackArgs=(size,))
        elif self._eof_seen:
            self._busy = True
            finished = deferToThreadPool(self._reactor, self._pool, self._writer.finish)
            finished.addCallbacks(self._finished, self._write_failed)

    def _wrote(self, available: int, size: int) -> None:
        self._busy = False
        self._queued -= size
        if self.ended:
            self._cleanup()
            return
        if self._paused and self._queued < LOW_WATER:
            self._paused = False
            if self._transport is not None:
                self._transport.resumeProducing()
        self._progress(available)
        self._pump()

    def _write_failed(self, failure: Failure) -> None:
        self._busy = False
        if failure.check(DecompressError):
            self._fail(UpstreamError(502, f"the image from the image factory is corrupt: {failure.value}"))
        elif failure.check(ImageChanged):
            self._fail(UpstreamError(502, f"the image factory sent a different image when the download was resumed: {failure.value}"))
        elif failure.check(OSError):
            err = failure.value
            # an operational fault (disk full, I/O error), not a bug: no traceback
            self.log.error("writing {key} to the cache failed: {error}", key=str(self.key), error=str(err))
            self._fail(UpstreamError(503, f"cannot write to the cache: {getattr(err, 'strerror', None) or err}", retry_after=60))
        else:
            self.log.failure("download of {key} failed", failure, key=str(self.key))
            self._fail(UpstreamError(500, "internal error while writing the image"))
        self._cleanup()

    def _finished(self, result: tuple[int, str]) -> None:
        self._busy = False
        if self.ended:
            self._cleanup()
            return
        size, sha256 = result
        info = {
            "version": self.image.version,
            "extensions": list(self.image.schematic.extensions),
            "overlay": self.image.schematic.overlay.name if self.image.schematic.overlay else None,
            "schematic": self.image.schematic.to_yaml(),
            "compressed_bytes": self.received,
        }
        assert self.temp_path is not None
        try:
            entry = self._cache.commit(self.key, self.temp_path, size, sha256, info)
        except OSError as e:
            self._fail(UpstreamError(503, f"cannot write to the cache: {e.strerror or e}", retry_after=60))
            self._cleanup()
            return
        self.available = size
        self.entry = entry
        self.sha256 = sha256
        self.state = COMMITTED
        elapsed = self._reactor.seconds() - self.started
        self.log.info(
            "cached {key}: {size} bytes from {received} compressed in {seconds:.1f}s, sha256 {sha256}",
            key=str(self.key), size=size, received=self.received, seconds=elapsed, sha256=sha256,
        )
        self._close_fd()
        self._release()
        self._notify()
        self._settle()

    def _fail(self, error: UpstreamError) -> None:
        if self.ended:
            return
        self.state = FAILED
        self.error = error
        self.log.warn("download of {key} failed: {error}", key=str(self.key), error=error.message)
        self._stop_idle()
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        if self._transport is not None and not self._eof_seen:
            self._transport.stopProducing()
        self._transport = None
        self._queue.clear()
        self._release()
        self._notify()
        if not self._busy:
            self._cleanup()

    def _cleanup(self) -> None:
        # only once the writer thread is done with the fd: closing under it could let a
        # reused fd number receive its writes
        self._close_fd()
        if self.temp_path is not None and self.state == FAILED:
            self._cache.discard(self.temp_path)
        self._settle()

    def _settle(self) -> None:
        self.is_settled = True
        waiters, self._settled = self._settled, []
        for d in waiters:
            d.callback(self)

    def settled(self) -> Deferred[Download]:
        """A new Deferred firing once the download has ended and nothing of it is left open."""
        d: Deferred[Download] = Deferred()
        if self.is_settled:
            d.callback(self)
        else:
            self._settled.append(d)
        return d

    def cancel(self, reason: str) -> None:
        self._fail(UpstreamError(503, reason, retry_after=30))

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _stop_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _release(self) -> None:
        if self._holding_slot and self._slots is not None:
            self._holding_slot = False
            self._slots.release()


class Downloads:
    """The registry of in-flight downloads: at most one per cache key."""

    log = Logger()

    def __init__(self, make: Callable[[ResolvedImage], Download]):
        self._make = make
        self._active: dict[ImageKey, Download] = {}
        self._unsettled: set[Download] = set()

    def get(self, key: ImageKey) -> Download | None:
        return self._active.get(key)

    def __len__(self) -> int:
        return len(self._active)

    def active(self) -> list[Download]:
        return list(self._active.values())

    def get_or_start(self, image: ResolvedImage) -> tuple[Download, bool]:
        """The download of `image`, and whether it was already running (a JOIN)."""
        existing = self._active.get(image.key)
        if existing is not None and not existing.ended:
            return existing, True
        download = self._make(image)
        self._active[image.key] = download

        def forget() -> None:
            if download.ended and self._active.get(download.key) is download:
                del self._active[download.key]
                download.unsubscribe(forget)

        download.subscribe(forget)
        self._unsettled.add(download)
        download.settled().addCallback(self._unsettled.discard)
        download.start().addErrback(lambda f: self.log.failure("download crashed", f))
        return download, False

    def quiesce(self) -> Deferred[list[Download]]:
        """Fires once every download started so far has settled (tests, shutdown)."""
        return gatherResults([d.settled() for d in list(self._unsettled)])

    def stop(self) -> Deferred[list[Download]]:
        """Abort every running download (daemon shutdown) and wait until they have settled."""
        for download in list(self._active.values()):
            download.cancel("the server is shutting down")
        return self.quiesce()
