"""One download's upstream: its requests to the factory and the body being received.

`Upstream` opens the image at the factory (POSTing again, once, a schematic the factory
lost), opens it again after a break (with `Range` from the compressed offset reached where
the first response honoured it, else from the start), reads the raw size as early as the
upstream tells it (the zstd frame header in the body's first bytes, the xz index with a small
ranged request at the end), and holds the transport of the body being received, which the
machine pauses, resumes and stops. It decides nothing: what happened goes to its `Download`'s
`Transfer`, and the effects that answers with are carried out by the download (`_apply`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from talos_twisted import tracing, transfer as t
from talos_twisted.errors import UpstreamNotFound
from talos_twisted.factory_errors import as_talos_error
from talos_twisted.factory_paths import content_range, image_path
from talos_twisted.sizeprobe import ZstdHead, xz_size_from_tail

if TYPE_CHECKING:
    from talos_twisted.download import Download, DownloadContext


class _BodyReceiver(Protocol):
    def __init__(self, upstream: Upstream, generation: int):
        self._upstream = upstream
        self._generation = generation  # which attempt this body belongs to

    def connectionMade(self) -> None:
        # a response body's transport is a producer (_newclient.TransportProxyProducer)
        self._upstream._transport_for(self._generation, cast(IPushProducer, self.transport))

    def dataReceived(self, data: bytes) -> None:
        self._upstream._body(self._generation, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._upstream._body_ended(self._generation, reason)


class _Abandon(Protocol):
    def connectionMade(self) -> None:
        cast(IPushProducer, self.transport).stopProducing()


def response_length(response: IResponse) -> int | None:
    """The response's Content-Length (None: not declared)."""
    return None if response.length is UNKNOWN_LENGTH else response.length


