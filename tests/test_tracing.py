"""OpenTelemetry spans (talos_twisted/tracing.py): a span per request, its factory calls and
its download, an incoming traceparent continued; nothing at all without the extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults, succeed

from talos_twisted import tracing

from .conftest import MiB
from .rawhttp import exchange

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

PATH = "/images/talos/v1.11.2/amd64/openstack.raw"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_provider(provider)
    yield exporter
    tracing.set_provider(None)
    provider.shutdown()


def by_kind(exporter, kind):
    return [s for s in exporter.get_finished_spans() if s.kind == kind]


def one(items):
    assert len(items) == 1, items
    return items[0]


@pytest.mark.stack(image_size=4 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_miss_has_a_request_span_with_its_download_and_factory_calls(stack, spans):
    status, headers, body = await exchange(stack.url, PATH + "?extensions=qemu-guest-agent")
    assert status == 200 and headers["x-talos-cache"] == "MISS"
    await stack.app.downloads.quiesce()

    request = one(by_kind(spans, SpanKind.SERVER))
    assert request.name == "GET image"
    assert request.parent is None  # no traceparent: a trace of its own
    a = request.attributes
    assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 200
    assert a["url.path"] == PATH and a["url.query"] == "extensions=qemu-guest-agent"
    assert a["talos_images.route"] == "image" and a["talos_images.cache"] == "MISS"
    assert a["talos_images.version"] == "v1.11.2" and a["talos_images.arch"] == "amd64" and a["talos_images.platform"] == "openstack"
    assert a["talos_images.schematic"] == headers["x-talos-schematic"]
    assert tuple(a["talos_images.extensions"]) == ("siderolabs/qemu-guest-agent",)
    assert "talos_images.overlay" not in a
    assert a["talos_images.response_bytes"] == len(body) == 4 * MiB and a["talos_images.completed"] is True

    download = one(by_kind(spans, SpanKind.INTERNAL))
    assert download.name == "download"
    assert download.context.trace_id == request.context.trace_id
    assert download.parent.span_id == request.context.span_id  # started by this request
    d = download.attributes
    assert d["talos_images.outcome"] == "committed" and d["talos_images.bytes"] == 4 * MiB and d["talos_images.compressed_bytes"] > 0
    assert d["talos_images.schematic"] == headers["x-talos-schematic"] and d["talos_images.key"].startswith("v1.11.2/amd64/")
    assert download.status.status_code is not StatusCode.ERROR

    calls = by_kind(spans, SpanKind.CLIENT)
    assert all(c.context.trace_id == request.context.trace_id for c in calls)
    kinds = {c.attributes["talos_images.factory.kind"]: c for c in calls}
    # metadata: the route's (children of the request); the schematic and the image: the download's
    assert kinds["catalog"].parent.span_id == request.context.span_id
    image = kinds["image"]
    assert image.name == "GET image" and image.parent.span_id == download.context.span_id
    assert image.attributes["url.path"].startswith("/image/") and image.attributes["http.response.status_code"] == 200
    assert image.attributes["talos_images.outcome"] == "ok"
    post = kinds["schematic"]
    assert post.attributes["http.request.method"] == "POST" and post.parent.span_id == download.context.span_id


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_hit_has_only_its_request_span(stack, spans):
    assert (await exchange(stack.url, PATH))[0] == 200
    await stack.app.downloads.quiesce()
    spans.clear()
    status, headers, _ = await exchange(stack.url, PATH)
    assert status == 200 and headers["x-talos-cache"] == "HIT"
    request = one(spans.get_finished_spans())  # no factory call, no download
    assert request.kind == SpanKind.SERVER and request.attributes["talos_images.cache"] == "HIT"
    assert tuple(request.attributes["talos_images.extensions"]) == ()  # no default_extensions


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_an_incoming_traceparent_is_continued(stack, spans):
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    status, _, _ = await exchange(stack.url, "/images/talos/versions", headers={"traceparent": traceparent})
    assert status == 200
    request = one(by_kind(spans, SpanKind.SERVER))
    assert request.context.trace_id == int(TRACE_ID, 16)
    assert request.parent.span_id == int(PARENT_ID, 16) and request.parent.is_remote
    assert request.name == "GET versions"
    call = one(by_kind(spans, SpanKind.CLIENT))  # GET /versions, in the client's trace
    assert call.context.trace_id == int(TRACE_ID, 16) and call.parent.span_id == request.context.span_id


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_malformed_traceparent_starts_a_new_trace(stack, spans):
    status, _, _ = await exchange(stack.url, "/healthz", headers={"traceparent": "00-nonsense-01"})
    assert status == 200
    request = one(spans.get_finished_spans())
    assert request.parent is None and request.name == "GET healthz"


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_request_joining_a_download_links_to_it(stack, spans):
    stack.fake.build_delay = 0.3  # the second request arrives while the first one's download runs
    first, second = await gatherResults([Deferred.fromCoroutine(exchange(stack.url, PATH)) for _ in range(2)])
    await stack.app.downloads.quiesce()
    assert sorted([first[1]["x-talos-cache"], second[1]["x-talos-cache"]]) == ["JOIN", "MISS"]
    download = one(by_kind(spans, SpanKind.INTERNAL))
    requests = {s.attributes["talos_images.cache"]: s for s in by_kind(spans, SpanKind.SERVER)}
    assert download.parent.span_id == requests["MISS"].context.span_id
    assert [link.context.span_id for link in requests["JOIN"].links] == [download.context.span_id]


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_a_failing_factory_call_is_an_error_span(stack, spans):
    stack.fake.fail_next(2, status=404, route="image")  # the image GET, and again after the POST
    status, _, _ = await exchange(stack.url, PATH)
    await stack.app.downloads.quiesce()
    assert status >= 400
    failed = [c for c in by_kind(spans, SpanKind.CLIENT) if c.attributes.get("http.response.status_code") == 404]
    assert failed and all(c.status.status_code is StatusCode.ERROR for c in failed)
    assert failed[0].attributes["talos_images.outcome"] == "upstream_not_found"


def test_outgoing_calls_carry_traceparent(spans):
    sent = []

    class Recorder:
        def get(self, url, **kw):
            sent.append((url, kw))
            return succeed(type("Response", (), {"code": 200})())

    http = tracing.traced_http(Recorder(), lambda url: "versions", lambda r: "ok")
    http.get("http://factory.test/versions", headers={"Accept": "application/json"}, timeout=5)
    (url, kw), = sent
    assert kw["timeout"] == 5 and kw["headers"]["Accept"] == "application/json"
    call = one(spans.get_finished_spans())
    version, trace_id, span_id, flags = kw["headers"]["traceparent"].split("-")
    assert int(trace_id, 16) == call.context.trace_id and int(span_id, 16) == call.context.span_id
    assert call.name == "GET versions" and call.attributes["server.address"] == "factory.test"


def test_without_a_provider_nothing_is_traced():
    # the API's default (a proxy to no-op): no span is made at all, the cheap path
    assert tracing.start_request(object()) is None
    assert tracing.start_download(object()) is None
    with tracing.current(None):
        pass
    tracing.detach(tracing.attach(None))


@pytest.mark.stack(image_size=1 * MiB)
@pytest_twisted.ensureDeferred
async def test_with_the_extra_absent_the_daemon_serves_and_traces_nothing(stack, spans, monkeypatch):
    monkeypatch.setattr(tracing, "AVAILABLE", False)
    status, headers, body = await exchange(stack.url, PATH)
    await stack.app.downloads.quiesce()
    assert status == 200 and len(body) == 1 * MiB
    assert spans.get_finished_spans() == ()


def test_the_module_imports_and_does_nothing_without_opentelemetry():
    code = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry"] = None  # what a missing package looks like to import
        from talos_twisted import tracing
        assert not tracing.AVAILABLE
        http = object()
        assert tracing.traced_http(http, str, str) is http
        assert tracing.start_request(object()) is None and tracing.start_download(object()) is None
        with tracing.current(None):
            tracing.link_current(None)
        tracing.end_request(object(), {})
        tracing.end_download(None, "committed", 0, 0, None)
        assert tracing.install_from_environment({"OTEL_TRACES_EXPORTER": "console"}) is False
        import talos_twisted.tap, talos_twisted.httpserver  # the daemon loads without it
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_sdk_is_set_up_from_the_environment_only_when_asked():
    assert tracing.provider_from_environment({}) is None
    assert tracing.provider_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing.provider_from_environment({"OTEL_TRACES_EXPORTER": "no-such-exporter"}) is None
    assert tracing.provider_from_environment({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) is None
    provider = tracing.provider_from_environment({"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert isinstance(provider, sdk_trace.TracerProvider)
        assert provider.resource.attributes["service.name"] == "talos-images"
    finally:
        provider.shutdown()
