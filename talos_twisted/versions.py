"""Talos release versions: parsing, ordering, and picking the newest stable one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_VERSION_RE = re.compile(
    r"^v?(?P<major>0|[1-9]\d{0,5})\.(?P<minor>0|[1-9]\d{0,5})\.(?P<patch>0|[1-9]\d{0,5})"
    r"(?:-(?P<pre>[0-9A-Za-z]+(?:\.[0-9A-Za-z]+){0,3}))?\Z",
    re.ASCII,  # a Unicode digit is not a digit: versions end up in paths and factory URLs
)


class InvalidVersion(ValueError):
    """A string that is not a Talos version (`vX.Y.Z` or `vX.Y.Z-pre.N`)."""


@dataclass(frozen=True, order=False)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Version":
        m = _VERSION_RE.match(text)
        if m is None:
            raise InvalidVersion(f"{text!r} is not a Talos version like v1.11.2 or v1.12.0-beta.1")
        pre = tuple(m.group("pre").split(".")) if m.group("pre") else ()
        return cls(int(m.group("major")), int(m.group("minor")), int(m.group("patch")), pre)

    @property
    def stable(self) -> bool:
        return not self.pre

    def __str__(self) -> str:
        core = f"v{self.major}.{self.minor}.{self.patch}"
        return core + ("-" + ".".join(self.pre) if self.pre else "")

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # semver: a release sorts after its pre-releases; numeric identifiers compare as numbers
        pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 1 if not self.pre else 0, pre_key)

    def __lt__(self, other: "Version") -> bool:
        return self._key() < other._key()

    def __le__(self, other: "Version") -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: "Version") -> bool:
        return self._key() > other._key()

    def __ge__(self, other: "Version") -> bool:
        return self._key() >= other._key()


def parse_version_list(items: Iterable[object]) -> list[Version]:
    """Parse the factory's `/versions` answer, skipping entries that are not versions."""
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                out.append(Version.parse(item))
            except InvalidVersion:
                continue
    return sorted(out)


def newest_stable(versions: Iterable[Version]) -> Version | None:
    stable = [v for v in versions if v.stable]
    return max(stable) if stable else None
