"""Prometheus metrics of the daemon (one registry per app, so tests do not share counters)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self, active_downloads: Callable[[], int], cache_entries: Callable[[], int], cache_bytes: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.images = Counter(
            "talos_image_requests", "Image requests by cache outcome", ["cache"], registry=self.registry
        )
        self.bytes_sent = Counter("talos_image_bytes_sent", "Image bytes sent to clients", registry=self.registry)
        Gauge("talos_downloads_active", "Upstream downloads in flight", registry=self.registry).set_function(
            active_downloads
        )
        Gauge("talos_cache_entries", "Images in the cache", registry=self.registry).set_function(cache_entries)
        Gauge("talos_cache_disk_bytes", "Disk used by cached images", registry=self.registry).set_function(cache_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
