"""The factory's URL layout: the path of a disk image, and the Content-Range of its 206s.

Only here does the daemon spell the factory's image paths (``image_path``); ``content_range``
reads the first byte and total of a ranged answer of the factory (or of where it redirected).
"""

from __future__ import annotations

import re

from twisted.web.iweb import IResponse

COMPRESSION_SUFFIX = {"xz": ".xz", "zst": ".zst", "none": ""}


SECUREBOOT_SUFFIX = "-secureboot"


def image_path(schematic_id: str, version: str, platform: str, arch: str, compression: str) -> str:
    """The factory's path of a disk image: ``/image/{id}/{version}/{platform}-{arch}.raw[.xz|.zst]``.

    A served platform ``{base}-secureboot`` is the factory's secureboot image of ``{base}``,
    whose path puts ``-secureboot`` after the arch: ``metal-amd64-secureboot.raw.zst``.
    """
    suffix = COMPRESSION_SUFFIX[compression]
    if platform.endswith(SECUREBOOT_SUFFIX):
        base = platform[: -len(SECUREBOOT_SUFFIX)]
        return f"/image/{schematic_id}/{version}/{base}-{arch}{SECUREBOOT_SUFFIX}.raw{suffix}"
    return f"/image/{schematic_id}/{version}/{platform}-{arch}.raw{suffix}"


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$", re.ASCII)


def content_range(response: IResponse) -> tuple[int | None, int | None]:
    """(first byte, total) of a 206's Content-Range; None for what it does not say."""
    raw = (response.headers.getRawHeaders(b"content-range") or [b""])[0]
    m = _CONTENT_RANGE.match(raw.decode("latin-1").strip())
    if m is None or len(raw) > 80:
        return None, None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))
