"""Optional OpenTelemetry tracing (``pip install 'talos-images[otel]'``); a no-op without it.

This is the only module that imports opentelemetry. What it traces:

- **a span per request** (SERVER), started by the server layer when a request is handed
  to the app (`httpserver.LimitedRequest.process`) and ended where its access-log event is
  written (`LimitedSite.access`: finished, or the connection lost). It continues the
  client's trace when the request carries a W3C ``traceparent`` (and ``tracestate``)
  header. Its attributes: method, path, route, status, bytes, the client; for images the
  resolved version, arch, platform, schematic, extensions, overlay and the cache outcome
  (``talos.cache``: HIT, MISS, JOIN). The span is kept on the request (``trace_span``).
- **a span per factory call** (CLIENT): every HTTP call of `FactoryClient` (metadata,
  schematic POST, image GET up to its response head, ranged GETs), with the method, the
  URL path, the status and the outcome (``ok`` or the error kind of the metrics); the call
  carries ``traceparent`` to the factory.
- **a span per download** (INTERNAL), from its start until it settles, with the image's
  key, the bytes written and compressed bytes received, and the outcome.

Parenting. Twisted's coroutines (``Deferred.fromCoroutine``, Klein's async routes) run in
a copy of the contextvars context they were started in, and OpenTelemetry's current span
lives in that context. The request span is made current only for the synchronous part of
`Request.process`, which is where the route's coroutine starts: everything the route starts
(a factory call, a download) is a child of it. Factory calls and downloads are shared
between requests (single flight), so a shared one is the child of the request that started
it; a request that joins a running download (JOIN) gets a link to that download's span. A
download makes its own span current for what it starts (its factory calls, resumes), so
those are its children. Work started outside any request (prefetch, readiness probes
outside a request) makes root spans.

Providers. Spans go to the global tracer provider, or to one given to `set_provider`
(tests). While there is none (the API's default proxy), nothing is created at all: the cost
per request is a function call and an isinstance check. `install_from_environment` (called
by ``twistd talos-images``) sets up the SDK when ``OTEL_TRACES_EXPORTER`` names exporters
and no provider is set yet (``opentelemetry-instrument`` may have set one): the standard
``OTEL_*`` variables configure the exporters, the sampler, the batch processor and the
resource (``service.name`` defaults to ``talos-images``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, cast
from urllib.parse import urlsplit

from twisted.logger import Logger

from talos_twisted import __version__

try:
    from opentelemetry import context as _context, trace as _trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: every function below does nothing
    AVAILABLE = False
else:
    AVAILABLE = True
    _W3C = TraceContextTextMapPropagator()

if TYPE_CHECKING:
    from opentelemetry.trace import Span as Span, Tracer, TracerProvider
    from treq.response import _Response
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure
    from twisted.web.server import Request

    from talos_twisted.factory import FactoryHTTP
    from talos_twisted.httpserver import LimitedRequest
    from talos_twisted.request import ResolvedImage

__all__ = [
    "AVAILABLE", "attach", "current", "describe_image", "detach", "end_download", "end_request", "install_from_environment",
    "link_current", "provider_from_environment", "set_provider", "start_download", "start_request", "traced_http",
]

log = Logger()

TRACER_NAME = "talos_images"

_provider: TracerProvider | None = None  # set_provider's; None: the global one
_tracer_of: tuple[object, Tracer | None] = (None, None)  # (provider, its tracer): a one-entry cache


def set_provider(provider: TracerProvider | None) -> None:
    """Trace to `provider` instead of the global one (None: the global one again)."""
    global _provider, _tracer_of
    _provider = provider
    _tracer_of = (None, None)


def _tracer() -> Tracer | None:
    """The tracer to use now, or None while spans would go nowhere (the cheap path)."""
    global _tracer_of
    if not AVAILABLE:
        return None
    provider = _provider if _provider is not None else _trace.get_tracer_provider()
    if isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)):
        return None  # nothing set up: a span would be a no-op anyway
    cached_provider, tracer = _tracer_of
    if cached_provider is not provider or tracer is None:
        tracer = provider.get_tracer(TRACER_NAME, __version__.public())
        _tracer_of = (provider, tracer)
    return tracer


@contextmanager
def current(span: Span | None) -> Iterator[None]:
    """`span` is the current span inside the block (and in coroutines started there)."""
    if span is None:
        yield
        return
    token = _context.attach(_trace.set_span_in_context(span))
    try:
        yield
    finally:
        _context.detach(token)


def attach(span: Span | None) -> object:
    """Make `span` current until `detach` of the returned token (None: nothing to undo)."""
    if span is None:
        return None
    return _context.attach(_trace.set_span_in_context(span))


def detach(token: object) -> None:
    if token is not None:
        _context.detach(token)  # type: ignore[arg-type]


def _set(span: Span, attributes: Mapping[str, Any]) -> None:
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})


# --- requests -----------------------------------------------------------------------------


def start_request(request: Request) -> Span | None:
    """The span of a request that has just arrived (None: not tracing), continuing the
    trace of its ``traceparent`` header if it has a valid one."""
    tracer = _tracer()
    if tracer is None:
        return None
    headers = request.requestHeaders
    carrier: dict[str, str] = {}
    for name in (b"traceparent", b"tracestate"):
        values = headers.getRawHeaders(name)
        if values:
            # several traceparent lines make an invalid one, which starts a new trace
            carrier[name.decode()] = b",".join(values).decode("latin-1")
    parent = _W3C.extract(carrier, context=_context.Context())
    method = request.method.decode("latin-1")
    return tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes={"http.request.method": method})


def describe_image(request: Request, image: ResolvedImage) -> None:
    """The resolved image of an image request, on its span (a request has one only if it
    is a `LimitedRequest` and tracing is on)."""
    span = getattr(request, "trace_span", None)
    if span is None or not span.is_recording():
        return
    _set(span, {**_image_attributes(image), "talos_images.latest": image.latest})


def _image_attributes(image: ResolvedImage) -> dict[str, Any]:
    schematic = image.schematic
    return {
        "talos_images.version": image.version,
        "talos_images.arch": image.arch,
        "talos_images.platform": image.platform,
        "talos_images.schematic": schematic.id,
        "talos_images.extensions": list(schematic.extensions),
        "talos_images.overlay": schematic.overlay.name if schematic.overlay is not None else None,
    }


def end_request(request: LimitedRequest, fields: Mapping[str, Any]) -> None:
    """End the request's span with the fields of its access-log event (`logs.access_event`)."""
    span = getattr(request, "trace_span", None)
    if span is None:
        return
    request.trace_span = None
    if span.is_recording():
        status = fields.get("status")
        span.update_name(f"{fields.get('method')} {fields.get('route')}")
        query = request.uri.partition(b"?")[2]
        _set(span, {
            "talos_images.route": fields.get("route"),
            "url.path": request.path.decode("latin-1")[:1024],
            "http.response.status_code": status,
            "url.query": query.decode("latin-1")[:1024] if query else None,
            "client.address": fields.get("client"),
            "user_agent.original": fields.get("user_agent"),
            "talos_images.cache": fields.get("cache"),
            "talos_images.version": fields.get("version"),
            "talos_images.schematic": fields.get("schematic"),
            "talos_images.response_bytes": fields.get("bytes"),
            "talos_images.completed": fields.get("completed"),
        })
        if isinstance(status, int) and status >= 500:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))
    span.end()


