"""The factory's schematic document: its struct, validation, canonical YAML and ID.

The Talos Image Factory (v1.5.x) reads a POSTed schematic (YAML or JSON) with go-yaml v4
into its Go struct (unknown fields refused), validates it, marshals it again, and names it
by the sha256 of that text. Everything here follows that path (``talos_twisted.goyaml``
emulates go-yaml), so a schematic's ID can be computed without asking the factory.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from talos_twisted import goyaml
from talos_twisted.goyaml import Decoder, Map, Node, Rep, Scalar, Seq, rep_str

T = TypeVar("T")


class SchematicError(ValueError):
    """A schematic document that the factory would reject (400)."""


@dataclass(frozen=True)
class Overlay:
    name: str
    image: str
    # free-form (Go map[string]any); not part of the hash, so an Overlay stays hashable
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class MetaValue:
    key: int  # uint8
    value: str


@dataclass(frozen=True)
class SecureBoot:
    enroll_keys: str = ""  # off | manual | if-safe | force; not validated by the factory
    include_well_known_certificates: bool = False


BOOTLOADERS = ("grub", "sd-boot", "dual-boot")  # and "none", which is the empty value


@dataclass(frozen=True)
class Schematic:
    """The factory's schematic (field order as upstream: overlay, then customization)."""

    extensions: tuple[str, ...] = ()
    overlay: Overlay | None = None
    extra_kernel_args: tuple[str, ...] = ()
    meta: tuple[MetaValue, ...] = field(default=())
    embedded_machine_configuration: str = ""
    bootloader: str = ""  # "" is the factory's "none"
    secureboot: SecureBoot = SecureBoot()
    disk_image_sector_size: int = 0

    def to_yaml(self) -> str:
        return self._yaml

    @cached_property
    def _yaml(self) -> str:
        try:
            return goyaml.dump(_represent(self))
        except goyaml.GoYAMLError as e:
            raise SchematicError(str(e)) from None

    @property
    def id(self) -> str:
        return schematic_id(self.to_yaml())


def schematic_id(canonical_text: str) -> str:
    return hashlib.sha256(canonical_text.encode("utf-8")).hexdigest()


# --- writing: the struct as go-yaml marshals it ----------------------------------------


def _strings(values: tuple[str, ...], where: str) -> Seq:
    if not all(isinstance(v, str) for v in values):
        raise SchematicError(f"{where}: expected strings")
    return Seq(tuple(rep_str(v) for v in values))


def _struct(fields: list[tuple[str, Rep]]) -> Map:
    return Map(tuple((rep_str(k), v) for k, v in fields))


def _represent(s: Schematic) -> Map:
    top: list[tuple[str, Rep]] = []
    ov = s.overlay
    if ov is not None and (ov.name or ov.image or ov.options):  # a zero Overlay is omitted
        fields: list[tuple[str, Rep]] = [("image", rep_str(ov.image)), ("name", rep_str(ov.name))]
        if ov.options:
            if not all(isinstance(k, str) for k in ov.options):
                raise SchematicError("overlay options: keys must be strings")
            fields.append(("options", goyaml.represent(ov.options)))
        top.append(("overlay", _struct(fields)))
    c: list[tuple[str, Rep]] = []
    if s.embedded_machine_configuration:
        c.append(("embeddedMachineConfiguration", rep_str(s.embedded_machine_configuration)))
    if s.extra_kernel_args:
        c.append(("extraKernelArgs", _strings(s.extra_kernel_args, "extraKernelArgs")))
    if s.meta:
        for m in s.meta:
            if not (isinstance(m.key, int) and 0 <= m.key <= 255):
                raise SchematicError(f"meta key {m.key!r} is not in 0-255")
        items = [_struct([("key", Scalar(str(m.key))), ("value", rep_str(m.value))]) for m in s.meta]
        c.append(("meta", Seq(tuple(items))))
    if s.extensions:
        c.append(("systemExtensions", _struct([("officialExtensions", _strings(s.extensions, "extensions"))])))
    bootloader = s.bootloader.lower()
    if bootloader not in ("", "none") + BOOTLOADERS:
        raise SchematicError(f"{s.bootloader} does not belong to BootloaderKind values")
    if bootloader not in ("", "none"):
        c.append(("bootloader", rep_str(bootloader)))
    sb: list[tuple[str, Rep]] = []
    if s.secureboot.enroll_keys:
        sb.append(("enrollKeys", rep_str(s.secureboot.enroll_keys)))
    if s.secureboot.include_well_known_certificates:
        sb.append(("includeWellKnownCertificates", Scalar("true")))
    if sb:
        c.append(("secureboot", _struct(sb)))
    if s.disk_image_sector_size:
        if not 0 < s.disk_image_sector_size < 2**64:
            raise SchematicError("diskImage sectorSize must be an unsigned integer")
        c.append(("diskImage", _struct([("sectorSize", Scalar(str(s.disk_image_sector_size)))])))
    top.append(("customization", _struct(c)))  # always written, as customization: {} when empty
    return _struct(top)


# --- reading: go-yaml's decoding into the factory's struct ------------------------------

_CUSTOMIZATION = (
    "embeddedMachineConfiguration",
    "extraKernelArgs",
    "meta",
    "systemExtensions",
    "bootloader",
    "secureboot",
    "diskImage",
)


def _string_list(d: Decoder, node: Node | None) -> tuple[str, ...]:
    if node is None:
        return ()
    return tuple(d.sequence(node, "[]string", d.string) or ())


