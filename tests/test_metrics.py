"""Prometheus metrics (talos_twisted.metrics): route names, error kinds, the Metrics methods,
and request, connection and refusal counts of the server layer over real sockets.

The server layer's timers and request durations run on an injected Clock: a duration is a
`clock.advance`, never a sleep.
"""

from types import SimpleNamespace

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from talos_twisted import errors
from talos_twisted.httpserver import ServerLimits, make_site
from talos_twisted.metrics import Metrics, error_kind, route_name
from talos_twisted.transfer import SizeMismatch

from .rawhttp import request_bytes
from .siteserver import SiteUnderTest, closed, until
from .test_httpserver import answer

IMAGE = "/images/talos/v1.11.2/amd64/openstack.raw"
SCHEMATIC = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"


def samples(metrics):
    """{(name, ((label, value), ...)): value} of everything `metrics.render()` exposes."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics, name, **labels):
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def names(metrics):
    return {name for name, _ in samples(metrics)}


class Images(Resource):
    """An image route answering like the app (with the X-Talos-* headers), /hold answered
    when the test says, /healthz, and a 404 for everything else."""

    isLeaf = True

    def __init__(self, body=b"x" * 1000):
        super().__init__()
        self.body = body
        self.held = []

    def render_GET(self, request):
        if request.path == IMAGE.encode():
            request.setHeader("X-Talos-Cache", "HIT")
            request.setHeader("X-Talos-Version", "v1.11.2")
            request.setHeader("X-Talos-Schematic", SCHEMATIC)
            request.setHeader("Content-Length", str(len(self.body)))
            return self.body
        if request.path == b"/hold":
            self.held.append(request)
            return NOT_DONE_YET
        if request.path == b"/healthz":
            return b'{"status": "ok"}\n'
        request.setResponseCode(404)
        return b"no\n"

    def render_HEAD(self, request):
        self.render_GET(request)
        return b""


class Served(SiteUnderTest):
    """`make_site(Images(), ..., metrics=...)` listening on 127.0.0.1, a Clock for its timers."""

    def __init__(self, metrics=None, **limits):
        super().__init__()
        self.clock = Clock()
        self.resource = Images()
        self.metrics = metrics
        self.site = make_site(self.resource, ServerLimits(**limits), self.clock, metrics=metrics)

    async def start(self):
        return await self.listen()

    async def get(self, path, method="GET", headers=None):
        return await self.exchange(request_bytes(method, path, headers))



@pytest_twisted.async_yield_fixture
async def served():
    servers = []

    async def start(metrics=None, **limits):
        s = await Served(metrics, **limits).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        await s.stop()


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("path, route", [
    ("/images/talos/v1.11.2/amd64/openstack.raw", "image"),
    ("/images/talos/latest/arm64/metal.raw?extensions=siderolabs/iscsi-tools", "image"),
    ("/images/talos/v1.11.2/amd64/openstack.raw.sha256", "checksum"),
    ("/images/talos/versions", "versions"),
    ("/images/talos/v1.11.2/extensions", "catalog"),
    ("/images/talos/latest/overlays", "catalog"),
    ("/images/talos/cache", "cache"),
    ("/healthz", "healthz"),
    ("/readyz?verbose=1", "readyz"),
    ("/metrics", "metrics"),
    ("/", "status"),
    ("/status.json", "status"),
    ("/favicon.ico", "status"),
    ("/openapi.json", "status"),
    ("/images/talos", "other"),
    ("/images/talos/v1.11.2", "other"),
    ("/images/talos/v1.11.2/amd64/a/b", "other"),
    ("/images/talos/v1.11.2/other", "other"),
    ("/images/talos//amd64/x.raw", "other"),
    ("/versions", "mirror_metadata"),
    ("/version/v1.11.2/extensions/official", "mirror_metadata"),
    ("/schematics", "mirror_schematic"),
    (f"/schematics/{'a' * 64}", "mirror_schematic"),
    (f"/image/{'a' * 64}/v1.11.2/kernel-amd64", "mirror_image"),
    (f"/pxe/{'a' * 64}/v1.11.2/metal-amd64", "pxe"),
    ("/wp-admin/setup.php", "other"),
    ("*", "other"),
    ("", "other"),
])
def test_route_name(path, route):
    assert route_name(path) == route
    assert route_name(path.encode()) == route


@pytest.mark.parametrize("error, kind", [
    (errors.UpstreamCorrupt("x"), "upstream_corrupt"),
    (errors.StorageError("x"), "storage_error"),
    (errors.UpstreamTimeout("x"), "upstream_timeout"),
    (SizeMismatch("x"), "size_mismatch"),
    (errors.Unavailable("x"), "unavailable"),
    (errors.InternalError("x"), "internal_error"),
    (errors.TooLarge("x"), "too_large"),
    (errors.UpstreamNotFound("x"), "upstream_not_found"),
    (OSError("x"), "os_error"),
])
def test_error_kind_is_the_class_name_in_snake_form(error, kind):
    assert error_kind(error) == kind


def test_methods_change_what_is_rendered():
    m = Metrics()
    m.upstream_call("image", "ok", 12.5, ttfb=3.0, nbytes=1000)
    m.upstream_call("versions", error_kind(errors.UpstreamTimeout("x")), 30.0)
    m.upstream_bytes(24)
    m.download_queued()
    m.download_queued()
    m.download_started()
    m.download_committed()
    m.download_failed("size_mismatch")
    m.download_resumed()
    m.eviction()
    m.eviction(2)
    m.connection_refused("max_connections")
    assert value(m, "talos_upstream_requests_total", kind="image", outcome="ok") == 1
    assert value(m, "talos_upstream_requests_total", kind="versions", outcome="upstream_timeout") == 1
    assert value(m, "talos_upstream_bytes_total") == 1024
    assert value(m, "talos_upstream_request_duration_seconds_sum", kind="image") == 12.5
    assert value(m, "talos_upstream_request_duration_seconds_bucket", kind="versions", le="30.0") == 1
    assert value(m, "talos_upstream_first_byte_seconds_count", kind="image") == 1
    assert value(m, "talos_upstream_first_byte_seconds_count", kind="versions") is None, "no head: no ttfb"
    assert value(m, "talos_downloads_total") == 2
    assert value(m, "talos_downloads_started_total") == 1
    assert value(m, "talos_downloads_committed_total") == 1
    assert value(m, "talos_downloads_failed_total", reason="size_mismatch") == 1
    assert value(m, "talos_downloads_resumed_total") == 1
    assert value(m, "talos_cache_evictions_total") == 3
    assert value(m, "talos_connections_refused_total", limit="max_connections") == 1


def test_label_values_stay_in_their_small_sets():
    m = Metrics()
    m.request_done("/some/raw/path", 200, "weird", 10, 0.1)
    m.request_done("image", 200, "MISS", 10, 0.1)
    m.upstream_call("image", "Something went wrong: /x", 1.0)
    m.download_failed("UpstreamCorrupt")
    m.connection_refused("max connections!")
    assert value(m, "talos_http_requests_total", route="other", status="200", cache="none") == 1
    assert value(m, "talos_http_requests_total", route="image", status="200", cache="miss") == 1
    assert value(m, "talos_upstream_requests_total", kind="image", outcome="other") == 1
    assert value(m, "talos_downloads_failed_total", reason="other") == 1
    assert value(m, "talos_connections_refused_total", limit="other") == 1


def test_gauges_read_their_callables_at_scrape_time():
    state = {"bytes": 10, "entries": 1, "queued": 2, "running": 3, "followers": 4}
    scrub = SimpleNamespace(scrubbed_bytes=0, scrub_mismatches=0, scrub_passes=0)
    m = Metrics(
        cache_bytes=lambda: state["bytes"], cache_entries=lambda: state["entries"],
        downloads_queued=lambda: state["queued"], downloads_running=lambda: state["running"],
        download_followers=lambda: state["followers"], scrub=scrub,
    )
    assert value(m, "talos_cache_bytes") == 10 and value(m, "talos_download_followers") == 4
    state.update(bytes=4096, entries=7, queued=0, running=1, followers=9)
    scrub.scrubbed_bytes, scrub.scrub_mismatches, scrub.scrub_passes = 5000, 1, 2
    assert value(m, "talos_cache_bytes") == 4096
    assert value(m, "talos_cache_entries") == 7
    assert value(m, "talos_downloads_queued") == 0
    assert value(m, "talos_downloads_running") == 1
    assert value(m, "talos_download_followers") == 9
    assert value(m, "talos_scrub_bytes_total") == 5000
    assert value(m, "talos_scrub_mismatches_total") == 1
    assert value(m, "talos_scrub_passes_total") == 2


def test_a_gauge_without_its_callable_is_absent_and_scrub_can_come_later():
    m = Metrics(cache_entries=lambda: 3)
    assert "talos_cache_entries" in names(m)
    assert not {"talos_cache_bytes", "talos_downloads_running", "talos_scrub_bytes_total"} & names(m)
    m.scrub = SimpleNamespace(scrubbed_bytes=1, scrub_mismatches=0, scrub_passes=0)
    assert value(m, "talos_scrub_bytes_total") == 1


def test_each_registry_is_its_own():
    a, b = Metrics(), Metrics()
    a.download_committed()
    assert value(a, "talos_downloads_committed_total") == 1
    assert value(b, "talos_downloads_committed_total") == 0


# --- the server layer -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_requests_are_counted_by_route_status_and_cache(served):
    m = Metrics()
    s = await served(m)
    for _ in range(2):
        assert answer(await s.get(IMAGE))[0] == 200
    assert answer(await s.get(IMAGE + "?extensions=siderolabs/iscsi-tools", method="HEAD"))[0] == 200
    assert answer(await s.get("/healthz"))[0] == 200
    assert answer(await s.get("/nothing/here"))[0] == 404
    assert answer(await s.get("/a//b"))[0] == 404  # answered by the server layer itself
    assert value(m, "talos_http_requests_total", route="image", status="200", cache="hit") == 3
    assert value(m, "talos_http_response_bytes_total", route="image") == 2000, "a HEAD sends no body"
    assert value(m, "talos_http_requests_total", route="healthz", status="200", cache="none") == 1
    assert value(m, "talos_http_requests_total", route="other", status="404", cache="none") == 2
    assert value(m, "talos_http_request_duration_seconds_count", route="image") == 3
    assert not any("nothing" in str(labels) for _, labels in samples(m)), "a raw path is never a label"


@pytest_twisted.ensureDeferred
async def test_duration_is_from_the_request_line_to_the_end(served):
    m = Metrics()
    s = await served(m)
    client = await s.connect(request_bytes("GET", "/hold"))
    await until(lambda: s.resource.held)
    s.clock.advance(2.5)
    request = s.resource.held[0]
    request.write(b"late")
    request.finish()
    await closed(client)
    assert value(m, "talos_http_request_duration_seconds_sum", route="other") == 2.5
    assert value(m, "talos_http_request_duration_seconds_bucket", route="other", le="2.5") == 1
    assert value(m, "talos_http_request_duration_seconds_bucket", route="other", le="1.0") == 0


@pytest_twisted.ensureDeferred
async def test_open_connections_are_counted(served):
    m = Metrics()
    s = await served(m)
    held = [await s.connect(request_bytes("GET", "/hold")) for _ in range(3)]
    await until(lambda: len(s.resource.held) == 3)
    assert value(m, "talos_connections_open") == 3
    held[0].transport.loseConnection()
    await until(lambda: value(m, "talos_connections_open") == 2, what="one connection counted closed")
    for request in s.resource.held[1:]:
        request.finish()
    for c in held[1:]:
        await closed(c)
    await until(lambda: value(m, "talos_connections_open") == 0, what="every connection counted closed")


@pytest_twisted.ensureDeferred
async def test_refusals_are_counted_by_limit(served):
    m = Metrics()
    s = await served(m, max_connections_per_client=1)
    held = await s.connect(b"GET /x HTTP/1.1\r\n")
    await until(lambda: s.site.connections.total == 1)
    for _ in range(3):
        assert answer(await s.get("/healthz"))[0] == 503
    assert value(m, "talos_connections_refused_total", limit="max_connections_per_client") == 3
    held.transport.loseConnection()
    await until(lambda: s.site.connections.total == 0)
    client = await s.exchange(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer(client)[0] == 414
    assert value(m, "talos_connections_refused_total", limit="max_request_line") == 1
    # refused before it reached a route: a refusal, not a served request
    assert value(m, "talos_http_requests_total", route="other", status="414", cache="none") is None
    assert value(m, "talos_connections_open") == 0


@pytest_twisted.ensureDeferred
async def test_a_site_without_metrics_serves_as_before(served):
    s = await served(None)
    assert answer(await s.get(IMAGE))[0] == 200
