"""Resolve the names users type (short or full) against a version's catalogs."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable

from talos_twisted.aliases import EXTENSION_ALIASES


class UnknownName(LookupError):
    """A name that is not in the catalog (or matches several entries)."""

    def __init__(self, kind: str, name: str, version: str, suggestions: Iterable[str] = (), ambiguous: bool = False):
        self.kind, self.name, self.version = kind, name, version
        self.suggestions = tuple(suggestions)
        if ambiguous:
            msg = f"{kind} {name!r} is ambiguous for Talos {version}: use one of {', '.join(self.suggestions)}"
        else:
            msg = f"unknown {kind} {name!r} for Talos {version}"
            if self.suggestions:
                msg += f" (did you mean {' or '.join(repr(s) for s in self.suggestions)}?)"
        super().__init__(msg)


@dataclass(frozen=True)
class OverlayEntry:
    name: str
    image: str


def _short(full: str) -> str:
    return full.rsplit("/", 1)[-1]


def _suggest(name: str, candidates: Iterable[str]) -> list[str]:
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    # a fragment such as "qemu" or "nvidia" should point at the names containing it
    containing = [c for c in pool if "/" not in c and len(name) >= 3 and name in c]
    return list(dict.fromkeys(close + containing))[:5]


@dataclass(frozen=True)
class Catalog:
    version: str
    extensions: tuple[str, ...]
    overlays: tuple[OverlayEntry, ...]

    @classmethod
    def from_factory(cls, version: str, extensions: list[Any], overlays: list[Any]) -> "Catalog":
        """Build from the factory's JSON lists, ignoring entries without the fields we need."""
        exts = tuple(e["name"] for e in extensions if isinstance(e, dict) and isinstance(e.get("name"), str))
        ovs = tuple(
            OverlayEntry(o["name"], o["image"])
            for o in overlays
            if isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("image"), str)
        )
        return cls(version, exts, ovs)

    def resolve_extension(self, name: str) -> str:
        """The full name to put in a schematic for ``name`` (full or short).

        A name that is not in this catalog is still accepted where the factory's alias table
        maps it to one that is; it is then returned as written (in its full form), since the
        factory keeps the name as written in the schematic and resolves the alias at build.
        """
        if name in self.extensions:
            return name
        matches = [full for full in self.extensions if _short(full) == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownName("extension", name, self.version, sorted(matches), ambiguous=True)
        olds = [old for old in EXTENSION_ALIASES if old == name or ("/" not in name and _short(old) == name)]
        known = [old for old in olds if EXTENSION_ALIASES[old] in self.extensions]
        if len(known) == 1:
            return known[0]
        pool = list(self.extensions) + [_short(e) for e in self.extensions]
        raise UnknownName("extension", name, self.version, _suggest(name, pool))

    def resolve_overlay(self, name: str) -> OverlayEntry:
        for entry in self.overlays:
            if entry.name == name:
                return entry
        # the factory names overlays with underscores; accept dashes when unambiguous
        norm = name.replace("-", "_")
        matches = [e for e in self.overlays if e.name.replace("-", "_") == norm]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownName("overlay", name, self.version, sorted(e.name for e in matches), ambiguous=True)
        raise UnknownName("overlay", name, self.version, _suggest(name, [e.name for e in self.overlays]))

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "extensions": [{"name": e, "short": _short(e)} for e in self.extensions],
            "overlays": [{"name": o.name, "image": o.image} for o in self.overlays],
        }