class Upstream:
    """The factory side of `download`; its log lines are the download's."""

    def __init__(self, download: Download, ctx: DownloadContext, compression: str):
        self._download = download
        self._ctx = ctx
        self._compression = compression
        self.path = ""  # the image's path at the factory, once its schematic is known there
        self._range_url: bytes | None = None  # where the first response came from, if it honours Range
        self._transport: IPushProducer | None = None
        self._zstd_head: ZstdHead | None = ZstdHead() if compression == "zst" else None

    # --- the first response ------------------------------------------------------------

    async def open(self) -> IResponse:
        """The image's first response; raises what the factory call raised."""
        d, factory = self._download, self._ctx.factory
        img = d.image
        remote_id = await factory.ensure_schematic(img.schematic)
        self.path = self._factory_path(remote_id)
        try:
            return await factory.open_image(self.path)
        except UpstreamNotFound:
            # a factory that lost the schematic (a self-hosted one restarted without its
            # storage) answers 404 for ever unless it is POSTed again: once, then retry
            d.log.info("the image factory does not know {id}: POSTing it again", id=remote_id)
            factory.forget_schematic(remote_id)
            remote_id = await factory.ensure_schematic(img.schematic)
            self.path = self._factory_path(remote_id)
            return await factory.open_image(self.path)

    def _factory_path(self, remote_id: str) -> str:
        img = self._download.image
        if img.asset:
            return f"/image/{remote_id}/{img.version}/{img.asset}"
        return image_path(remote_id, img.version, img.platform, img.arch, self._compression)

    def opened(self, response: IResponse) -> tuple[int | None, bool]:
        """The first response's length and whether it honours Range (remembered for a resume)."""
        return response_length(response), self._remember_range_url(response)

    def _remember_range_url(self, response: IResponse) -> bool:
        accepts = bool((response.headers.getRawHeaders(b"accept-ranges") or [b""])[0].lower() == b"bytes")
        # where the server says it honours Range (an object store behind a redirect), a
        # broken transfer can continue from the compressed offset reached -- in the body of
        # the response being read: after a fresh GET, that one's URL, not the first one's
        self._range_url = response.request.absoluteURI if accepts else None
        return accepts

    # --- the raw size, as early as the upstream tells it ------------------------------------

    def probe_size(self, length: int | None) -> None:
        d = self._download
        compression = self._compression
        if d.key in self._ctx.distrust:
            d._apply(d.machine.size_declared(None))
        elif compression == "none":
            d._apply(d.machine.size_declared(length))
        elif compression == "xz":
            if self._range_url is not None and length is not None:
                # the total is only in the index at the end: read the footer and index with
                # a small ranged request while the body streams
                with tracing.current(d.span):
                    Deferred.fromCoroutine(self._xz_tail(self._range_url, length))
            else:
                d._apply(d.machine.size_declared(None))
        # zst: the frame header, in the first bytes of the body (`_body`)

    async def _xz_tail(self, url: bytes, length: int) -> None:
        d = self._download
        size: int | None = None
        try:
            size = await xz_size_from_tail(self._ctx.factory, url, length)
        except Exception as e:  # the size stays unknown until the end; the body decides
            d.log.info("no early size for {key}: {error}", key=str(d.key), error=str(e))
        d._apply(d.machine.size_declared(size))

    # --- the body being received -----------------------------------------------------------

    def attach(self, response: IResponse, generation: int) -> None:
        """Receive `response`'s body as attempt `generation`'s."""
        self._transport = None
        response.deliverBody(_BodyReceiver(self, generation))

    def abandon(self, response: IResponse) -> None:
        response.deliverBody(_Abandon())

    def pause(self) -> None:
        if self._transport is not None:
            self._transport.pauseProducing()

    def resume(self) -> None:
        if self._transport is not None:
            self._transport.resumeProducing()

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.stopProducing()
        self._transport = None

    def _transport_for(self, generation: int, transport: IPushProducer) -> None:
        if generation == self._download.machine.generation:
            self._transport = transport
        else:
            transport.stopProducing()

    def _body(self, generation: int, data: bytes) -> None:
        d, m = self._download, self._download.machine
        if self._ctx.metrics is not None:
            self._ctx.metrics.upstream_bytes(len(data))
        head = self._zstd_head
        if head is not None and not m.size_settled and generation == m.generation:
            if m.received == 0:
                head.restart()
            decided, size = head.feed(data)
            if decided:
                d._apply(m.body(generation, data))
                d._apply(m.size_declared(size))
                return
        d._apply(m.body(generation, data))

    def _body_ended(self, generation: int, reason: Failure) -> None:
        d = self._download
        if generation == d.machine.generation:
            self._transport = None
        compressed = self._compression != "none"
        # without Content-Length the end of the connection is the end of the body; the
        # decoder's end-of-stream check then tells a truncated one
        clean = bool(reason.check(ResponseDone) or (reason.check(PotentialDataLoss) and compressed))
        d._apply(d.machine.body_ended(generation, clean))

    # --- after a break ---------------------------------------------------------------------

    def reopen(self, offset: int | None) -> None:
        """Open the image again: from compressed byte `offset` (None: from the start)."""
        d = self._download
        with tracing.current(d.span):  # its factory calls are the download's children
            Deferred.fromCoroutine(self._resume(offset, d.machine.generation))

    async def _resume(self, offset: int | None, generation: int) -> None:
        d, m = self._download, self._download.machine
        factory = self._ctx.factory
        try:
            if offset is not None and self._range_url is not None:
                response = await factory.open_range(self._range_url, offset)
                start, total = content_range(response)
                effects = m.range_opened(generation, response.code, start, total)
                if any(isinstance(e, t.Attach) for e in effects):
                    d.log.info("resumed {key} at compressed byte {offset}", key=str(d.key), offset=offset)
                d._apply(effects, response)
                return
            response = await factory.open_image(self.path)
        except Exception as e:
            d._apply(m.resume_failed(generation, as_talos_error(e, "image download").message))
            return
        if generation == m.generation:
            self._remember_range_url(response)
        d._apply(m.fresh_opened(generation, response_length(response)), response)
