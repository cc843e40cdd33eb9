"""The HTTP/1.1 server layer in front of the Klein app, for an open network.

`make_site` returns a `twisted.web.server.Site` whose channel and request enforce
`ServerLimits` and answer what must never reach the app: a request head is timed as a whole
(not reset per byte), lines and heads are bounded (414, 431), only POST may carry a body and
only a small one, kept in memory (413), connections are counted in total and per client
(503 + Retry-After), and the request target is checked and made an absolute path before
routing (400 / 404 JSON, absolute-form served as its path). Every answer from this layer is
JSON `{"error": ..., "status": N}` and never echoes the Host header.

The pure checks of request lines, header lines and targets are in `talos_twisted.connlimits`.
"""

from __future__ import annotations

import json
from enum import Enum
from io import BytesIO
from typing import Any, Iterable, cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from talos_twisted.connlimits import (
    HOST, ConnectionTable, Fault, LogThrottle, Refusal, ServerLimits, TargetError, client_key, error_response,
    header_line_error, linger_and_close, origin_form, request_line_error,
)
from talos_twisted import tracing
from talos_twisted.logs import access_event
from talos_twisted.metrics import Metrics

__all__ = ["ServerLimits", "TargetError", "make_site", "origin_form", "request_line_error"]

# Any stays for the connection's transport where Twisted types it too narrowly (IPushProducer,
# ITransport: it is the TCP transport, also an IConsumer and an ITCPTransport) and for the
# arguments passed through to Twisted's Request.

# module-level: a Logger class attribute would take its class's name as namespace
_access_log = Logger(namespace="talos_twisted.access")


class _Phase(Enum):
    HEAD = "head"  # receiving a request head: request_header_timeout runs, not reset by bytes
    BODY = "body"  # receiving a POST body: request_body_timeout runs
    BUSY = "busy"  # the app has the request: no timeout (a download may stream for hours)
    IDLE = "idle"  # keep-alive between requests: idle_timeout runs


