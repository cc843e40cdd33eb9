"""Turn a parsed image request into a concrete image: version, full names, schematic."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime

from talos_twisted.catalog import UnknownName
from talos_twisted.config import Profile
from talos_twisted.errors import NotFound, UpstreamError
from talos_twisted.factory import FactoryClient
from talos_twisted.request import ImageRequest, ResolvedImage
from talos_twisted.errors import UpstreamNotFound
from talos_twisted.schematic import Overlay, Schematic, SchematicError, parse_schematic
from talos_twisted.versions import newest_stable, parse_version_list


_MEMO_SIZE = 4096  # resolutions remembered; the memo is dropped whole when it fills


def read_factory_schematic(sid: str, text: str) -> Schematic:
    """The schematic the factory stores as `sid`, from its text; UpstreamError if it cannot
    be read or reads back as another ID: the cache key must be the ID the client named, and
    a different canonical text is the factory's bug or ours, never a reason to serve another
    image."""
    try:
        schematic = parse_schematic(text)
    except SchematicError as e:
        raise UpstreamError(f"the image factory's schematic {sid} cannot be read: {e}") from None
    if schematic.id != sid:
        raise UpstreamError(f"the image factory's schematic {sid} reads back as {schematic.id}")
    return schematic


class ImageResolver:
    def __init__(
        self, factory: FactoryClient, default_extensions: tuple[str, ...] = (), clock: IReactorTime | None = None
    ):
        self._factory = factory
        self._defaults = default_extensions
        self._clock = clock
        # a URL resolves to the same image while the metadata it was resolved with is fresh:
        # a hit then does no version parsing, catalog lookup or schematic rendering
        self._memo: dict[ImageRequest, tuple[ResolvedImage, tuple[str, ...]]] = {}

    def set_default_extensions(self, names: tuple[str, ...]) -> None:
        """A reloaded configuration's default_extensions: every remembered resolution is stale."""
        self._defaults = names
        self._memo.clear()

    def memoized(self, req: ImageRequest) -> ResolvedImage | None:
        """The image `req` resolved to, while the metadata it was resolved with is fresh."""
        if self._clock is None:
            return None
        hit = self._memo.get(req)
        if hit is not None and self._clock.seconds() < self._factory.fresh_until(hit[1]):
            return hit[0]
        return None

    async def resolve(self, req: ImageRequest) -> ResolvedImage:
        image = self.memoized(req)
        if image is not None:
            return image
        if self._clock is None:
            return await self._resolve(req)
        image = await self._resolve(req)
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[req] = (image, ("versions", f"catalog-{image.version}"))
        return image

    async def resolve_version(self, spec: str) -> str:
        versions = parse_version_list(await self._factory.versions())
        if spec == "latest":
            newest = newest_stable(versions)
            if newest is None:
                raise UpstreamError("the image factory lists no stable Talos version")
            return str(newest)
        if spec not in {str(v) for v in versions}:
            raise NotFound(f"Talos version {spec} is not available from the image factory")
        return spec

    async def _resolve(self, req: ImageRequest) -> ResolvedImage:
        version = await self.resolve_version(req.version)
        if req.schematic_id is not None:
            return await self._by_id(req, version)
        catalog = await self._factory.catalog(version)
        try:
            names = {catalog.resolve_extension(n) for n in self._defaults + req.extensions}
            overlay = catalog.resolve_overlay(req.overlay) if req.overlay else None
        except UnknownName as e:
            raise NotFound(str(e)) from None
        # sorted, as the factory's UI does: the order of ?extensions= must not make a new image
        schematic = Schematic(
            extensions=tuple(sorted(names)),
            overlay=Overlay(overlay.name, overlay.image) if overlay else None,
        )
        return ResolvedImage(version, req.arch, req.platform, schematic, latest=req.version == "latest")

    async def _by_id(self, req: ImageRequest, version: str) -> ResolvedImage:
        """A schematic made elsewhere, served as it is: no defaults merged, no catalog check."""
        sid = req.schematic_id
        assert sid is not None
        try:
            text = await self._factory.schematic_text(sid)
        except UpstreamNotFound:
            raise NotFound(f"the image factory does not know schematic {sid}") from None
        schematic = read_factory_schematic(sid, text)
        return ResolvedImage(version, req.arch, req.platform, schematic, latest=req.version == "latest")

    async def resolve_profile(self, profile: Profile, req: ImageRequest) -> ResolvedImage:
        """A configured profile: its extensions (with default_extensions) and overlay from
        the version's catalog, its customization as the factory's own fields."""
        version = await self.resolve_version(req.version)
        catalog = await self._factory.catalog(version)
        try:
            names = sorted({catalog.resolve_extension(n) for n in self._defaults + profile.extensions})
            overlay = catalog.resolve_overlay(profile.overlay) if profile.overlay else None
        except UnknownName as e:
            raise NotFound(f"profile {profile.name}: {e}") from None
        customization = json.loads(profile.customization)
        if names:
            customization["systemExtensions"] = {"officialExtensions": names}
        doc: dict[str, Any] = {"customization": customization}
        if overlay is not None:
            doc["overlay"] = {"image": overlay.image, "name": overlay.name}
        schematic = parse_schematic(json.dumps(doc))  # checked when the configuration loaded
        return ResolvedImage(version, req.arch, req.platform, schematic, latest=req.version == "latest")
