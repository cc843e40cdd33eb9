"""Which cached entries an export takes: the URL paths an operator names them by, as the
daemon serves them (`parse_url`: our ``/images/talos/…`` route, or the mirror's
``/image/{schematic}/{version}/{path}``), and the entries each one matches (`matches`, `select`).
"""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from talos_twisted.assetpath import ProfileError, asset_platform, check_asset_path, is_decompressed_image
from talos_twisted.cachetool_archive import Item, asset_ok, is_sha256
from talos_twisted.errors import TalosError
from talos_twisted.names import is_platform_name
from talos_twisted.request import ImageKey, ImageRequest, parse_image_request
from talos_twisted.versions import InvalidVersion, Version, newest_stable, parse_version_list


class UsageError(Exception):
    """An operator error (exit 2): one line."""


def _mirror_key(text: str, sid: str, version: str, path: str) -> ImageKey:
    """The cache entry of the mirror's ``/image/{sid}/{version}/{path}``, as the mirror keys it."""
    if not is_sha256(sid):
        raise UsageError(f"{text}: {sid[:80]!r} is not a schematic ID (64 lowercase hexadecimal digits)")
    try:  # as the factory reads it: the `v` optional
        v = str(Version.parse(version if version.startswith("v") else "v" + version))
    except InvalidVersion:
        raise UsageError(f"{text}: version {version[:80]!r} is not a Talos version like v1.11.2") from None
    try:
        profile = check_asset_path(path)
    except ProfileError as e:
        raise UsageError(f"{text}: not a factory asset path: {e}") from None
    if is_decompressed_image(profile):  # {platform}-{arch}.raw: our decompressed image of that schematic
        platform = profile.platform + ("-secureboot" if profile.secureboot else "")
        if not is_platform_name(platform):
            raise UsageError(f"{text}: {platform[:80]!r} is not a platform name")
        return ImageKey(v, profile.arch, sid, platform)
    key = ImageKey(v, profile.arch, sid, asset_platform(profile), path)
    if not asset_ok(key):
        raise UsageError(f"{text}: {path!r} is not an asset name the mirror keeps")
    return key


def parse_url(text: str) -> ImageRequest | ImageKey:
    """An image URL path as the daemon serves it (a whole URL too): our image route (a
    request, matched by `matches`), or the mirror's asset path (the one entry it names, by
    schematic ID, version and asset name); UsageError if it is neither."""
    parts = urlsplit(text)
    segs = parts.path.split("/")
    if len(segs) == 5 and segs[:2] == ["", "image"]:
        return _mirror_key(text, *(unquote(s) for s in segs[2:]))
    if len(segs) != 6 or segs[:3] != ["", "images", "talos"]:
        raise UsageError(f"{text}: not an image URL path like /images/talos/v1.11.2/amd64/openstack.raw?extensions=… "
                         "or /image/{schematic}/v1.11.2/kernel-amd64")
    filename = unquote(segs[5])
    query: dict[bytes | str, list[bytes | str]] = {k: list(v) for k, v in parse_qs(parts.query).items()}
    try:
        # any platform is accepted here: whether it is cached decides
        return parse_image_request(unquote(segs[3]), unquote(segs[4]), filename, query, [filename.split(".", 1)[0]])
    except TalosError as e:
        raise UsageError(f"{text}: {e.message}") from None


def _name_matches(asked: str, full: str) -> bool:
    return asked == full or ("/" not in asked and full.rsplit("/", 1)[-1] == asked)


def matches(item: Item, req: ImageRequest | ImageKey, version: str, defaults: Sequence[str]) -> bool:
    """Whether `item` is the image `req` names: version, arch, platform, and the same
    extensions (full names, or short ones matching the last path component) and overlay;
    or its schematic ID (``?schematic=``). A mirror path (a key) names exactly one entry."""
    k = item.key
    if isinstance(req, ImageKey):
        return k == req
    if k.asset or (k.version, k.arch, k.platform) != (version, req.arch, req.platform):
        return False
    if req.schematic_id is not None:  # the whole image, as it is: no defaults merged
        return k.schematic == req.schematic_id
    asked, have = [*defaults, *req.extensions], item.info.get("extensions", [])
    if not all(any(_name_matches(a, h) for h in have) for a in asked):
        return False
    if not all(any(_name_matches(a, h) for a in asked) for h in have):
        return False
    overlay = item.info.get("overlay")
    if req.overlay is None or not overlay:
        return req.overlay is None and not overlay
    return bool(req.overlay.replace("-", "_") == overlay.replace("-", "_"))


def select(items: list[Item], paths: Sequence[str], versions: Any, defaults: Sequence[str]) -> list[Item]:
    if not paths:
        return items
    chosen: dict[ImageKey, Item] = {}
    for path in paths:
        req = parse_url(path)
        version = req.version
        if version == "latest":
            newest = newest_stable(parse_version_list(versions if isinstance(versions, list) else []))
            if newest is None:
                raise UsageError(f"{path}: 'latest' cannot be resolved: the cache has no stored versions list")
            version = str(newest)
        found = [i for i in items if matches(i, req, version, defaults)]
        if not found:
            what = (req.schematic[:12] + "…", req.filename) if isinstance(req, ImageKey) else (req.arch, req.platform)
            raise UsageError(f"{path}: no cached image matches ({version}, {', '.join(what)})")
        chosen.update((i.key, i) for i in found)
    return sorted(chosen.values(), key=lambda i: i.key.relpath)