def _meta(d: Decoder, node: Node) -> MetaValue | None:
    f = d.struct(node, "schematic.MetaValue", ("key", "value"))
    if f is None:
        return None  # a null entry is dropped, as from any Go slice of structs
    key = d.uint(f["key"], 8, "uint8") if "key" in f else None
    value = d.string(f["value"]) if "value" in f else None
    return MetaValue(key or 0, value or "")


def _overlay(d: Decoder, node: Node | None) -> Overlay | None:
    f = d.struct(node, "schematic.Overlay", ("image", "name", "options")) if node else None
    if not f:
        return None
    image = d.string(f["image"]) if "image" in f else None
    name = d.string(f["name"]) if "name" in f else None
    options = d.string_map(f["options"], "map[string]interface {}") if "options" in f else None
    if not (image or name or options):
        return None  # the zero Overlay, omitted when written
    return Overlay(name or "", image or "", options or {})


def _bootloader(d: Decoder, node: Node | None) -> str:
    text = d.text(node, "schematic.BootloaderKind") if node else None
    if text is None:
        return ""
    # an enumer type: exact name first, then lower-cased
    kind = text if text in ("none",) + BOOTLOADERS else text.lower()
    if kind not in ("none",) + BOOTLOADERS:
        raise goyaml.ConstructError(node.line if node else 0, f"{text} does not belong to BootloaderKind values")
    return "" if kind == "none" else kind


def _get(f: Mapping[str, Node] | None, name: str, read: Callable[[Node], T | None]) -> T | None:
    return read(f[name]) if f and name in f else None


def _decode(root: Node | None) -> Schematic:
    if root is None:
        raise SchematicError("EOF")  # go-yaml's decoder on a body without a document
    d = Decoder()
    top = d.struct(root, "schematic.Schematic", ("owner", "overlay", "customization"))
    owner = _get(top, "owner", d.string)
    c = _get(top, "customization", lambda n: d.struct(n, "schematic.Customization", _CUSTOMIZATION))
    ext = _get(c, "systemExtensions", lambda n: d.struct(n, "schematic.SystemExtensions", ("officialExtensions",)))
    sb_fields = ("enrollKeys", "includeWellKnownCertificates")
    sb = _get(c, "secureboot", lambda n: d.struct(n, "schematic.SecureBootCustomization", sb_fields))
    disk = _get(c, "diskImage", lambda n: d.struct(n, "schematic.DiskImage", ("sectorSize",)))
    meta = _get(c, "meta", lambda n: d.sequence(n, "[]schematic.MetaValue", lambda m: _meta(d, m)))
    schematic = Schematic(
        extensions=_string_list(d, (ext or {}).get("officialExtensions")),
        overlay=_overlay(d, (top or {}).get("overlay")),
        extra_kernel_args=_string_list(d, (c or {}).get("extraKernelArgs")),
        meta=tuple(meta or ()),
        embedded_machine_configuration=_get(c, "embeddedMachineConfiguration", d.string) or "",
        bootloader=_bootloader(d, (c or {}).get("bootloader")),
        secureboot=SecureBoot(
            _get(sb, "enrollKeys", d.string) or "", bool(_get(sb, "includeWellKnownCertificates", d.boolean))
        ),
        disk_image_sector_size=_get(disk, "sectorSize", lambda n: d.uint(n, 64, "uint")) or 0,
    )
    if owner:  # the factory's Validate on its community (non-enterprise) build
        raise SchematicError("owner field is only supported in Enterprise edition")
    return schematic


def _checked(read: Any, *args: Any) -> Schematic:
    try:
        schematic: Schematic = read(*args)
        schematic.to_yaml()  # what go-yaml could not read back is refused here too
        return schematic
    except goyaml.GoYAMLError as e:
        raise SchematicError(str(e)) from None
    except RecursionError:
        raise SchematicError("yaml: document nested too deeply") from None


def parse_schematic(text: str | bytes) -> Schematic:
    """A POST body (YAML or JSON, first document only) read as the factory reads it.

    Raises SchematicError wherever the factory answers 400 (and where go-yaml would store
    text it cannot read back); what it accepts yields the same canonical YAML and ID.
    """
    return _checked(lambda: _decode(goyaml.load_first(text)))


# a JSON-shaped document, as the node tree go-yaml's parser makes of its JSON text


def _doc_node(value: Any) -> Node:
    if isinstance(value, str):
        if any("\ud800" <= c <= "\udfff" for c in value):
            raise SchematicError("found invalid Unicode character escape code")  # as JSON, go-yaml refuses it
        return Node("scalar", goyaml.resolve("!!str", value)[0], value, '"')
    if value is None or isinstance(value, bool | int | float):
        if value is None or isinstance(value, bool):
            text = {None: "null", True: "true", False: "false"}[value]
        elif isinstance(value, float) and not math.isfinite(value):
            text = goyaml.format_float(value)
        else:
            text = repr(value)
        return Node("scalar", goyaml.resolve("", text)[0], text)
    if isinstance(value, Mapping):
        node = Node("map", "!!map")
        for k, v in value.items():
            node.content += [_doc_node(k), _doc_node(v)]
        return node
    if isinstance(value, list | tuple):
        return Node("seq", "!!seq", content=[_doc_node(v) for v in value])
    raise SchematicError(f"a schematic document cannot hold a {type(value).__name__}")


def canonical_yaml_of(doc: Mapping[str, Any]) -> str:
    """The canonical text the factory stores for ``doc`` (JSON-shaped, the factory's field
    names), exactly as if ``doc`` were POSTed as JSON. Raises SchematicError where the
    factory would answer 400."""
    return _checked(lambda: _decode(_doc_node(doc))).to_yaml()
