"""The factory-compatible mirror: the factory's own routes, answered from our cache.

Another talos-images, talosctl, Terraform or Omni can use this daemon as its factory URL
(a tiered cache: site → regional → factory, each asset fetched once per tier). Paths,
bodies, status codes and plain-text errors are the factory's (docs/factory-api.md);
hits add what the factory lacks: Content-Length, ranges and validators. Compressed disk
images and every other asset are kept byte-exact as the factory sent them; a `.raw` goes
through the decompressing pipeline and is the same cache entry as our own image route's.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from typing import TYPE_CHECKING, Awaitable, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from talos_twisted.assetpath import (
    ENTERPRISE, INTERNAL, TEXT, Profile, ProfileError, asset_platform, check_asset_path, content_type,
    is_decompressed_image, split_sidecar,
)
from talos_twisted.cache import CacheEntry, CacheStore
from talos_twisted.config import TalosConfig
from talos_twisted.downloads import Downloads, Hit, Need
from talos_twisted.errors import InternalError, TalosError, UpstreamError, UpstreamNotFound
from talos_twisted.factory import FactoryClient
from talos_twisted.names import is_platform_name
from talos_twisted.observe import OneShot, within
from talos_twisted.pxe import base_url, boot_assets, ipxe_script
from talos_twisted.request import ImageKey, ImageRequest, ResolvedImage
from talos_twisted.resolver import ImageResolver, read_factory_schematic
from talos_twisted.schematic import Schematic, SchematicError, parse_schematic
from talos_twisted.serve import BODY_HEADERS, begin_entry, serve_live, stamp_date
from talos_twisted.versions import InvalidVersion, Version

if TYPE_CHECKING:
    from twisted.web.iweb import IRequest
    from twisted.web.server import Request

# the first path segments of the mirror's routes (errors under them are the factory's)
PREFIXES = (b"versions", b"version", b"schematics", b"image", b"pxe")
_SCHEMATIC_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)
MAX_CMDLINE = 64 * 1024
# how long POST /schematics waits for the factory's own answer before answering 201 anyway
FORWARD_WAIT = 5.0


class MirrorError(Exception):
    """An answer as the factory words it: a status and one line of plain text."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def as_mirror_error(e: TalosError) -> MirrorError:
    """Our error, as a factory-shaped answer: the factory's own 4xx passes through as it
    worded it; anything else keeps our status and message (which names the cause)."""
    if isinstance(e, UpstreamError) and e.upstream is not None and 400 <= e.upstream[0] < 500:
        return MirrorError(e.upstream[0], e.upstream[1] or "error")
    if isinstance(e, InternalError):
        return MirrorError(500, INTERNAL)
    return MirrorError(e.status, e.message, e.retry_after)


def render_text(request: IRequest, error: MirrorError) -> bytes:
    # an IRequest: Klein's error handlers (talos_twisted.web) get the request typed as one
    request.setResponseCode(error.status)
    for h in BODY_HEADERS:
        request.responseHeaders.removeHeader(h)
    request.setHeader("Content-Type", TEXT)
    request.setHeader("X-Content-Type-Options", "nosniff")  # as Go's http.Error
    request.setHeader("Cache-Control", "no-store")
    if error.retry_after:
        request.setHeader("Retry-After", str(error.retry_after))
    stamp_date(request)
    body = (error.message + "\n").encode("utf-8")
    request.setHeader("Content-Length", str(len(body)))
    return b"" if request.method == b"HEAD" else body


def mirror_version(text: str) -> str:
    """A version as the factory reads it (the `v` optional); malformed → its 500."""
    try:
        return str(Version.parse(text if text.startswith("v") else "v" + text))
    except InvalidVersion:
        raise MirrorError(500, INTERNAL) from None


def asset_profile(path: str) -> Profile:
    # the factory's grammar and a safe cache file name (shared with talos-images-cache)
    try:
        return check_asset_path(path)
    except ProfileError as e:
        raise MirrorError(400, f"error parsing profile from path: {e}") from None


def _platform(profile: Profile) -> str:
    return asset_platform(profile)


def asset_key(schematic_id: str, version: str, path: str, profile: Profile) -> ImageKey:
    """The cache entry of an asset path: a `.raw` is our decompressed image, the rest byte-exact."""
    if is_decompressed_image(profile):
        platform = profile.platform + ("-secureboot" if profile.secureboot else "")
        if not is_platform_name(platform):
            raise MirrorError(400, f'error parsing profile from path: invalid profile path: "{path}"')
        return ImageKey(version, profile.arch, schematic_id, platform)
    return ImageKey(version, profile.arch, schematic_id, _platform(profile), path)


