"""The HTTP interface: a Klein app whose routes are methods of a class holding its collaborators."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from klein import Klein
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from werkzeug.exceptions import HTTPException

from talos_twisted.cache import CacheEntry, CacheStore
from talos_twisted.config import TalosConfig
from talos_twisted.download import COMMITTED, FAILED, Downloads
from talos_twisted.factory import FactoryClient, UpstreamError
from talos_twisted.http_ranges import Unsatisfiable, if_range_holds, not_modified, parse_range
from talos_twisted.request import BadRequest, NotFound, ResolvedImage, parse_image_request
from talos_twisted.resolver import ImageResolver
from talos_twisted.stream import DownloadSource, FileSource, FileStreamer
from talos_twisted.versions import InvalidVersion, Version, newest_stable, parse_version_list

RETRY_AFTER_BUILDING = 30


class HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def _upstream(e: UpstreamError) -> HTTPError:
    retry = e.retry_after if e.retry_after else (RETRY_AFTER_BUILDING if e.status in (503, 504) else None)
    return HTTPError(e.status, e.message, retry)


class Metrics:
    def __init__(self, downloads: Downloads, cache: CacheStore):
        self.registry = CollectorRegistry()
        self.images = Counter(
            "talos_image_requests", "Image requests by cache outcome", ["cache"], registry=self.registry
        )
        self.bytes_sent = Counter("talos_image_bytes_sent", "Image bytes sent to clients", registry=self.registry)
        Gauge("talos_downloads_active", "Upstream downloads in flight", registry=self.registry).set_function(
            lambda: len(downloads)
        )
        Gauge("talos_cache_entries", "Images in the cache", registry=self.registry).set_function(
            lambda: len(cache.entries())
        )
        Gauge("talos_cache_disk_bytes", "Disk used by cached images", registry=self.registry).set_function(
            lambda: cache.total_usage
        )


class TalosImages:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        config: TalosConfig,
        *,
        factory: FactoryClient,
        cache: CacheStore,
        downloads: Downloads,
        clock: Any,
    ):
        self.config = config
        self.factory = factory
        self.resolver = ImageResolver(factory, config.default_extensions)
        self.cache = cache
        self.downloads = downloads
        self.clock = clock
        self.stats = Metrics(downloads, cache)

    def resource(self) -> Any:
        return self.app.resource()

    # --- errors ----------------------------------------------------------------------

    def _render_error(self, request: Any, status: int, message: str, retry_after: int | None = None) -> bytes:
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        for h in ("Content-Length", "Content-Disposition", "ETag", "Last-Modified", "Accept-Ranges", "X-Talos-Cache"):
            request.responseHeaders.removeHeader(h)
        if retry_after:
            request.setHeader("Retry-After", str(retry_after))
        return json.dumps({"error": message, "status": status}).encode() + b"\n"

    @app.handle_errors(HTTPError)
    def _http_error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        return self._render_error(request, e.status, e.message, e.retry_after)

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        if e.code == 405:
            allowed = ", ".join(e.valid_methods or [])
            request.setHeader("Allow", allowed)
            msg = f"method {request.method.decode('ascii', 'replace')} is not allowed here (allowed: {allowed})"
        elif e.code == 404:
            msg = f"no such route: {request.path.decode('utf-8', 'replace')}"
        else:
            msg = e.description or e.name
        return self._render_error(request, e.code, msg)

    @app.handle_errors(CancelledError)
    def _cancelled(self, request: Any, failure: Any) -> None:
        return None  # the client went away

    @app.handle_errors(Exception)
    def _internal(self, request: Any, failure: Any) -> bytes:
        ref = uuid.uuid4().hex[:8]
        self.log.failure("internal error {ref} on {path}", failure, ref=ref, path=request.path)
        return self._render_error(request, 500, f"internal error (reference {ref}); see the daemon's log")

    def _require_enabled(self) -> None:
        if not self.config.enabled:
            raise HTTPError(503, "serving Talos images is disabled on this server (talos.enabled is false)")

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except UpstreamError as e:
            raise _upstream(e) from None
        except NotFound as e:
            raise HTTPError(404, str(e)) from None
        except BadRequest as e:
            raise HTTPError(400, str(e)) from None

    # --- health ----------------------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Any) -> bytes:
        request.setHeader("Content-Type", "application/json")
        return b'{"status": "ok"}\n'

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Any) -> bytes:
        request.setHeader("Content-Type", "application/json")
        writable = os.access(self.cache.root, os.W_OK)
        if not writable:
            request.setResponseCode(503)
        return json.dumps({"ready": writable, "cache_writable": writable, "downloads": len(self.downloads)}).encode()

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Any) -> bytes:
        request.setHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        return generate_latest(self.stats.registry)

    # --- discovery -------------------------------------------------------------------

    def _json(self, request: Any, doc: Any) -> bytes:
        request.setHeader("Content-Type", "application/json")
        return json.dumps(doc, indent=2).encode() + b"\n"

    @app.route("/images/talos/versions", methods=["GET"])
    async def versions(self, request: Any) -> bytes:
        self._require_enabled()
        versions = parse_version_list(await self._call(self.factory.versions()))
        latest = newest_stable(versions)
        return self._json(request, {"versions": [str(v) for v in versions], "latest": str(latest) if latest else None})

    @app.route("/images/talos/cache", methods=["GET"])
    def cache_listing(self, request: Any) -> bytes:
        self._require_enabled()
        entries = self.cache.entries()
        return self._json(request, {
            "entries": [e.describe() for e in entries],
            "disk_usage": self.cache.total_usage,
            "max_cache_size": self.cache.max_size,
            "downloads": [str(d.key) for d in self.downloads.active()],
        })

    async def _catalog(self, version: str) -> Any:
        self._require_enabled()
        if version != "latest":
            try:
                version = str(Version.parse(version))
            except InvalidVersion as e:
                raise HTTPError(400, str(e)) from None
        resolved = await self._call(self.resolver.resolve_version(version))
        return await self._call(self.factory.catalog(resolved))

    @app.route("/images/talos/<version>/extensions", methods=["GET"])
    async def extensions(self, request: Any, version: str) -> bytes:
        cat = (await self._catalog(version)).describe()
        return self._json(request, {"version": cat["version"], "extensions": cat["extensions"]})

    @app.route("/images/talos/<version>/overlays", methods=["GET"])
    async def overlays(self, request: Any, version: str) -> bytes:
        cat = (await self._catalog(version)).describe()
        return self._json(request, {"version": cat["version"], "overlays": cat["overlays"]})

    # --- images ------------------------------------------------------------------------

    @app.route("/images/talos/<version>/<arch>/<filename>", methods=["GET", "HEAD"])
    async def image(self, request: Any, version: str, arch: str, filename: str) -> bytes:
        self._require_enabled()
        try:
            req = parse_image_request(version, arch, filename, request.args, self.config.platforms)
        except BadRequest as e:
            raise HTTPError(400, str(e)) from None
        except NotFound as e:
            raise HTTPError(404, str(e)) from None
        image = await self._call(self.resolver.resolve(req))
        entry = self.cache.get(image.key)
        if req.checksum:
            return await self._checksum(request, image, entry)
        if entry is not None:
            self._describe(request, image, "HIT")
            return await self._serve_entry(request, entry)
        return await self._serve_download(request, image)

    def _describe(self, request: Any, image: ResolvedImage, outcome: str) -> None:
        self.stats.images.labels(outcome).inc()
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
            request.setHeader("Cache-Control", "public, max-age=86400")

    async def _serve_entry(self, request: Any, entry: CacheEntry) -> bytes:
        size = entry.size
        request.setHeader("Accept-Ranges", "bytes")
        request.setHeader("ETag", entry.etag)
        request.setHeader("Last-Modified", datetimeToString(int(entry.created)))
        if not_modified(request.getHeader("if-none-match"), request.getHeader("if-modified-since"), entry.etag, entry.created):
            request.setResponseCode(304)
            return b""
        ranges = None
        if if_range_holds(request.getHeader("if-range"), entry.etag, entry.created):
            try:
                ranges = parse_range(request.getHeader("range"), size)
            except Unsatisfiable:
                request.setHeader("Content-Range", f"bytes */{size}")
                return self._render_error(request, 416, f"the requested range is not within the image's {size} bytes")
        if ranges is None:
            request.setHeader("Content-Length", str(size))
            return await self._send_file(request, entry, [(0, size)])
        request.setResponseCode(206)
        if len(ranges) == 1:
            first, last = ranges[0]
            request.setHeader("Content-Range", f"bytes {first}-{last}/{size}")
            request.setHeader("Content-Length", str(last - first + 1))
            return await self._send_file(request, entry, [(first, last + 1)])
        boundary = uuid.uuid4().hex
        heads = [
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {a}-{b}/{size}\r\n\r\n".encode()
            for a, b in ranges
        ]
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = sum(len(h) for h in heads) + sum(b - a + 1 for a, b in ranges) + len(tail)
        request.setHeader("Content-Type", f"multipart/byteranges; boundary={boundary}")
        request.setHeader("Content-Length", str(length))
        return await self._send_file(request, entry, [(a, b + 1) for a, b in ranges], heads, tail)

    async def _send_file(
        self, request: Any, entry: CacheEntry, spans: list[tuple[int, int]],
        heads: list[bytes] | None = None, tail: bytes = b"",
    ) -> bytes:
        if request.method == b"HEAD":
            return b""
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            self.cache.remove(entry.key)
            raise HTTPError(503, "the cached image vanished; try again", retry_after=1) from None
        self.cache.pin(entry.key)
        try:
            for i, (start, end) in enumerate(spans):
                if heads:
                    request.write(heads[i])
                streamer = FileStreamer(
                    request, os.dup(fd), FileSource(entry.size), self.clock, start=start, end=end,
                    stall_timeout=self.config.client_stall_timeout,
                )
                complete = await streamer.start()
                self.stats.bytes_sent.inc(streamer.sent)
                if not complete:
                    return b""
            if tail:
                request.write(tail)
        finally:
            os.close(fd)
            self.cache.unpin(entry.key)
        return b""

    async def _serve_download(self, request: Any, image: ResolvedImage) -> bytes:
        download, joined = self.downloads.get_or_start(image)
        self._describe(request, image, "JOIN" if joined else "MISS")
        if request.method == b"HEAD":
            # never wait for a download: Ironic's HEAD check thereby warms the cache
            return b""
        await download.first_byte(self.config.first_byte_timeout)
        if download.state == FAILED:
            assert download.error is not None
            raise _upstream(download.error)
        if download.state == COMMITTED:
            if download.entry is None:
                # it finished before this client woke up and was too large to keep
                raise HTTPError(507, "the image is larger than the cache (max_cache_size), so it was not kept; retry later")
            return await self._serve_entry(request, download.entry)
        if download.available == 0 and download.state != COMMITTED:
            raise HTTPError(
                503,
                f"the image factory is still building this image (no data after {self.config.first_byte_timeout:g}s);"
                " the download goes on, retry later",
                RETRY_AFTER_BUILDING,
            )
        assert download.fd is not None
        streamer = FileStreamer(
            request, os.dup(download.fd), DownloadSource(download), self.clock,
            stall_timeout=self.config.client_stall_timeout,
        )
        await streamer.start()
        self.stats.bytes_sent.inc(streamer.sent)
        return b""

    async def _checksum(self, request: Any, image: ResolvedImage, entry: CacheEntry | None) -> bytes:
        if entry is None:
            download, joined = self.downloads.get_or_start(image)
            if request.method == b"HEAD":
                # HEAD never waits for a download (as for the image itself): 200 without
                # validators; the download goes on in the background
                self._checksum_headers(request, image)
                return b""
            await download.completed(self.config.checksum_wait)
            if download.state == FAILED:
                assert download.error is not None
                raise _upstream(download.error)
            if download.state != COMMITTED:
                raise HTTPError(
                    503,
                    f"the image is still being downloaded (not complete after {self.config.checksum_wait:g}s); retry later",
                    RETRY_AFTER_BUILDING,
                )
            entry = download.entry
            if entry is None:
                raise HTTPError(507, "the image is larger than the cache (max_cache_size), so no checksum can describe it")
        self._checksum_headers(request, image)
        request.setHeader("ETag", entry.etag)
        return f"{entry.sha256}  {image.platform}.raw\n".encode()

    def _checksum_headers(self, request: Any, image: ResolvedImage) -> None:
        request.setHeader("X-Talos-Version", image.version)
        request.setHeader("X-Talos-Schematic", image.schematic.id)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        request.setHeader("Cache-Control", "no-cache" if image.latest else "public, max-age=86400")
