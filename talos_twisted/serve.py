"""Serving an image: a cached file, or a download's growing file, with ranges.

The response plan (status, headers, the spans of the body) is pure
(`talos_twisted.http_ranges.plan_response`); this module applies it to a request and
hands every span to one `Streamer`. A download whose final size is known is served like a
cached file (Content-Length, ranges), spans beyond what is written following the download;
only validators (ETag, Last-Modified, conditional requests) wait for the image's sha256.
"""

from __future__ import annotations

import itertools
import secrets
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import datetimeToString

from talos_twisted.cache import CacheStore
from talos_twisted.cache_entry import CacheEntry
from talos_twisted.errors import TalosError, Unavailable
from talos_twisted.http_ranges import plan_response
from talos_twisted.downloads import LiveSource
from talos_twisted.request import ResolvedImage
from talos_twisted.stream import FileSource, Span, Streamer

if TYPE_CHECKING:
    from twisted.web.iweb import IRequest
    from twisted.web.server import Request


# headers that describe an image body, dropped when the answer becomes an error
BODY_HEADERS = ("Content-Length", "Content-Disposition", "ETag", "Last-Modified", "Accept-Ranges", "X-Talos-Cache")


class RangeNotSatisfiable(TalosError):
    status = 416


_BOUNDARY_PREFIX = secrets.token_hex(8)  # per process; a counter makes each answer's unique
_boundaries = itertools.count()


def boundary() -> str:
    """A multipart boundary: random per process, then a counter (no urandom per request)."""
    return f"{_BOUNDARY_PREFIX}{next(_boundaries):08x}"


def _header(request: Request, name: bytes) -> str | None:
    raw = request.requestHeaders.getRawHeaders(name)
    # latin-1 maps every byte to a character: any header value can be looked at
    return raw[0].decode("latin-1") if raw else None


def image_headers(request: Request, image: ResolvedImage, outcome: str) -> None:
    """The headers of an answer with `image` (`outcome`: HIT, MISS or JOIN)."""
    request.setHeader("X-Talos-Version", image.version)
    request.setHeader("X-Talos-Schematic", image.schematic.id)
    request.setHeader("X-Talos-Cache", outcome)
    request.setHeader("Content-Type", "application/octet-stream")
    request.setHeader("Content-Disposition", f'attachment; filename="{image.filename}"')
    if image.latest:
        # `latest` moves: downstream caches must revalidate; the pinned URL is stable
        request.setHeader("Cache-Control", "no-cache")
        location = image.url_path()
        query = request.uri.partition(b"?")[2]
        request.setHeader("Content-Location", location + ("?" + query.decode("ascii", "replace") if query else ""))
    else:
        request.setHeader("Cache-Control", "max-age=86400")


def stamp_date(request: IRequest) -> None:
    """`Date` as the head is sent: twisted.web stamps it when the request arrived, and an
    answer may have waited for the factory since (RFC 9110 §6.6.1)."""
    request.setHeader("Date", datetimeToString())


async def serve_live(
    request: Request,
    source: LiveSource,
    *,
    clock: IReactorTime,
    stall_timeout: float,
    max_ranges: int = 16,
) -> int:
    """Answer `request` from a running download; returns the file bytes sent."""
    size = source.size()
    spans = [Span(0, None)]
    trailer = b""
    if size is not None:
        request.setHeader("Accept-Ranges", "bytes")
        # no validators yet: an If-Range cannot match, so it means the whole image
        range_header = None if _header(request, b"if-range") else _header(request, b"range")
        plan = plan_response(
            method=request.method.decode("latin-1"), size=size, etag="", mtime=0.0,
            range_header=range_header, if_range=None, if_none_match=None, if_modified_since=None,
            max_ranges=max_ranges, boundary=boundary(),
        )
        if plan.status == 416:
            request.setHeader("Content-Range", f"bytes */{size}")
            raise RangeNotSatisfiable(f"the requested range is not within the image's {size} bytes")
        request.setResponseCode(plan.status)
        for name, value in plan.headers:
            request.setHeader(name, value)
        spans = [Span(p.start, p.end, p.prefix) for p in plan.parts]
        trailer = plan.trailer
    stamp_date(request)
    if request.method == b"HEAD":
        return 0
    streamer = Streamer(request, source.open(), source, clock, spans, trailer, stall_timeout=stall_timeout)
    await streamer.start()
    return streamer.sent


def begin_entry(
    request: Request,
    entry: CacheEntry,
    *,
    cache: CacheStore,
    clock: IReactorTime,
    stall_timeout: float,
    max_ranges: int = 16,
) -> Streamer | None:
    """Set the answer's status and headers from `entry` and start its body: the started
    Streamer (the entry stays pinned until its `done` fires), or None when there is no body (HEAD,
    304, 412). Synchronous: the hit path starts it without a coroutine; a route awaits `done`."""
    size = entry.size
    request.setHeader("Accept-Ranges", "bytes")
    request.setHeader("ETag", entry.etag)
    request.setHeader("Last-Modified", datetimeToString(int(entry.created)))
    range_header = _header(request, b"range")
    plan = plan_response(
        method=request.method.decode("latin-1"),
        size=size,
        etag=entry.etag,
        mtime=entry.created,
        range_header=range_header,
        if_range=_header(request, b"if-range"),
        if_none_match=_header(request, b"if-none-match"),
        if_modified_since=_header(request, b"if-modified-since"),
        if_match=_header(request, b"if-match"),
        if_unmodified_since=_header(request, b"if-unmodified-since"),
        max_ranges=max_ranges,
        boundary=boundary() if range_header is not None and "," in range_header else "single",
    )
    if plan.status == 416:
        request.setHeader("Content-Range", f"bytes */{size}")
        raise RangeNotSatisfiable(f"the requested range is not within the image's {size} bytes")
    stamp_date(request)
    if plan.status in (304, 412):
        # no body: no representation metadata of one either (RFC 9110 §15.4.5)
        for name in ("Content-Type", "Content-Disposition", "Content-Length"):
            request.responseHeaders.removeHeader(name)
    if plan.status == 412:
        request.setResponseCode(412)
        request.setHeader("Content-Length", "0")
        return None
    request.setResponseCode(plan.status)
    for name, value in plan.headers:
        if plan.status != 304 or name.lower() not in ("content-type", "content-length"):
            request.setHeader(name, value)
    if plan.status == 304 or request.method == b"HEAD":
        return None
    try:
        fd = cache.open_entry(entry)  # never through a symlink, only the entry's own file
    except OSError:
        cache.remove(entry.key)
        raise Unavailable("the cached image vanished; try again", retry_after=1) from None
    source = FileSource(entry.path, size, fd)  # committed: its holes are sent unread (fileholes)
    cache.pin(entry.key)
    try:
        spans = [Span(p.start, p.end, p.prefix) for p in plan.parts]
        streamer = Streamer(request, fd, source, clock, spans, plan.trailer, stall_timeout=stall_timeout)
        done = streamer.start()
    except BaseException:
        cache.unpin(entry.key)
        raise

    def unpin(result: bool) -> bool:
        cache.unpin(entry.key)
        return result

    done.addBoth(unpin)
    return streamer