class FactoryMirror:
    log = Logger()

    def __init__(
        self,
        config: Callable[[], TalosConfig],  # read per request: a reload (SIGHUP) applies at once
        *,
        factory: FactoryClient,
        resolver: ImageResolver,
        cache: CacheStore,
        downloads: Downloads,
        clock: IReactorTime,
    ):
        self._config = config
        self.factory = factory
        self.resolver = resolver
        self.cache = cache
        self.downloads = downloads
        self.clock = clock

    @property
    def config(self) -> TalosConfig:
        return self._config()

    async def answer(self, request: Request, work: Awaitable[bytes]) -> bytes:
        """Run a mirror route; every error becomes the factory's plain-text answer."""
        rid = request.getHeader("x-request-id")
        request.setHeader("X-Request-ID", rid if rid and len(rid) <= 200 and rid.isprintable() else str(uuid.uuid4()))
        try:
            if not self.config.mirror:
                getattr(work, "close", lambda: None)()  # a coroutine never started
                raise MirrorError(404, "404 page not found")
            return await work
        except MirrorError as e:
            return render_text(request, e)
        except TalosError as e:
            return render_text(request, as_mirror_error(e))
        except CancelledError:
            raise
        except Exception:
            self.log.failure("internal error on mirror route {path}", path=request.path)
            return render_text(request, MirrorError(500, INTERNAL))

    # --- metadata ------------------------------------------------------------------------

    def _json(self, request: Request, doc: object, status: int = 200, ctype: str = "application/json") -> bytes:
        body = (json.dumps(doc, separators=(",", ":")) + "\n").encode("utf-8")
        request.setResponseCode(status)
        request.setHeader("Content-Type", ctype)
        request.setHeader("Content-Length", str(len(body)))
        return body

    async def versions(self, request: Request) -> bytes:
        # the factory sets no Content-Type here (Go sniffs text/plain)
        return self._json(request, await self.factory.versions(), ctype=TEXT)

    async def _known_version(self, version: str) -> None:
        if version not in await self.factory.versions():
            raise MirrorError(404, f"version {version[1:]} is not available")

    async def catalog(self, request: Request, version: str, kind: str) -> bytes:
        v = mirror_version(version)
        await self._known_version(v)
        return self._json(request, (await self.factory.catalog_lists(v))[kind])

    async def post_schematic(self, request: Request) -> bytes:
        body = request.content.read() if request.content is not None else b""
        try:
            schematic = parse_schematic(body)
        except SchematicError as e:
            raise MirrorError(400, str(e).splitlines()[0] if str(e) else "invalid schematic") from None
        # kept on disk first: the answer never fails with the factory; forwarded at once and
        # awaited a little, so that a sibling node (behind a hashing balancer) asking the
        # factory for it next finds it; else it reaches the factory before its first download
        self.factory.remember_schematic(schematic)
        forwarded: OneShot[None] = OneShot()

        def done(result: object) -> None:
            if isinstance(result, Failure):
                self.log.info(
                    "schematic {id} not yet POSTed to the image factory ({error}); it will be before its first download",
                    id=schematic.id, error=result.getErrorMessage(),
                )
            forwarded.fire(None)

        Deferred.fromCoroutine(self.factory.ensure_schematic(schematic)).addBoth(done)
        await within(forwarded, FORWARD_WAIT, self.clock)  # not in time: it goes on
        return self._json(request, {"id": schematic.id, "schematic": schematic.to_yaml()}, status=201)

    async def get_schematic(self, request: Request, sid: str) -> bytes:
        if not _SCHEMATIC_ID.fullmatch(sid):
            raise MirrorError(404, "schematic not found")
        try:
            text = await self.factory.schematic_text(sid)
        except UpstreamNotFound:
            raise MirrorError(404, "schematic not found") from None
        body = text.encode("utf-8")
        request.setHeader("Content-Type", "application/yaml")
        request.setHeader("Content-Length", str(len(body)))
        return body

    async def _schematic(self, sid: str) -> Schematic:
        missing = MirrorError(404, f'schematic ID "{sid}" not found')
        if not _SCHEMATIC_ID.fullmatch(sid):
            raise missing
        try:
            text = await self.factory.schematic_text(sid)
        except UpstreamNotFound:
            raise missing from None
        return read_factory_schematic(sid, text)

    # --- assets --------------------------------------------------------------------------

    async def image(self, request: Request, sid: str, version: str, path: str) -> bytes:
        asset, sidecar = split_sidecar(path)
        if sidecar:  # the community factory's answer, checked first as there
            raise MirrorError(402, ENTERPRISE[sidecar])
        if not _SCHEMATIC_ID.fullmatch(sid):
            raise MirrorError(404, f'schematic ID "{sid}" not found')
        v = mirror_version(version)
        profile = asset_profile(path)
        key = asset_key(sid, v, path, profile)
        entry = self.cache.get(key)  # a hit needs no upstream call at all
        head = request.method == b"HEAD"
        if entry is not None:
            self._describe(request, key, path, "HIT")
            await self._serve_hit(request, entry)
            return b""
        schematic = await self._schematic(sid)
        await self._known_version(v)
        image = ResolvedImage(v, key.arch, key.platform, schematic, asset=key.asset)
        found = await self.downloads.follow(image, Need.SIZE if head else Need.FIRST_BYTE, self.config.first_byte_timeout)
        self._describe(request, key, path, found.outcome)
        if isinstance(found, Hit):
            await self._serve_hit(request, found.entry)
        else:
            await serve_live(request, found.source, clock=self.clock, stall_timeout=self.config.client_stall_timeout,
                             max_ranges=self.config.max_ranges)
        return b""

    async def _serve_hit(self, request: Request, entry: CacheEntry) -> None:
        streamer = begin_entry(request, entry, cache=self.cache, clock=self.clock,
                               stall_timeout=self.config.client_stall_timeout, max_ranges=self.config.max_ranges)
        if streamer is not None:
            await streamer.done

    @staticmethod
    def _describe(request: Request, key: ImageKey, path: str, outcome: str) -> None:
        request.setHeader("Content-Type", content_type(path))
        request.setHeader("Content-Disposition", f'attachment; filename="{path}"')
        request.setHeader("X-Talos-Version", key.version)
        request.setHeader("X-Talos-Schematic", key.schematic)
        request.setHeader("X-Talos-Cache", outcome)
        request.setHeader("Cache-Control", "max-age=86400")

    # --- the PXE front door ----------------------------------------------------------------

    async def pxe(self, request: Request, sid: str, version: str, target: str) -> bytes:
        if not _SCHEMATIC_ID.fullmatch(sid):
            raise MirrorError(404, f'schematic ID "{sid}" not found')
        schematic = await self._schematic(sid)
        return await self._pxe(request, schematic, mirror_version(version), target)

    async def pxe_profile(self, request: Request, name: str, version: str, target: str) -> bytes:
        profile = next((p for p in self.config.profiles if p.name == name), None)
        if profile is None:
            raise MirrorError(404, f"profile {name!r} not found")
        v = version if version == "latest" else mirror_version(version)
        boot = asset_profile("cmdline-" + target)
        req = ImageRequest(v, boot.arch, _platform(boot), (), None, False)
        resolved = await self.resolver.resolve_profile(profile, req)
        # the script's URLs name the schematic by ID: the mirror must know it, offline too
        self.factory.remember_schematic(resolved.schematic)
        return await self._pxe(request, resolved.schematic, resolved.version, target)

    async def _pxe(self, request: Request, schematic: Schematic, version: str, target: str) -> bytes:
        boot = asset_profile("cmdline-" + target)
        base = base_url(self.config.public_url, request.getHeader("host"), request.isSecure())
        cmdline_image = ResolvedImage(version, boot.arch, _platform(boot), schematic, asset="cmdline-" + target)
        entry = self.cache.get(cmdline_image.key)  # cached: the node boots with the factory down
        if entry is None:
            await self._known_version(version)
            found = await self.downloads.follow(cmdline_image, Need.COMPLETE, self.config.first_byte_timeout)
            assert isinstance(found, Hit)  # COMPLETE: a hit, or an error raised
            entry = found.entry
        cmdline = self._read_small(entry).decode("utf-8", "replace").strip()
        # the node asks for these next: start them now (the boot waits less, the cache holds them)
        for asset in boot_assets(boot):
            self._warm(ResolvedImage(version, boot.arch, _platform(boot), schematic, asset=asset))
        body = ipxe_script(base, schematic.id, version, boot, cmdline).encode("utf-8")
        request.setHeader("Content-Type", TEXT)
        request.setHeader("Content-Length", str(len(body)))
        request.setHeader("Cache-Control", "no-cache")
        return body

    def _warm(self, image: ResolvedImage) -> None:
        def failed(f: Failure) -> None:
            self.log.warn("could not start {key}: {error}", key=str(image.key), error=f.getErrorMessage())

        Deferred.fromCoroutine(self.downloads.follow(image, Need.NOTHING, None)).addErrback(failed)

    def _read_small(self, entry: CacheEntry) -> bytes:
        if entry.size > MAX_CMDLINE:
            raise MirrorError(500, INTERNAL)
        fd = self.cache.open_entry(entry)
        try:
            return os.pread(fd, entry.size, 0)
        finally:
            os.close(fd)
