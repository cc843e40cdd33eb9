"""The operator's status page at `/` and the JSON document it polls (`/status.json`).

`document` only reads what its arguments already hold (the cache index, the running
downloads, the factory client's last known metadata): polling it never calls the factory.
The page itself is a constant (`talos_twisted.status_page`): no build step, no assets.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime

from talos_twisted.cache import CacheStore
from talos_twisted.cache_entry import CacheEntry
from talos_twisted.downloads import Downloads
from talos_twisted.factory import FactoryClient
from talos_twisted.names import ARCHES
from talos_twisted.request import ResolvedImage
from talos_twisted.status_page import FAVICON_SVG, PAGE_HTML
from talos_twisted.versions import newest_stable, parse_version_list

# TalosConfig.platforms' default: used until the route passes the configured platforms
DEFAULT_PLATFORMS: tuple[str, ...] = ("openstack", "metal", "nocloud")


def page() -> bytes:
    return PAGE_HTML.encode("utf-8")


def favicon() -> bytes:
    return FAVICON_SVG.encode("utf-8")


def image_url_path(version: str, arch: str, platform: str, extensions: Iterable[str], overlay: str | None) -> str:
    """The URL path a client asks for this image by (extensions as the entry records them)."""
    query = []
    exts = list(extensions)
    if exts:
        query.append("extensions=" + ",".join(quote(e, safe="/") for e in exts))
    if overlay:
        query.append("overlay=" + quote(overlay, safe="/"))
    return f"/images/talos/{version}/{arch}/{platform}.raw" + ("?" + "&".join(query) if query else "")


def entry_url_path(entry: CacheEntry) -> str | None:
    """The URL of a cached entry, or None when its sidecar does not say what it was built with.

    The recorded extensions are the full names, default extensions included: asking for
    them again resolves to the same schematic (defaults are merged, the set is sorted).
    """
    exts = entry.info.get("extensions")
    overlay = entry.info.get("overlay")
    if not isinstance(exts, list) or not all(isinstance(e, str) for e in exts):
        return None
    if overlay is not None and not isinstance(overlay, str):
        return None
    k = entry.key
    if k.asset:  # a mirrored factory asset: its own path names it
        return k.url_path()
    return image_url_path(k.version, k.arch, k.platform, exts, overlay)


def _entry(entry: CacheEntry, now: float) -> dict[str, Any]:
    doc = entry.describe()
    doc.setdefault("extensions", [])
    doc.setdefault("overlay", None)
    doc["url_path"] = entry_url_path(entry)
    doc["age"] = max(0.0, now - entry.created)
    doc["idle"] = max(0.0, now - entry.last_access)
    return doc


def _download(described: Mapping[str, Any], images: Mapping[tuple[Any, ...], ResolvedImage]) -> dict[str, Any]:
    doc = dict(described)
    # describe()'s url_path is the pinned path without the query: the client's URL names the extensions
    image = images.get((*(doc.get(k) for k in ("version", "arch", "schematic", "platform")), doc.get("asset") or ""))
    if image is not None and not image.asset:
        s = image.schematic
        doc["extensions"] = list(s.extensions)
        doc["overlay"] = s.overlay.name if s.overlay else None
        doc["url_path"] = image_url_path(image.version, image.arch, image.platform, doc["extensions"], doc["overlay"])
    size, done, rate = doc.get("size"), doc.get("bytes"), doc.get("rate")
    doc["fraction"] = doc["eta"] = None
    # an ETA only from a known final size: guessing from compressed bytes would mislead
    if isinstance(size, int) and size > 0 and isinstance(done, int):
        doc["fraction"] = min(1.0, done / size)
        if isinstance(rate, (int, float)) and rate > 0:
            doc["eta"] = max(0.0, (size - done) / rate)
    return doc


def _factory(factory: FactoryClient) -> dict[str, Any]:
    known = factory.known("versions")
    versions = parse_version_list(known) if isinstance(known, list) else []
    latest = newest_stable(versions)
    return {
        "base_url": factory.base_url,
        "versions_known": len(versions),
        "latest": str(latest) if latest else None,
        # FactoryClient does not record whether its last metadata call worked (it serves the
        # last known answer quietly): None until it does, {ok, at, error} then
        # what the last factory call said; the page shows when it last worked and why not
        "health": {
            "ok": factory.last_error is None and factory.last_success is not None,
            "at": factory.last_success,
            "error": factory.last_error,
        },
    }


def document(
    cache: CacheStore,
    downloads: Downloads,
    factory: FactoryClient,
    clock: IReactorTime,
    platforms: Iterable[str] = DEFAULT_PLATFORMS,
) -> dict[str, Any]:
    """What `/status.json` answers; `platforms`: the served ones (`TalosConfig.platforms`).

    ``server_time``; ``entries``: `CacheEntry.describe()` + ``url_path`` (None if unknown),
    ``age``, ``idle`` (seconds); ``downloads``: `Downloads.describe()` + ``fraction``, ``eta``
    (None while the size is unknown), ``url_path`` with its query, ``extensions``, ``overlay``;
    ``factory``: ``base_url``, ``versions_known``, ``latest``, ``health``; ``platforms``,
    ``arches``; ``cache``: ``count``, ``disk_usage``, ``max_size``.
    """
    now = clock.seconds()
    entries = cache.entries()
    images = {(d.key.version, d.key.arch, d.key.schematic, d.key.platform, d.key.asset): d.image
              for d in downloads.active()}
    return {
        "server_time": now,
        "entries": [_entry(e, now) for e in entries],
        "downloads": [_download(d, images) for d in downloads.describe()],
        "factory": _factory(factory),
        "platforms": list(platforms),
        "arches": list(ARCHES),
        "cache": {"disk_usage": cache.total_usage, "max_size": cache.max_size, "count": len(entries)},
    }
