"""The HTTP interface: a Klein app whose routes are methods of a class holding its collaborators.

Routes parse and resolve, then ask `Downloads.follow` for a hit or a live source; every
error is a `TalosError`, rendered in one place (`render_error`).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, Coroutine

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from talos_twisted import openapi, status, tracing
from talos_twisted.cache import CacheStore
from talos_twisted.catalog import Catalog
from talos_twisted.config import TalosConfig
from talos_twisted.downloads import Downloads, Hit, Need
from talos_twisted.errors import BadRequest, Disabled, InternalError, NotFound, TalosError, Unavailable, UpstreamError
from talos_twisted.factory import FactoryClient
from talos_twisted.health import readiness
from talos_twisted.http_conditional import etag_list_matches
from talos_twisted.metrics import Metrics
from talos_twisted.mirror import PREFIXES, FactoryMirror, MirrorError, render_text
from talos_twisted.request import ImageRequest, ResolvedImage, parse_image_request
from talos_twisted.resolver import ImageResolver
from talos_twisted.hitpath import HitPath, TargetMemo
from talos_twisted.serve import BODY_HEADERS, begin_entry, image_headers, serve_live, stamp_date
from talos_twisted.versions import InvalidVersion, Version, newest_stable, parse_version_list

if TYPE_CHECKING:
    from talos_twisted.prefetch import PrefetchService
    from talos_twisted.scrub import ScrubService

# Routes get the request Klein hands them, a twisted.web.server.Request (Klein types a route as
# Callable[..., ...]); its error handlers must take an IRequest (Klein's KleinErrorMethod), so
# what they share with the routes (render_error, mirror.render_text, serve.stamp_date) does too.

def render_error(request: IRequest, error: TalosError) -> bytes:
    """The one place an error becomes a response: JSON, with Retry-After where it helps."""
    request.setResponseCode(error.status)
    request.setHeader("Content-Type", "application/json")
    request.setHeader("Cache-Control", "no-store")
    for h in BODY_HEADERS:
        request.responseHeaders.removeHeader(h)
    stamp_date(request)
    if error.retry_after:
        request.setHeader("Retry-After", str(error.retry_after))
    return json.dumps({"error": error.message, "status": error.status}).encode() + b"\n"


def _get_only(request: Request) -> None:
    """The factory's GET-only routes answer HEAD 405 (werkzeug would serve it as a GET)."""
    if request.method != b"GET":
        raise MethodNotAllowed(valid_methods=["GET"])


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
        clock: IReactorTime,
        scrub: ScrubService | None = None,  # for its counters
        metrics: Metrics | None = None,
    ):
        self.config = config
        self.factory = factory
        self.resolver = ImageResolver(factory, config.default_extensions, clock)
        self.cache = cache
        self.downloads = downloads
        self.clock = clock
        self.scrub = scrub
        self.prefetch: PrefetchService | None = None  # when there is one (reloads)
        self.mirror = FactoryMirror(
            lambda: self.config, factory=factory, resolver=self.resolver, cache=cache, downloads=downloads, clock=clock
        )
        self.metrics = metrics or Metrics(cache_bytes=lambda: cache.total_usage, cache_entries=lambda: len(cache.entries()))
        self.image_targets: TargetMemo[ImageRequest] = TargetMemo()  # for the hit path

    def resource(self) -> IResource:
        return HitPath(self.app.resource(), self)

    def render_error(self, request: IRequest, error: TalosError) -> bytes:
        return render_error(request, error)

    # --- errors ----------------------------------------------------------------------

    @app.handle_errors(TalosError)
    def _talos_error(self, request: IRequest, failure: Failure) -> bytes:
        return render_error(request, failure.value)  # type: ignore[arg-type]

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Failure) -> bytes:
        e: Any = failure.value  # a werkzeug HTTPException; valid_methods only on MethodNotAllowed
        prefix = request.path.split(b"/")[1]
        if prefix in PREFIXES:  # under the mirror's routes: as the factory answers
            if e.code == 405:
                # werkzeug adds HEAD to every GET route; the factory's router serves it on /image only
                methods = sorted(m for m in e.valid_methods or [] if m != "HEAD" or prefix == b"image")
                request.setHeader("Allow", ", ".join(methods))
                return render_text(request, MirrorError(405, "Method Not Allowed"))
            return render_text(request, MirrorError(404, "404 page not found"))
        if e.code == 405:
            allowed = ", ".join(e.valid_methods or [])
            request.setHeader("Allow", allowed)
            msg = f"method {request.method.decode('ascii', 'replace')} is not allowed here (allowed: {allowed})"
        elif e.code == 404:
            msg = f"no such route: {request.path.decode('utf-8', 'replace')}"
        else:
            msg = e.description or e.name
        error = TalosError(msg)
        error.status = e.code
        return render_error(request, error)

    @app.handle_errors(CancelledError)
    def _cancelled(self, request: IRequest, failure: Failure) -> None:
        return None  # the client went away

    @app.handle_errors(Exception)
    def _internal(self, request: IRequest, failure: Failure) -> bytes:
        return self.internal_error(request, failure)

    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        ref = uuid.uuid4().hex[:8]
        self.log.failure("internal error {ref} on {path}", failure, ref=ref, path=request.path)
        return render_error(request, InternalError(f"internal error (reference {ref}); see the daemon's log"))

    def _require_enabled(self) -> None:
        if not self.config.enabled:
            raise Disabled("serving Talos images is disabled on this server (talos.enabled is false)")

    # --- health ----------------------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        return b'{"status": "ok"}\n'

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        doc = readiness(self.cache, self.factory, min_free=self.config.min_free_space)
        if not doc["ready"]:
            request.setResponseCode(503)
        return json.dumps(doc).encode() + b"\n"

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        return self.metrics.render()

    # --- the operator's status page -------------------------------------------------------

    @app.route("/", methods=["GET"])
    def status_page(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        return status.page()

    @app.route("/favicon.ico", methods=["GET"])
    def favicon(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "image/svg+xml")
        request.setHeader("Cache-Control", "max-age=86400")
        return status.favicon()

    @app.route("/status.json", methods=["GET"])
    def status_json(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        doc = status.document(self.cache, self.downloads, self.factory, self.clock, platforms=self.config.platforms)
        return json.dumps(doc).encode() + b"\n"

    @app.route("/openapi.json", methods=["GET"])
    def openapi_json(self, request: Request) -> bytes:
        # the routes this app serves, so a route family documented ahead appears once it exists
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "max-age=60")
        return openapi.served_json(self.app.url_map)

    # --- discovery -------------------------------------------------------------------

    def _json(self, request: Request, doc: object, cache_control: str = "max-age=60") -> bytes:
        # discovery answers change rarely; the operator's live state must never be cached
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", cache_control)
        return json.dumps(doc, indent=2).encode() + b"\n"

    @app.route("/images/talos/versions", methods=["GET"])
    async def versions(self, request: Request) -> bytes:
        self._require_enabled()
        versions = parse_version_list(await self.factory.versions())
        latest = newest_stable(versions)
        return self._json(request, {"versions": [str(v) for v in versions], "latest": str(latest) if latest else None})

    @app.route("/images/talos/cache", methods=["GET"])
    def cache_listing(self, request: Request) -> bytes:
        self._require_enabled()
        entries = self.cache.entries()
        return self._json(request, {
            "entries": [e.describe() for e in entries],
            "disk_usage": self.cache.total_usage,
            "max_cache_size": self.cache.max_size,
            "downloads": [str(d.key) for d in self.downloads.active()],
        }, cache_control="no-store")

    async def _catalog(self, version: str) -> Catalog:
        self._require_enabled()
        if version != "latest":
            try:
                version = str(Version.parse(version))
            except InvalidVersion as e:
                raise BadRequest(str(e)) from None
        resolved = await self.resolver.resolve_version(version)
        return await self.factory.catalog(resolved)

    @app.route("/images/talos/<version>/extensions", methods=["GET"])
    async def extensions(self, request: Request, version: str) -> bytes:
        cat = (await self._catalog(version)).describe()
        return self._json(request, {"version": cat["version"], "extensions": cat["extensions"]})

    @app.route("/images/talos/<version>/overlays", methods=["GET"])
    async def overlays(self, request: Request, version: str) -> bytes:
        cat = (await self._catalog(version)).describe()
        return self._json(request, {"version": cat["version"], "overlays": cat["overlays"]})

    # --- images ------------------------------------------------------------------------

    @app.route("/images/talos/<version>/<arch>/<filename>", methods=["GET", "HEAD"])
    async def image(self, request: Request, version: str, arch: str, filename: str) -> bytes:
        self._require_enabled()
        req = parse_image_request(version, arch, filename, request.args, self.config.platforms)
        if not req.checksum:
            self.image_targets.remember(request.uri, self.config, req)  # for the hit path
        image = await self._resolve(req)
        try:
            return await self._answer(request, req, image)
        except UpstreamError as e:
            # a schematic made elsewhere is not checked against the catalog: the factory's 400
            # when it builds it (an extension or overlay this version lacks) is the client's error
            if req.schematic_id is None or e.upstream is None or e.upstream[0] != 400:
                raise
            raise BadRequest(
                f"the image factory cannot build schematic {req.schematic_id} for Talos {image.version}: "
                f"{e.upstream[1] or 'it answered 400'}"
            ) from None

    async def _answer(self, request: Request, req: ImageRequest, image: ResolvedImage) -> bytes:
        tracing.describe_image(request, image)
        if req.checksum:
            return await self._checksum(request, image)
        head = request.method == b"HEAD"
        # a HEAD of a miss starts the download (Ironic's HEAD check thereby warms the cache)
        # and waits only for the size, which qemu-img and Ironic read from it
        found = await self.downloads.follow(
            image, Need.SIZE if head else Need.FIRST_BYTE, self.config.first_byte_timeout
        )
        image_headers(request, image, found.outcome)
        config = self.config
        if isinstance(found, Hit):
            streamer = begin_entry(
                request, found.entry, cache=self.cache, clock=self.clock,
                stall_timeout=config.client_stall_timeout, max_ranges=config.max_ranges,
            )
            if streamer is not None:
                await streamer.done
        else:
            await serve_live(
                request, found.source, clock=self.clock, stall_timeout=config.client_stall_timeout,
                max_ranges=config.max_ranges,
            )
        return b""

    @app.route("/images/talos/profiles/<name>/<version>/<arch>/<filename>", methods=["GET", "HEAD"])
    async def profile_image(self, request: Request, name: str, version: str, arch: str, filename: str) -> bytes:
        self._require_enabled()
        profile = next((p for p in self.config.profiles if p.name == name), None)
        if profile is None:
            known = ", ".join(p.name for p in self.config.profiles) or "none are configured"
            raise NotFound(f"no profile named {name!r} (profiles: {known})")
        req = parse_image_request(version, arch, filename, {}, self.config.platforms)
        if request.args:
            raise BadRequest("a profile names the whole image: no query parameters")
        image = await self._within_first_byte_timeout(self.resolver.resolve_profile(profile, req))
        return await self._answer(request, req, image)

    async def _resolve(self, req: ImageRequest) -> ResolvedImage:
        return await self._within_first_byte_timeout(self.resolver.resolve(req))

    async def _within_first_byte_timeout(self, work: Coroutine[Any, Any, ResolvedImage]) -> ResolvedImage:
        """Resolve within first_byte_timeout: no client waits longer for the factory's metadata.

        The factory client's calls are single-flight with a Deferred per caller, so giving up
        here leaves the call running; its answer is kept for the next try."""
        d: Deferred[ResolvedImage] = Deferred.fromCoroutine(work)
        d.addTimeout(self.config.first_byte_timeout, self.clock)
        try:
            return await d
        except DeferredTimeout:
            raise Unavailable(
                f"the image factory ({self.factory.host}) has not answered within {self.config.first_byte_timeout:g}s"
                " (versions, catalog); the call goes on, retry later"
            ) from None

    async def _checksum(self, request: Request, image: ResolvedImage) -> bytes:
        head = request.method == b"HEAD"
        # HEAD never waits for a download (as for the image itself): 200 without
        # validators while the download goes on in the background
        found = await self.downloads.follow(image, Need.NOTHING if head else Need.COMPLETE, self.config.checksum_wait)
        request.setHeader("X-Talos-Version", image.version)
        request.setHeader("X-Talos-Schematic", image.schematic.id)
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        request.setHeader("Cache-Control", "no-cache" if image.latest else "max-age=86400")
        stamp_date(request)
        if not isinstance(found, Hit):
            return b""
        body = f"{found.entry.sha256}  {image.platform}.raw\n".encode()
        # its own representation: a strong ETag of its own, not the image's
        etag = f'"sha256sum-{found.entry.sha256}"'
        request.setHeader("ETag", etag)
        request.setHeader("Content-Length", str(len(body)))
        inm = request.getHeader("if-none-match")
        if inm is not None and etag_list_matches(inm, etag, strong=False):
            request.setResponseCode(304)
            request.responseHeaders.removeHeader("Content-Length")
            return b""
        return b"" if head else body

    # --- the factory-compatible mirror and the PXE front door (talos_twisted.mirror) ----------

    @app.route("/versions", methods=["GET"])
    async def mirror_versions(self, request: Request) -> bytes:
        _get_only(request)
        return await self.mirror.answer(request, self.mirror.versions(request))

    @app.route("/version/<version>/<any(extensions, overlays):kind>/official", methods=["GET"])
    async def mirror_catalog(self, request: Request, version: str, kind: str) -> bytes:
        _get_only(request)
        return await self.mirror.answer(request, self.mirror.catalog(request, version, kind))

    @app.route("/schematics", methods=["POST"])
    async def mirror_post_schematic(self, request: Request) -> bytes:
        return await self.mirror.answer(request, self.mirror.post_schematic(request))

    @app.route("/schematics/<sid>", methods=["GET"])
    async def mirror_schematic(self, request: Request, sid: str) -> bytes:
        _get_only(request)
        return await self.mirror.answer(request, self.mirror.get_schematic(request, sid))

    @app.route("/image/<sid>/<version>/<path>", methods=["GET", "HEAD"])
    async def mirror_image(self, request: Request, sid: str, version: str, path: str) -> bytes:
        return await self.mirror.answer(request, self.mirror.image(request, sid, version, path))

    @app.route("/pxe/<sid>/<version>/<target>", methods=["GET"])
    async def pxe(self, request: Request, sid: str, version: str, target: str) -> bytes:
        _get_only(request)
        return await self.mirror.answer(request, self.mirror.pxe(request, sid, version, target))

    @app.route("/pxe/profiles/<name>/<version>/<target>", methods=["GET"])
    async def pxe_profile(self, request: Request, name: str, version: str, target: str) -> bytes:
        _get_only(request)
        return await self.mirror.answer(request, self.mirror.pxe_profile(request, name, version, target))
