"""Prometheus metrics of the daemon: one `Metrics` object (one registry, so tests never share
counters) with small typed methods the rest of the code calls at the moment something
happens, plus gauges read from callables at scrape time.

Every label value is from a small fixed set (route names, cache outcomes, error kinds in
snake form, limit names): a raw path or a message never becomes a label.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric

__all__ = ["CACHE_OUTCOMES", "ROUTES", "Metrics", "ScrubCounters", "error_kind", "route_name"]

ROUTES = frozenset(
    {"image", "checksum", "versions", "catalog", "cache", "healthz", "readyz", "metrics", "status",
     "mirror_metadata", "mirror_schematic", "mirror_image", "pxe", "other"}
)
CACHE_OUTCOMES = frozenset({"hit", "miss", "join"})
# an outcome, reason or limit is a snake_case name; anything else (a bug) counts as "other"
_LABEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

# serving an image can take as long as its download (minutes); an API answer milliseconds
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# the factory may build an image for up to build_timeout (21 min by default) before a byte
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)

_Reading = Callable[[], float]


class ScrubCounters(Protocol):
    """What the scrubber counts (`talos_twisted.scrub.ScrubService`)."""

    @property
    def scrubbed_bytes(self) -> int: ...
    @property
    def scrub_mismatches(self) -> int: ...
    @property
    def scrub_passes(self) -> int: ...


def route_name(path: bytes | str) -> str:
    """The route label of a request path (a query is ignored): one of `ROUTES`."""
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    path = path.split("?", 1)[0]
    if path in ("/healthz", "/readyz", "/metrics"):
        return path[1:]
    if path in ("/", "/status.json", "/favicon.ico", "/openapi.json"):
        return "status"
    parts = path.split("/")
    if parts[1:2] in (["versions"], ["version"]):
        return "mirror_metadata"
    if parts[1:2] == ["schematics"]:
        return "mirror_schematic"
    if parts[1:2] == ["image"]:
        return "mirror_image"
    if parts[1:2] == ["pxe"]:
        return "pxe"
    if parts[:3] != ["", "images", "talos"]:
        return "other"
    rest = parts[3:]
    if rest == ["versions"]:
        return "versions"
    if rest == ["cache"]:
        return "cache"
    if len(rest) == 2 and rest[0] and rest[1] in ("extensions", "overlays"):
        return "catalog"
    if len(rest) == 3 and all(rest):
        return "checksum" if rest[2].endswith(".sha256") else "image"
    return "other"


def error_kind(error: BaseException) -> str:
    """The snake-form name of an error's class (`UpstreamCorrupt` -> `upstream_corrupt`),
    for the `outcome` and `reason` labels."""
    return _CAMEL.sub("_", type(error).__name__).lower()


def _name(value: str) -> str:
    return value if _LABEL_NAME.fullmatch(value) else "other"


class _ScrubCollector:
    """The scrubber's own counters, read when scraped (they live on the scrubber)."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        scrub = self._metrics.scrub
        if scrub is None:
            return []
        families = []
        for name, doc, value in (
            ("talos_scrub_bytes", "Bytes of cached images re-hashed by the scrubber", scrub.scrubbed_bytes),
            ("talos_scrub_mismatches", "Cached images whose hash no longer matched (removed)", scrub.scrub_mismatches),
            ("talos_scrub_passes", "Complete scrub passes over the cache", scrub.scrub_passes),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            families.append(family)
        return families


class Metrics:
    """The daemon's registry. Gauges whose callable is not given are not exported (absent
    is better than a wrong zero); `scrub` may also be assigned later."""

    def __init__(
        self,
        *,
        cache_bytes: _Reading | None = None,
        cache_entries: _Reading | None = None,
        downloads_queued: _Reading | None = None,
        downloads_running: _Reading | None = None,
        download_followers: _Reading | None = None,
        scrub: ScrubCounters | None = None,
    ):
        r = self.registry = CollectorRegistry()
        self.scrub = scrub
        # --- HTTP, counted by the server layer (httpserver.LimitedSite.log) ---
        self._requests = Counter(
            "talos_http_requests_total", "HTTP requests answered, by route, status and cache outcome",
            ["route", "status", "cache"], registry=r,
        )
        self._response_bytes = Counter(
            "talos_http_response_bytes_total", "HTTP response body bytes sent", ["route"], registry=r
        )
        self._request_seconds = Histogram(
            "talos_http_request_duration_seconds", "Time from request line to the last byte sent", ["route"],
            buckets=_REQUEST_BUCKETS, registry=r,
        )
        # --- the image factory ---
        self._upstream = Counter(
            "talos_upstream_requests_total", "Calls to the image factory by kind and outcome (ok or error kind)",
            ["kind", "outcome"], registry=r,
        )
        self._upstream_bytes = Counter(
            "talos_upstream_bytes_total", "Body bytes received from the image factory", registry=r
        )
        self._upstream_seconds = Histogram(
            "talos_upstream_request_duration_seconds", "Duration of calls to the image factory", ["kind"],
            buckets=_UPSTREAM_BUCKETS, registry=r,
        )
        self._upstream_ttfb = Histogram(
            "talos_upstream_first_byte_seconds", "Time to the first response byte from the image factory", ["kind"],
            buckets=_UPSTREAM_BUCKETS, registry=r,
        )
        # --- downloads ---
        self._queued_total = Counter(
            # not talos_downloads_queued_total: its base name would clash with the gauge
            "talos_downloads_total", "Downloads begun (each waits for a slot first)", registry=r
        )
        self._started_total = Counter(
            "talos_downloads_started_total", "Downloads that got a slot and called the factory", registry=r
        )
        self._committed = Counter("talos_downloads_committed_total", "Downloads committed to the cache", registry=r)
        self._failed = Counter(
            "talos_downloads_failed_total", "Downloads failed, by error kind", ["reason"], registry=r
        )
        self._resumed = Counter("talos_downloads_resumed_total", "Resumes of interrupted downloads", registry=r)
        # --- cache ---
        self._evictions = Counter("talos_cache_evictions_total", "Cached images evicted for space", registry=r)
        # --- connections ---
        self._connections = Gauge("talos_connections_open", "Open client connections", registry=r)
        self._refused = Counter(
            "talos_connections_refused_total", "Connections and requests refused by a server limit", ["limit"],
            registry=r,
        )
        for name, doc, read in (
            ("talos_cache_bytes", "Disk used by cached images", cache_bytes),
            ("talos_cache_entries", "Images in the cache", cache_entries),
            ("talos_downloads_queued", "Downloads waiting for a slot", downloads_queued),
            ("talos_downloads_running", "Downloads holding a slot", downloads_running),
            ("talos_download_followers", "Clients streaming from running downloads", download_followers),
        ):
            if read is not None:
                Gauge(name, doc, registry=r).set_function(read)
        r.register(_ScrubCollector(self))

    # --- HTTP ----------------------------------------------------------------------

    def request_done(self, route: str, status: int, cache: str | None, nbytes: int, seconds: float) -> None:
        """One answered request (`cache`: the X-Talos-Cache header, any case, or None)."""
        route = route if route in ROUTES else "other"
        outcome = (cache or "").lower()
        self._requests.labels(route, str(status), outcome if outcome in CACHE_OUTCOMES else "none").inc()
        self._response_bytes.labels(route).inc(max(0, nbytes))
        self._request_seconds.labels(route).observe(max(0.0, seconds))

    # --- the image factory -----------------------------------------------------------

    def upstream_call(
        self, kind: str, outcome: str, seconds: float, ttfb: float | None = None, nbytes: int = 0
    ) -> None:
        """One call to the factory ended (kind: versions, catalog, schematic, image, range;
        outcome: "ok" or `error_kind(error)`); `ttfb` when a response head arrived."""
        kind = _name(kind)
        self._upstream.labels(kind, _name(outcome)).inc()
        self._upstream_seconds.labels(kind).observe(max(0.0, seconds))
        if ttfb is not None:
            self._upstream_ttfb.labels(kind).observe(max(0.0, ttfb))
        if nbytes > 0:
            self._upstream_bytes.inc(nbytes)

    def upstream_bytes(self, nbytes: int) -> None:
        """Body bytes of a long download, counted as they arrive rather than at its end."""
        if nbytes > 0:
            self._upstream_bytes.inc(nbytes)

    # --- downloads ---------------------------------------------------------------------

    def download_queued(self) -> None:
        self._queued_total.inc()

    def download_started(self) -> None:
        self._started_total.inc()

    def download_committed(self) -> None:
        self._committed.inc()

    def download_failed(self, reason: str) -> None:
        """`reason`: `error_kind(error)`, e.g. upstream_corrupt, storage_error, size_mismatch."""
        self._failed.labels(_name(reason)).inc()

    def download_resumed(self) -> None:
        self._resumed.inc()

    # --- cache and connections ---------------------------------------------------------------

    def eviction(self, count: int = 1) -> None:
        self._evictions.inc(count)

    def connection_opened(self) -> None:
        self._connections.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def connection_refused(self, limit: str) -> None:
        """A connection or request refused by the server limit named `limit`."""
        self._refused.labels(_name(limit)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