def link_current(span: Span | None) -> None:
    """Link the current span (a request joining a download) to `span`."""
    if span is None:
        return
    here = _trace.get_current_span()
    if here.is_recording():
        here.add_link(span.get_span_context())


# --- downloads ----------------------------------------------------------------------------


def start_download(image: ResolvedImage) -> Span | None:
    """The span of a download of `image` that starts now: a child of the
    current span (the request that started it), or a root span."""
    tracer = _tracer()
    if tracer is None:
        return None
    span = tracer.start_span("download", kind=SpanKind.INTERNAL)
    _set(span, {"talos_images.key": str(image.key), **_image_attributes(image)})
    return span


def end_download(span: Span | None, outcome: str, raw_bytes: int, compressed_bytes: int, error: str | None) -> None:
    """End a download's span once it has settled; `outcome` is ``committed`` or an error kind."""
    if span is None:
        return
    _set(span, {"talos_images.outcome": outcome, "talos_images.bytes": raw_bytes, "talos_images.compressed_bytes": compressed_bytes})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
        span.set_attribute("error.type", outcome)
    span.end()


# --- factory calls ------------------------------------------------------------------------


class _TracedHTTP:
    """A treq client whose ``get`` / ``post`` make a CLIENT span each (children of the
    current span) and carry ``traceparent``; the rest is the client's own."""

    def __init__(
        self, http: FactoryHTTP, kind_of: Callable[[str], str], outcome_of: Callable[[int | BaseException], str]
    ):
        self._http = http
        self._kind_of = kind_of
        self._outcome_of = outcome_of

    def __getattr__(self, name: str) -> Any:  # whatever else the wrapped client has
        return getattr(self._http, name)

    def get(self, url: str, **kwargs: Any) -> Deferred[_Response]:
        return self._call("GET", self._http.get, url, kwargs)

    def post(self, url: str, **kwargs: Any) -> Deferred[_Response]:
        return self._call("POST", self._http.post, url, kwargs)

    def _call(
        self, method: str, send: Callable[..., Deferred[_Response]], url: str, kwargs: dict[str, Any]
    ) -> Deferred[_Response]:
        tracer = _tracer()
        if tracer is None:
            return send(url, **kwargs)
        parts = urlsplit(url)
        kind = self._kind_of(url)
        # the path only: a redirect target's query may hold a signature
        span = tracer.start_span(f"{method} {kind}", kind=SpanKind.CLIENT, attributes={
            "http.request.method": method,
            "server.address": parts.hostname or "",
            "url.path": parts.path,
            "talos_images.factory.kind": kind,
        })
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, context=_trace.set_span_in_context(span))
        given = kwargs.get("headers")
        if given is None or isinstance(given, dict):
            kwargs["headers"] = {**(given or {}), **carrier}
        else:  # twisted.web.http_headers.Headers
            headers = given.copy()
            for name, value in carrier.items():
                headers.setRawHeaders(name, [value])
            kwargs["headers"] = headers
        try:
            d = send(url, **kwargs)
        except BaseException as e:
            self._failed(span, e)
            raise

        def answered(response: _Response) -> _Response:
            code = response.code
            span.set_attribute("http.response.status_code", code)
            outcome = self._outcome_of(code)
            span.set_attribute("talos_images.outcome", outcome)
            if outcome != "ok":
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(code))
            span.end()
            return response

        def failed(failure: Failure) -> Failure:
            self._failed(span, cast(BaseException, failure.value))  # an errback's failure has a value
            return failure

        d.addCallbacks(answered, failed)
        return d

    def _failed(self, span: Span, error: BaseException) -> None:
        outcome = self._outcome_of(error)
        span.set_attribute("talos_images.outcome", outcome)
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()


