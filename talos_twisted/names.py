"""The names an image is made of, defined once for the URL parser and the configuration.

A configured name (a default extension, a served platform, a prefetched image) must be one a
URL could also name, or the daemon would accept settings it can never serve; so both check
against the patterns and validators here. Pure: no imports beyond ``re``.

Every pattern is ASCII only (``[0-9]``, not ``\\d``, and ``re.ASCII``): a name ends up in
file paths and factory URLs, where a Unicode digit or letter that looks right is a different
name. Validators use ``fullmatch``: ``$`` would also accept a trailing newline.
"""

from __future__ import annotations

import re

ARCHES: tuple[str, ...] = ("amd64", "arm64")

# What the image factory may be asked for; images are always served decompressed.
COMPRESSIONS: tuple[str, ...] = ("zst", "xz", "none")

# Extensions one request may name: bounds the schematic the factory is asked to build.
MAX_EXTENSIONS = 64

# An extension or overlay: short ("qemu-guest-agent") or full ("siderolabs/qemu-guest-agent").
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}", re.ASCII)

# A platform is a file name in URLs ("{platform}.raw") and in the cache.
PLATFORM_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}", re.ASCII)

# "latest" or vMAJOR.MINOR.PATCH (semver: no leading zeros) with an optional pre-release
# of dot-separated letters and digits, e.g. v1.12.0-beta.1.
_NUMBER = r"(?:0|[1-9][0-9]*)"
VERSION_PATTERN = re.compile(
    rf"latest|v{_NUMBER}\.{_NUMBER}\.{_NUMBER}(?:-[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?", re.ASCII
)


def is_extension_name(name: str) -> bool:
    """An extension name; ``..`` is refused because a name may become part of a path."""
    return NAME_PATTERN.fullmatch(name) is not None and ".." not in name


def is_overlay_name(name: str) -> bool:
    """Overlays follow the same rule as extensions."""
    return is_extension_name(name)


def is_platform_name(name: str) -> bool:
    """A platform, or ``{platform}-secureboot`` for the factory's secureboot image of it:
    ``secureboot`` is only ever that last part (``secureboot``, ``metal-secureboot-secureboot``
    and ``secureboot-metal`` name no image the factory builds)."""
    if PLATFORM_PATTERN.fullmatch(name) is None:
        return False
    parts = name.split("-")
    return "secureboot" not in parts[:-1] and parts != ["secureboot"]


def is_version_spec(text: str) -> bool:
    """``latest`` or a version written as the factory lists it (``v1.11.2``, ``v1.12.0-beta.1``)."""
    return VERSION_PATTERN.fullmatch(text) is not None


def is_arch(text: str) -> bool:
    return text in ARCHES


def is_compression(text: str) -> bool:
    return text in COMPRESSIONS
