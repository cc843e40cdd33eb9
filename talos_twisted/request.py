"""Parse and validate an image URL into an immutable request; the resolved image and its key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from talos_twisted.errors import BadRequest, NotFound
from talos_twisted.names import ARCHES, MAX_EXTENSIONS, is_extension_name, is_platform_name
from talos_twisted.schematic import Schematic
from talos_twisted.versions import InvalidVersion, Version

QUERY_KEYS = ("extensions", "overlay", "overlays", "schematic")
_SCHEMATIC_ID = re.compile(r"[0-9a-f]{64}", re.ASCII)



@dataclass(frozen=True)
class ImageRequest:
    version: str  # "latest" or a normalised vX.Y.Z[-pre]
    arch: str
    platform: str
    extensions: tuple[str, ...]  # as the user wrote them, de-duplicated
    overlay: str | None
    checksum: bool  # the .sha256 file rather than the image
    schematic_id: str | None = None  # ?schematic=<id>: a schematic made elsewhere, as it is


def _split(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [part.strip() for part in value.split(",") if part.strip()]
    return out


def _decode(query: Mapping[bytes | str, list[bytes | str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, values in query.items():
        try:
            k = key.decode("utf-8") if isinstance(key, bytes) else key
            out[k] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
        except UnicodeDecodeError:
            raise BadRequest("the query string is not valid UTF-8") from None
    return out


def parse_image_request(
    version: str,
    arch: str,
    filename: str,
    query: Mapping[bytes | str, list[bytes | str]],
    platforms: Iterable[str],
) -> ImageRequest:
    if version != "latest":
        try:
            version = str(Version.parse(version))
        except InvalidVersion:
            raise BadRequest(f"version {version!r} is not 'latest' or a Talos version like v1.11.2") from None
    if arch not in ARCHES:
        raise BadRequest(f"architecture {arch!r} is not one of {', '.join(ARCHES)}")
    checksum = filename.endswith(".raw.sha256")
    base = filename[: -len(".raw.sha256")] if checksum else filename[: -len(".raw")] if filename.endswith(".raw") else None
    if base is None or not is_platform_name(base):
        raise BadRequest(f"{filename!r} is not '<platform>.raw' or '<platform>.raw.sha256'")
    allowed = tuple(platforms)
    if base not in allowed:
        raise NotFound(f"platform {base!r} is not served here (served: {', '.join(allowed)})")

    q = _decode(query)
    for key in q:
        if key not in QUERY_KEYS:
            raise BadRequest(f"unknown query parameter {key!r} (allowed: {', '.join(QUERY_KEYS)})")
    exts = list(dict.fromkeys(_split(q.get("extensions", []))))
    if len(exts) > MAX_EXTENSIONS:
        raise BadRequest(f"too many extensions ({len(exts)}; at most {MAX_EXTENSIONS})")
    overlays = list(dict.fromkeys(_split(q.get("overlay", []) + q.get("overlays", []))))
    if len(overlays) > 1:
        raise BadRequest(f"at most one overlay may be given, not {len(overlays)} ({', '.join(overlays)})")
    for name in exts + overlays:
        if not is_extension_name(name):
            raise BadRequest(f"{name!r} is not a valid extension or overlay name")
    schematics = list(dict.fromkeys(q.get("schematic", [])))
    schematic_id = None
    if schematics:
        if len(schematics) > 1 or not _SCHEMATIC_ID.fullmatch(schematics[0]):
            raise BadRequest("schematic must be one schematic ID: 64 lowercase hexadecimal digits")
        if exts or overlays:
            raise BadRequest("schematic names the whole image: it cannot be combined with extensions or overlay")
        schematic_id = schematics[0]
    return ImageRequest(version, arch, base, tuple(exts), overlays[0] if overlays else None, checksum, schematic_id)


@dataclass(frozen=True)
class ImageKey:
    """What names one cache entry; every part has been validated before a key exists."""

    version: str
    arch: str
    schematic: str
    platform: str
    # a factory asset kept byte-exact (the mirror: "kernel-amd64", "metal-amd64.raw.zst");
    # empty for the decompressed disk image of `platform`
    asset: str = ""

    @property
    def filename(self) -> str:
        return self.asset or f"{self.platform}.raw"

    @property
    def relpath(self) -> str:
        return f"{self.version}/{self.arch}/{self.schematic}/{self.filename}"

    def url_path(self) -> str:
        """Where this entry is served: our image route, or the mirror's asset path."""
        if self.asset:
            return f"/image/{self.schematic}/{self.version}/{self.asset}"
        return f"/images/talos/{self.version}/{self.arch}/{self.platform}.raw"

    def __str__(self) -> str:
        return f"{self.version}/{self.arch}/{self.schematic[:12]}/{self.asset or self.platform}"


@dataclass(frozen=True)
class ResolvedImage:
    version: str  # a concrete version, `latest` resolved
    arch: str
    platform: str
    schematic: Schematic
    latest: bool = False  # the URL said `latest`
    asset: str = ""  # a factory asset path, fetched and kept byte-exact (see ImageKey.asset)

    @property
    def key(self) -> ImageKey:
        return ImageKey(self.version, self.arch, self.schematic.id, self.platform, self.asset)

    @property
    def filename(self) -> str:
        return self.asset or f"talos-{self.version}-{self.arch}-{self.platform}.raw"

    def url_path(self) -> str:
        """The pinned URL path of this image (for Content-Location of a `latest` request)."""
        return self.key.url_path()