class LimitedChannel(HTTPChannel):
    """HTTPChannel with the limits of one connection; `refuse` answers and closes."""

    site: LimitedSite

    def __init__(self, site: LimitedSite, key: str):
        HTTPChannel.__init__(self)
        self.limits = site.limits
        self.site = site
        self._key = key
        self.received = 0  # bytes read from the client, for tests and diagnostics
        self.closing = False  # answered or timed out: input is dropped until the close
        self._phase = _Phase.HEAD
        self._awaiting_request_line = True
        self._head_bytes = 0
        self._header_count = 0
        self._method = b""
        self._version = b""
        self._linger: IDelayedCall | None = None
        self._counted = False
        self.MAX_LENGTH = self.limits.max_request_line
        # Twisted's own limits stay as a backstop; ours are checked first and answer 431
        self.maxHeaders = self.limits.max_headers
        self.totalHeadersSize = 2 * self.limits.max_header_size
        # a new connection owes a head at once (Twisted annotates timeOut as int; floats work)
        self.timeOut = self.limits.request_header_timeout  # type: ignore[assignment]
        self.callLater = site.clock.callLater  # type: ignore[method-assign, assignment]

    # --- the connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.site.connections.opened(self._key)
        self.site.channels.add(self)
        self._counted = True
        if self.site.metrics is not None:
            self.site.metrics.connection_opened()
        HTTPChannel.connectionMade(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self._counted:
            self._counted = False
            self.site.connections.closed(self._key)
            self.site.channels.discard(self)
            if self.site.metrics is not None:
                self.site.metrics.connection_closed()
        HTTPChannel.connectionLost(self, reason)

    def refuse(self, status: int, message: str, limit: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer `status` with a JSON error and close, reading and dropping what follows."""
        if self.closing or self.transport is None:
            return
        self.site.refused(self._key, limit, message)
        self.transport.write(error_response(status, message, headers, body=self._method != b"HEAD"))
        self._close()

    def _close(self) -> None:
        # from here on input is read and dropped; the close is bounded even if the client
        # reads nothing (Twisted's loseConnection would wait for the write buffer forever)
        assert self.transport is not None
        self.closing = True
        HTTPChannel.setTimeout(self, None)
        producer: Any = self._networkProducer  # the transport, registered with us as its producer
        producer.unregisterProducer()
        self._linger = linger_and_close(self.transport, self.site.clock)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's bare 400 for what our own checks did not name (chunk framing, ...)
        self.refuse(400, "the request is not valid HTTP/1.1 (header or body framing)", "http_syntax")

    def timeoutConnection(self) -> None:
        if self._phase is _Phase.IDLE:
            self._close()  # nothing was asked: a plain close, no 408 (RFC 9112 §9.5)
        elif self._phase is _Phase.BODY:
            secs = self.limits.request_body_timeout
            self.refuse(408, f"the request body did not arrive within {secs:g} seconds", "request_body_timeout")
        else:
            secs = self.limits.request_header_timeout
            self.refuse(408, f"the request head did not arrive within {secs:g} seconds", "request_header_timeout")

    # --- receiving -----------------------------------------------------------------------

    def _begin_head(self) -> None:
        self._phase = _Phase.HEAD
        self._awaiting_request_line = True
        self._head_bytes = self._header_count = 0
        self._method = self._version = b""
        self.MAX_LENGTH = self.limits.max_request_line
        HTTPChannel.setTimeout(self, self.limits.request_header_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.closing:
            return  # lingering: read and dropped
        if self._phase is _Phase.IDLE:
            self._begin_head()
        # not HTTPChannel.dataReceived: it resets the timeout on every byte (slow loris)
        LineReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._awaiting_request_line:
            self.refuse(414, f"the request line is longer than {self.limits.max_request_line} bytes", "max_request_line")
        else:
            self.refuse(431, f"the request head is larger than {self.limits.max_header_size} bytes", "max_header_size")

    def lineReceived(self, line: bytes) -> None:
        if self.closing:
            return
        if self._phase is _Phase.IDLE:
            self._begin_head()  # a pipelined request, read from the buffer after an answer
        self._head_bytes += len(line) + 2
        error: Fault | None = None
        if self._awaiting_request_line:
            if line:  # Twisted skips one empty line before a request line, and refuses more
                error = request_line_error(line)
                if error is None:
                    self._method, _, self._version = line.split(b" ")
                    self._awaiting_request_line = False
        elif self._head_bytes > self.limits.max_header_size:
            error = 431, f"the request head is larger than {self.limits.max_header_size} bytes", "max_header_size"
        elif line[:1] in (b" ", b"\t"):
            error = 400, "obsolete header line folding is not accepted", "http_syntax"
        elif line:
            self._header_count += 1
            if self._header_count > self.limits.max_headers:
                error = 431, f"the request has more than {self.limits.max_headers} header fields", "max_headers"
            else:
                error = header_line_error(line)
        if error is not None:
            self.refuse(*error)
            return
        # the next line, with its CRLF, must fit in what is left of the head's budget
        self.MAX_LENGTH = self.limits.max_header_size - self._head_bytes - 2
        HTTPChannel.lineReceived(self, line)

    def allHeadersReceived(self) -> None:
        if self.closing:
            return
        error = self._head_error(self.requests[-1])
        if error is not None:
            self.refuse(*error)
            return
        if self.length != 0:
            self._phase = _Phase.BODY
            HTTPChannel.setTimeout(self, self.limits.request_body_timeout)
        HTTPChannel.allHeadersReceived(self)

    def _head_error(self, request: http.Request) -> Fault | None:
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) > 1:
            return 400, "the request has more than one Host header", "http_syntax"
        if not hosts and self._version == b"HTTP/1.1":
            return 400, "an HTTP/1.1 request must have a Host header", "http_syntax"
        if hosts and not HOST.fullmatch(hosts[0]):
            return 400, "the Host header is not a valid host[:port]", "http_syntax"
        if self.length != 0:  # Content-Length > 0, or chunked (None)
            if self._method != b"POST":
                return 413, f"a {self._method.decode('ascii')} request must not have a body", "request_body"
            if self.length is not None and self.length > self.limits.max_post_body:
                return 413, f"the request body is larger than {self.limits.max_post_body} bytes", "max_post_body"
        return None

    def rawDataReceived(self, data: bytes) -> None:
        if not self.closing:
            HTTPChannel.rawDataReceived(self, data)

    def allContentReceived(self) -> None:
        if not self.closing:
            self._phase = _Phase.BUSY  # Twisted stops the timer before handing the request over
            HTTPChannel.allContentReceived(self)

    def requestDone(self, request: http.Request) -> None:
        # Twisted restarts the timer with _savedTimeOut and replays pipelined bytes
        self._phase = _Phase.IDLE
        self._savedTimeOut = self.limits.idle_timeout
        HTTPChannel.requestDone(self, request)
        if self._phase is _Phase.IDLE and self._buffer and not self.closing:
            self._begin_head()  # part of the next request is already buffered


class LimitedRequest(Request):
    """Request whose body is in memory and bounded, whose target is checked before routing,
    which never reports the client's Host header as its host name, and which is logged once
    (by the site) when it is finished or its connection is lost."""

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any):  # as Twisted's Request
        Request.__init__(self, channel, *args, **kwargs)
        # only a LimitedChannel makes one (it is LimitedSite's requestFactory)
        self.received_at: float = cast(LimitedChannel, channel).site.clock.seconds()  # the request line arrived
        self.unlogged = False  # processed and not yet in the access log
        self.trace_span: tracing.Span | None = None  # from process() to the access log

    def gotLength(self, length: int | None) -> None:
        # never Twisted's unnamed temporary file: bodies are bounded, so memory is enough
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if not isinstance(channel, LimitedChannel) or channel.closing:
            return
        content = cast(BytesIO, self.content)  # gotLength's (Twisted types it Any | None)
        limit = channel.limits.max_post_body
        if content.tell() + len(data) > limit:
            channel.refuse(413, f"the request body is larger than {limit} bytes", "max_post_body")
            return
        content.write(data)

    def getRequestHostname(self) -> bytes:
        # Klein hands this to werkzeug, which puts it in URLs: our address, never the Host header
        host = getattr(Request.getHost(self), "host", None)
        if not isinstance(host, str):
            return b"localhost"
        return (f"[{host}]" if ":" in host else host).encode("ascii", "replace")

    def process(self) -> None:
        self.unlogged = True  # from here on it is the app's (or our answer's): log it
        # the request's span is current while the route starts: what it starts is its child
        self.trace_span = tracing.start_request(self)
        token = tracing.attach(self.trace_span)
        try:
            self._route()
        finally:
            tracing.detach(token)

    def _route(self) -> None:
        try:
            target = origin_form(self.uri)
        except TargetError as e:
            self.answer(e.status, e.message)
            return
        if target != self.uri:
            self.uri = target
            self.path = target.split(b"?", 1)[0]
        Request.process(self)

    def connectionLost(self, reason: Failure) -> None:
        site = getattr(self.channel, "site", None)  # Twisted forgets the channel here
        Request.connectionLost(self, reason)
        if isinstance(site, LimitedSite):
            site.access(self, completed=False)  # a client gone mid-answer is logged too

    def processingFailed(self, reason: Failure) -> Failure:
        # Twisted's is an HTML page; ours is the one JSON shape, and never a traceback
        self._log.failure("unhandled error rendering {method} {path}", reason, method=self.method, path=self.path)
        if self._disconnected:
            pass  # nobody to tell
        elif self.startedWriting:
            transport: Any = self.channel.transport if self.channel is not None else None
            if transport is not None:
                transport.abortConnection()  # a started answer cannot become an error
        else:
            self.answer(500, "internal error in the HTTP server; see the daemon's log")
        return reason

    def answer(self, status: int, message: str) -> None:
        """Finish with a JSON error (headers only for HEAD)."""
        body = json.dumps({"error": message, "status": status}).encode() + b"\n"
        self.setResponseCode(status)
        for name, value in (
            (b"Date", datetimeToString()), (b"Content-Type", b"application/json"),
            (b"Cache-Control", b"no-store"), (b"Content-Length", b"%d" % len(body)),
        ):
            self.responseHeaders.setRawHeaders(name, [value])
        Request.write(self, body)
        Request.finish(self)


class LimitedSite(Site):
    """Site with the limits, and our access log (one structured event per request, in
    place of twisted.web's combined-log line) and request metrics."""

    requestFactory = LimitedRequest

    def __init__(self, resource: IResource, limits: ServerLimits, clock: IReactorTime, metrics: Metrics | None = None):
        # form bodies are not parsed into args: the app reads a body itself, if it wants one
        Site.__init__(self, resource, reactor=clock, parsePOSTFormSubmission=False)
        self.limits = limits
        self.clock = clock
        self.connections = ConnectionTable(limits)
        self.channels: set[LimitedChannel] = set()
        self.throttle = LogThrottle(clock)
        self.metrics = metrics

    def buildProtocol(self, addr: IAddress) -> Protocol:  # type: ignore[override]
        key = client_key(addr)
        limit = self.connections.over_limit(key)
        if limit is not None:
            self.refused(key, limit, "connection refused with 503")
            return Refusal(self.connections, self.clock, limit)
        channel = LimitedChannel(self, key)
        channel.factory = self
        channel.requestFactory = self.requestFactory
        return channel

    def refused(self, key: str, limit: str, message: str) -> None:
        self.throttle.refused(key, limit, message)
        if self.metrics is not None:
            self.metrics.connection_refused(limit)

    def log(self, request: http.Request) -> None:
        # twisted.web calls this from Request.finish; its combined-log line is not written
        if isinstance(request, LimitedRequest):  # every request of this site is (requestFactory)
            self.access(request, completed=True)

    def access(self, request: LimitedRequest, completed: bool) -> None:
        if not request.unlogged:
            return  # refused before processing (the refusal is logged), or logged already
        request.unlogged = False
        duration = self.clock.seconds() - request.received_at
        fmt, fields = access_event(request, duration, completed)
        _access_log.info(fmt, **fields)
        tracing.end_request(request, fields)
        if self.metrics is not None:
            self.metrics.request_done(fields["route"], fields["status"], fields["cache"], fields["bytes"], duration)

    def acceptableProtocols(self) -> list[bytes]:
        # HTTP/1.1 only: the limits live in the HTTP/1.1 channel, and h2 would bypass them
        return [b"http/1.1"]


def make_site(
    resource: IResource, limits: ServerLimits, clock: IReactorTime, metrics: Metrics | None = None
) -> IProtocolFactory:
    """The protocol factory to listen with (any endpoint: tcp:, ssl:, unix:); `metrics`
    counts requests and connections (None: not counted). `clock` also times requests."""
    return LimitedSite(resource, limits, clock, metrics)