def traced_http(
    http: FactoryHTTP, kind_of: Callable[[str], str], outcome_of: Callable[[int | BaseException], str]
) -> FactoryHTTP:
    """`http` (a treq client) with a span per call; `http` itself without opentelemetry.
    `kind_of(url)` names the call (``versions``, ``image``, ...), `outcome_of(status or
    exception)` says ``ok`` or what went wrong."""
    if not AVAILABLE:
        return http
    return _TracedHTTP(http, kind_of, outcome_of)


# --- set-up from the environment ------------------------------------------------------------


def provider_from_environment(environ: Mapping[str, str]) -> TracerProvider | None:
    """An SDK tracer provider exporting to what ``OTEL_TRACES_EXPORTER`` names (comma
    separated: ``otlp``, ``console``, ... — the exporters installed register these names),
    or None: not asked for, ``none``, ``OTEL_SDK_DISABLED``, or no exporter could be loaded."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not AVAILABLE or not names or names == ["none"] or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    try:
        from importlib.metadata import entry_points

        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warn("tracing: OTEL_TRACES_EXPORTER is set but opentelemetry-sdk is not installed; not tracing")
        return None
    exporters = []
    for name in names:
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            log.warn(
                "tracing: no span exporter named {name} is installed (OTEL_TRACES_EXPORTER); for otlp,"
                " pip install opentelemetry-exporter-otlp-proto-http", name=name,
            )
            continue
        try:
            exporters.append(next(iter(found)).load()())
        except Exception as e:
            log.warn("tracing: the span exporter {name} could not be set up: {error}", name=name, error=str(e))
    if not exporters:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "talos-images"}))
    provider = SdkTracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def install_from_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Set the global tracer provider from ``OTEL_*`` variables unless one is set already;
    whether tracing is on afterwards (the start-up of ``twistd talos-images``)."""
    if not AVAILABLE:
        return False
    if not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider):
        return True  # set up already (opentelemetry-instrument, or the embedding program)
    env = os.environ if environ is None else environ
    provider = provider_from_environment(env)
    if provider is None:
        return False
    _trace.set_tracer_provider(provider)
    log.info("tracing: spans are exported with {exporters}", exporters=env.get("OTEL_TRACES_EXPORTER", ""))
    return True
