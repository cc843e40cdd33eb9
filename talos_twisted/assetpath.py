"""The image factory's asset path grammar of ``/image/{schematic}/{version}/{path}`` (pure).

Shared by the factory mirror and the fake factory. Follows ``docs/factory-api.md`` ("Asset paths and compression"), parsed in the order of the
factory's ``internal/profile/profile.go``: boot assets by prefix (``kernel-``, ``cmdline-``,
``initramfs-``), then ``.iso``, ``-uki.efi``, the installer tar, and otherwise a disk image
read from the end (compression suffix, disk format, ``-secureboot``, arch, platform).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from talos_twisted.names import is_platform_name

# Upstream checks these suffixes before anything else, on the community build as 402.
CHECKSUM_SUFFIXES = (".sha512", ".sha256")
SIGNATURE_SUFFIX = ".sigstore.json"

ARCH_ALIASES = {"amd64": "amd64", "x86_64": "amd64", "i386": "amd64", "arm64": "arm64"}
DISK_FORMATS = ("raw", "qcow2", "vhd", "ova")
# in the order upstream tries them: ".tar.gz" before ".gz"
OUT_FORMATS = ("tar.gz", "gz", "xz", "zst")

# What the factory answers in plain text, shared by the mirror and the fake factory: its
# error Content-Type, its body for a 500 it does not explain, and the community build's
# answer (402) for the sidecar suffixes above, checked before the schematic lookup.
TEXT = "text/plain; charset=utf-8"
INTERNAL = "internal server error"
ENTERPRISE = {
    ".sha256": "enterprise not enabled: checksum endpoint is not available",
    ".sha512": "enterprise not enabled: checksum endpoint is not available",
    ".sigstore.json": "enterprise signing is not enabled: signature endpoint is not available",
}

KINDS = ("image", "iso", "uki", "installer", "kernel", "initramfs", "cmdline")


class ProfileError(ValueError):
    """A path the factory cannot parse: answered 400 ``error parsing profile from path: ...``."""


@dataclass(frozen=True)
class Profile:
    """What an asset path asks for."""

    kind: str  # one of KINDS
    arch: str  # canonical: amd64 | arm64
    platform: str = "metal"  # upstream uses metal where the platform does not matter
    secureboot: bool = False
    disk_format: str = ""  # DISK_FORMATS, for kind "image" only
    out_format: str = "none"  # OUT_FORMATS or "none"; initramfs is always xz-compressed


def _arch(text: str) -> str:
    arch = ARCH_ALIASES.get(text)
    if arch is None:
        raise ProfileError(f'invalid architecture: "{text}"')
    return arch


def _platform_arch(text: str) -> tuple[str, str, bool]:
    """``<platform>-<arch>[-secureboot]``; platform names are not validated upstream and may
    contain dashes themselves (``digital-ocean``), so the arch is the last part."""
    rest, secureboot = _cut_suffix(text, "-secureboot")
    platform, dash, arch = rest.rpartition("-")
    if not dash or not platform:
        raise ProfileError(f'invalid platform-arch: "{rest}"')
    return platform, _arch(arch), secureboot


def _cut_suffix(text: str, suffix: str) -> tuple[str, bool]:
    if text.endswith(suffix):
        return text[: -len(suffix)], True
    return text, False


def split_sidecar(path: str) -> tuple[str, str]:
    """(asset path, sidecar suffix or ""): ``.sha256``, ``.sha512``, ``.sigstore.json``."""
    for suffix in (SIGNATURE_SUFFIX, *CHECKSUM_SUFFIXES):
        base, cut = _cut_suffix(path, suffix)
        if cut:
            return base, suffix
    return path, ""


def parse_profile(path: str) -> Profile:
    """The profile of an asset path, or ProfileError with the factory's wording."""
    if path.startswith("kernel-"):
        return Profile("kernel", _arch(path[len("kernel-") :]))
    if path.startswith("cmdline-"):
        platform, arch, secureboot = _platform_arch(path[len("cmdline-") :])
        return Profile("cmdline", arch, platform, secureboot)
    if path.startswith("initramfs-") and path.endswith(".xz"):
        return Profile("initramfs", _arch(path[len("initramfs-") : -len(".xz")]), out_format="xz")
    rest, cut = _cut_suffix(path, ".iso")
    if cut:
        platform, arch, secureboot = _platform_arch(rest)
        return Profile("iso", arch, platform, secureboot)
    rest, cut = _cut_suffix(path, "-uki.efi")
    if cut:
        platform, arch, secureboot = _platform_arch(rest)
        return Profile("uki", arch, platform, secureboot)
    if path.startswith("installer-") and path.endswith(".tar"):
        rest, secureboot = _cut_suffix(path[len("installer-") : -len(".tar")], "-secureboot")
        return Profile("installer", _arch(rest), secureboot=secureboot)
    # a disk image, read from the end
    rest, out_format = path, "none"
    for fmt in OUT_FORMATS:
        if path.endswith("." + fmt):
            rest, out_format = path[: -len(fmt) - 1], fmt
            break
    for disk in DISK_FORMATS:
        base, cut = _cut_suffix(rest, "." + disk)
        if cut:
            platform, arch, secureboot = _platform_arch(base)
            return Profile("image", arch, platform, secureboot, disk, out_format)
    raise ProfileError(f'invalid profile path: "{rest}"')


# An asset name the mirror keeps becomes a file name in the cache: a safe alphabet (no "/",
# no leading "."), a bounded length.
ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)


def check_asset_path(path: str) -> Profile:
    """The profile of an asset path the mirror may keep as a cache file (the factory's
    grammar, and a safe file name); ProfileError in the factory's wording otherwise."""
    profile = parse_profile(path)
    # ".tmp-" marks the cache's temporary files and ".json" its sidecars (cachefs.TEMP_MARK,
    # cache.SIDECAR): an asset named so would be taken for one
    if not ASSET_NAME.fullmatch(path) or ".tmp-" in path or path.endswith(".json"):
        raise ProfileError(f'invalid profile path: "{path}"')
    return profile


def is_decompressed_image(profile: Profile) -> bool:
    """A plain ``.raw``: the decompressed image of its platform (our image entry), not an asset kept byte-exact."""
    return profile.kind == "image" and profile.disk_format == "raw" and profile.out_format == "none"


def asset_platform(profile: Profile) -> str:
    """The platform of an asset's cache key: its own (``-secureboot`` appended) when a valid
    platform name, else ``metal`` (boot assets, installers)."""
    name = profile.platform + ("-secureboot" if profile.secureboot else "")
    return name if is_platform_name(name) else "metal"


# Content-Type by extension, as upstream's internal/mime (".zst" per docs/factory-api.md;
# ".tar" is what Go's mime table gives on a host with /etc/mime.types: an inference).
_CONTENT_TYPES = {
    ".efi": "application/efi",
    ".iso": "application/x-iso9660-image",
    ".xz": "application/x-xz",
    ".gz": "application/gzip",
    ".zst": "application/zstd",
    ".qcow2": "application/x-qemu-disk",
    ".tar": "application/x-tar",
}


def content_type(filename: str) -> str:
    dot = filename.rfind(".")
    ext = filename[dot:] if dot > filename.rfind("/") and dot >= 0 else ""
    return _CONTENT_TYPES.get(ext, "application/octet-stream")
