"""The factory's schematic document: canonical YAML and its ID.

The factory marshals a schematic with go-yaml (4-space indent, sequences indented under
their key, empty fields omitted except ``customization``) and names it by the sha256 of
that text, so the ID of a hit can be computed here without asking the factory.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml


class SchematicError(ValueError):
    """A schematic document that the factory would reject."""


@dataclass(frozen=True)
class Overlay:
    name: str
    image: str


@dataclass(frozen=True)
class MetaValue:
    key: int
    value: str


@dataclass(frozen=True)
class Schematic:
    """The subset of the factory's schematic this project builds (field order as upstream)."""

    extensions: tuple[str, ...] = ()
    overlay: Overlay | None = None
    extra_kernel_args: tuple[str, ...] = ()
    meta: tuple[MetaValue, ...] = field(default=())

    def to_yaml(self) -> str:
        return canonical_yaml(self)

    @property
    def id(self) -> str:
        return schematic_id(self.to_yaml())


def schematic_id(canonical_text: str) -> str:
    return hashlib.sha256(canonical_text.encode("utf-8")).hexdigest()


_PLAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./=:,+@-]*$")
_RESERVED = re.compile(
    r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF"
    r"|null|Null|NULL|~|[-+]?(?:\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?|0x[0-9a-fA-F_]+|0o?[0-7_]+"
    r"|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN))$"
)


def _scalar(value: str) -> str:
    # go-yaml writes plain scalars when they read back as the same string; quote the rest
    if _PLAIN_RE.match(value) and not _RESERVED.match(value) and ": " not in value:
        return value
    return json.dumps(value)


def canonical_yaml(s: Schematic) -> str:
    lines: list[str] = []
    if s.overlay is not None:
        lines += ["overlay:", f"    image: {_scalar(s.overlay.image)}", f"    name: {_scalar(s.overlay.name)}"]
    custom: list[str] = []
    if s.extra_kernel_args:
        custom.append("    extraKernelArgs:")
        custom += [f"        - {_scalar(a)}" for a in s.extra_kernel_args]
    if s.meta:
        custom.append("    meta:")
        for m in s.meta:
            custom += [f"        - key: {m.key}", f"          value: {_scalar(m.value)}"]
    if s.extensions:
        custom += ["    systemExtensions:", "        officialExtensions:"]
        custom += [f"            - {_scalar(e)}" for e in s.extensions]
    if custom:
        lines.append("customization:")
        lines += custom
    else:
        lines.append("customization: {}")
    return "\n".join(lines) + "\n"


_TOP_FIELDS = {"overlay", "customization"}
_OVERLAY_FIELDS = {"image", "name", "options"}
_CUSTOM_FIELDS = {"extraKernelArgs", "meta", "systemExtensions", "secureboot", "bootloader"}
_EXT_FIELDS = {"officialExtensions"}


def _expect(obj: Any, kind: type, where: str) -> Any:
    if obj is None:
        return kind()
    if not isinstance(obj, kind):
        raise SchematicError(f"{where}: expected a {kind.__name__}")
    return obj


def _unknown(mapping: dict[Any, Any], allowed: set[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise SchematicError(f"{where}: field {key} not found in type")


def parse_schematic(text: str | bytes) -> Schematic:
    """Parse a schematic document (YAML or JSON) strictly, as the factory does."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SchematicError(f"invalid YAML: {e}".splitlines()[0]) from None
    doc = _expect(doc, dict, "schematic")
    _unknown(doc, _TOP_FIELDS, "schematic")
    overlay = None
    ov = _expect(doc.get("overlay"), dict, "overlay")
    if ov:
        _unknown(ov, _OVERLAY_FIELDS, "overlay")
        overlay = Overlay(name=str(ov.get("name", "")), image=str(ov.get("image", "")))
    cust = _expect(doc.get("customization"), dict, "customization")
    _unknown(cust, _CUSTOM_FIELDS, "customization")
    sysext = _expect(cust.get("systemExtensions"), dict, "systemExtensions")
    _unknown(sysext, _EXT_FIELDS, "systemExtensions")
    exts = _expect(sysext.get("officialExtensions"), list, "officialExtensions")
    args = _expect(cust.get("extraKernelArgs"), list, "extraKernelArgs")
    metas = []
    for item in _expect(cust.get("meta"), list, "meta"):
        item = _expect(item, dict, "meta")
        _unknown(item, {"key", "value"}, "meta")
        metas.append(MetaValue(key=int(item.get("key", 0)), value=str(item.get("value", ""))))
    return Schematic(
        extensions=tuple(str(e) for e in exts),
        overlay=overlay,
        extra_kernel_args=tuple(str(a) for a in args),
        meta=tuple(metas),
    )
