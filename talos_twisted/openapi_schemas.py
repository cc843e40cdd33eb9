"""The schemas of the OpenAPI document's components: the JSON bodies of our routes (errors,
health, readiness, catalogs, the cache listing, the status page's JSON) and the factory's
(versions, catalogs, schematics) that the mirror passes on."""

from __future__ import annotations

from typing import Iterable

from talos_twisted.names import ARCHES
from talos_twisted.openapi_parts import SCHEMATIC_ID, Doc, _ref


def _object(properties: Doc, required: Iterable[str] | None = None, closed: bool = False) -> Doc:
    out: Doc = {"type": "object", "properties": properties,
                "required": list(properties if required is None else required)}
    if closed:
        out["additionalProperties"] = False
    return out


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NULLABLE_STR = {"type": ["string", "null"]}
_CHECK = _object({"ok": _BOOL, "reason": _STR})


def schemas() -> Doc:
    """The component schemas, by name."""
    entry = _object({
        "version": _STR, "arch": _STR, "schematic": _STR, "platform": _STR, "size": _INT, "disk_usage": _INT,
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "created": _NUM, "last_access": _NUM,
        "extensions": {"type": "array", "items": _STR}, "overlay": _NULLABLE_STR,
    }, required=["version", "arch", "schematic", "platform", "size", "sha256", "created", "last_access"])
    download = _object({"key": _STR, "version": _STR, "arch": _STR, "platform": _STR, "schematic": _STR,
                        "state": _STR, "bytes": _INT, "size": {"type": ["integer", "null"]}},
                       required=["key", "version", "arch", "platform", "schematic", "state"])
    return {
        "Error": _object({"error": _STR, "status": {"type": "integer", "minimum": 400, "maximum": 599}}, closed=True),
        "Health": _object({"status": {"const": "ok"}}, closed=True),
        "Readiness": _object({
            "ready": _BOOL,
            "checks": _object({
                "cache_writable": _CHECK,
                "free_space": _object({"ok": _BOOL, "reason": _STR, "free": _INT}, required=["ok", "reason"]),
                "factory_or_cache": _object({"ok": _BOOL, "reason": _STR, "factory_reachable": _BOOL,
                                             "cached_images": _INT}),
            }),
        }, closed=True),
        "Versions": _object({"versions": {"type": "array", "items": _STR}, "latest": _NULLABLE_STR}, closed=True),
        "Extensions": _object({"version": _STR, "extensions": {"type": "array", "items": _object(
            {"name": _STR, "short": _STR}, closed=True)}}, closed=True),
        "Overlays": _object({"version": _STR, "overlays": {"type": "array", "items": _object(
            {"name": _STR, "image": _STR}, closed=True)}}, closed=True),
        "CacheEntry": entry,
        "CacheListing": _object({
            "entries": {"type": "array", "items": _ref("CacheEntry")}, "disk_usage": _INT, "max_cache_size": _INT,
            "downloads": {"type": "array", "items": _STR},
        }, closed=True),
        "Status": _object({
            "server_time": _NUM,
            "entries": {"type": "array", "items": {"allOf": [_ref("CacheEntry"), _object(
                {"url_path": _NULLABLE_STR, "age": _NUM, "idle": _NUM})]}},
            "downloads": {"type": "array", "items": download},
            "factory": _object({"base_url": _STR, "versions_known": _INT, "latest": _NULLABLE_STR,
                                "health": _object({"ok": _BOOL, "at": {"type": ["number", "null"]},
                                                   "error": _NULLABLE_STR})}),
            "platforms": {"type": "array", "items": _STR},
            "arches": {"type": "array", "items": {"enum": list(ARCHES)}},
            "cache": _object({"disk_usage": _INT, "max_size": _INT, "count": _INT}),
        }),
        "FactoryVersions": {"type": "array", "items": _STR},
        "FactoryExtension": _object({"name": _STR, "ref": _STR, "digest": _STR, "author": _STR,
                                     "description": _STR}, required=["name", "ref", "digest"]),
        "FactoryOverlay": _object({"name": _STR, "image": _STR, "ref": _STR, "digest": _STR},
                                  required=["name", "image", "ref", "digest"]),
        "Schematic": {
            "type": "object", "additionalProperties": False, "description": "The factory's schematic; unknown "
            "fields are refused (`400`).",
            "properties": {
                "overlay": _object({"image": _STR, "name": _STR, "options": {"type": "object"}},
                                   required=["image", "name"]),
                "customization": {"type": "object", "properties": {
                    "extraKernelArgs": {"type": "array", "items": _STR},
                    "meta": {"type": "array", "items": _object(
                        {"key": {"type": "integer", "minimum": 0, "maximum": 255}, "value": _STR})},
                    "systemExtensions": _object({"officialExtensions": {"type": "array", "items": _STR}},
                                                required=[]),
                    "embeddedMachineConfiguration": _STR,
                    "bootloader": _STR,
                    "secureboot": {"type": "object"},
                    "diskImage": {"type": "object"},
                }},
            },
        },
        "SchematicCreated": _object({"id": {"type": "string", "pattern": SCHEMATIC_ID}, "schematic": _STR},
                                    required=["id"]),
    }
