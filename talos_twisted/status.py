"""The operator's status page at `/` and the JSON document it polls (placeholder)."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from talos_twisted.cache import CacheStore
from talos_twisted.downloads import Downloads
from talos_twisted.factory import FactoryClient


def page() -> bytes:
    return b"<!doctype html><title>talos-images</title><p>talos-images</p>\n"


def favicon() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16"/></svg>'


def document(cache: CacheStore, downloads: Downloads, factory: FactoryClient, clock: IReactorTime) -> dict[str, Any]:
    return {
        "entries": [e.describe() for e in cache.entries()],
        "downloads": downloads.describe(),
    }
