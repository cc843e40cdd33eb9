"""The pieces the OpenAPI document (`openapi.py`) is built of: the patterns the parsers
check (as ECMA-262 regular expressions, from `names.py`), path, query and header parameters,
response headers, responses and errors (JSON, or the factory's one plain-text line), the
server layer's refusals, and operations (a GET with its HEAD twin).

The names keep their leading underscore: they are the document's own, shared only by the
modules that make it (`openapi`, `openapi_mirror`, `openapi_schemas`).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from talos_twisted.names import ARCHES, MAX_EXTENSIONS, NAME_PATTERN, PLATFORM_PATTERN

Doc = dict[str, Any]

JSON = "application/json"
TEXT = "text/plain"
OCTETS = "application/octet-stream"
MIRROR = "factory mirror"

# --- parameter schemas: the patterns the parsers check, as ECMA-262 regular expressions ---------

# versions.Version.parse: an optional "v", numbers of at most 6 digits, at most 4 pre-release parts
_NUMBER = "(?:0|[1-9][0-9]{0,5})"
_SEMVER = rf"v?{_NUMBER}\.{_NUMBER}\.{_NUMBER}(?:-[0-9A-Za-z]+(?:\.[0-9A-Za-z]+){{0,3}})?"
VERSION = rf"^(?:latest|{_SEMVER})$"
MIRROR_VERSION = rf"^{_SEMVER}$"
# names.is_platform_name: `secureboot` only ever as the last part
PLATFORM = rf"^(?!(?:[a-z0-9-]*-)?secureboot-)(?!secureboot$){PLATFORM_PATTERN.pattern}$"
# names.is_extension_name: no `..` anywhere; an empty value names nothing
NAME = rf"^(?:(?!.*\.\.){NAME_PATTERN.pattern})?$"
# the mirror's asset names (a file name in the cache) and PXE targets (assetpath.parse_profile)
ASSET = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TARGET = "^[A-Za-z0-9][A-Za-z0-9._-]*-(?:amd64|x86_64|i386|arm64)(?:-secureboot)?$"
SCHEMATIC_ID = "^[0-9a-f]{64}$"
PROFILE_NAME = "^[a-z0-9][a-z0-9-]{0,62}$"

EXAMPLE_VERSION = "v1.11.2"
EXAMPLE_SCHEMATIC = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"


def _ref(name: str) -> Doc:
    return {"$ref": f"#/components/schemas/{name}"}


def _path_param(name: str, schema: Doc, example: str, description: str) -> Doc:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema, "example": example}


def _version_param(description: str = "`latest` (the newest stable release) or a Talos version") -> Doc:
    return _path_param("version", {"type": "string", "pattern": VERSION}, EXAMPLE_VERSION, description)


_ARCH = _path_param("arch", {"type": "string", "enum": list(ARCHES)}, ARCHES[0], "the architecture")
_PLATFORM = _path_param(
    "platform", {"type": "string", "pattern": PLATFORM}, "openstack",
    "a platform the daemon serves (`talos.platforms`: by default `openstack`, `metal`, `nocloud`); "
    "`{platform}-secureboot` for its secureboot image; another well-formed name is a `404`",
)
_PROFILE = _path_param(
    "name", {"type": "string", "pattern": PROFILE_NAME}, "worker",
    "a profile configured in `talos.profiles`; another name is a `404`",
)


def _header_param(name: str, description: str) -> Doc:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": {"type": "string"}}


_IMAGE_QUERY = [
    {
        "name": "extensions", "in": "query", "required": False, "style": "form", "explode": False,
        "description": "system extensions, comma-separated and/or repeated; short (`qemu-guest-agent`) or full "
                       "(`siderolabs/qemu-guest-agent`) names, resolved against the version's catalog, merged with "
                       "`talos.default_extensions`, de-duplicated and sorted. An unknown name is a `404`",
        "schema": {"type": "array", "maxItems": MAX_EXTENSIONS, "items": {"type": "string", "pattern": NAME}},
        "example": ["qemu-guest-agent"],
    },
    {
        "name": "overlay", "in": "query", "required": False,
        "description": "at most one overlay of the version's catalog (`rpi-generic` is accepted for "
                       "`rpi_generic`). An unknown name is a `404`",
        "schema": {"type": "string", "pattern": NAME},
    },
    {
        "name": "overlays", "in": "query", "required": False, "deprecated": True,
        "description": "an alias of `overlay` (the two together name at most one overlay)",
        "schema": {"type": "string", "pattern": NAME},
    },
    {
        "name": "schematic", "in": "query", "required": False,
        "description": "a schematic made elsewhere (the factory's UI, talosctl, Omni), served as it is: no "
                       "`default_extensions`, no catalog check; `404` if the factory does not know it, `400` "
                       "together with `extensions` or `overlay`, or when the factory cannot build it for the version",
        "schema": {"type": "string", "pattern": SCHEMATIC_ID},
    },
]

_RANGE_HEADERS = [
    _header_param("Range", "`bytes=` ranges, single or multiple (`multipart/byteranges`); more than 16 get the "
                           "whole image; honoured once the image's size is known"),
    _header_param("If-Range", "an ETag or HTTP-date: the Range is honoured only if it matches (a miss has no "
                              "validators yet, so an If-Range there means the whole image)"),
    _header_param("If-None-Match", "ETags: `304` when one matches (cached images)"),
    _header_param("If-Modified-Since", "an HTTP-date: `304` when the image is not newer (cached images)"),
    _header_param("If-Match", "ETags: `412` when none matches (cached images)"),
    _header_param("If-Unmodified-Since", "an HTTP-date: `412` when the image is newer (cached images)"),
]
_CHECKSUM_HEADERS = [_header_param("If-None-Match", "ETags: `304` when the checksum file's own ETag matches")]

# --- headers and responses ---------------------------------------------------------------------


def _header(description: str, schema: Doc | None = None, required: bool = False) -> Doc:
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


_DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
RETRY_AFTER = _header("seconds after which the same request may succeed", _DIGITS)


def _response(description: str, content: Doc | None = None, headers: Doc | None = None) -> Doc:
    out: Doc = {"description": description}
    if headers:
        out["headers"] = headers
    if content:
        out["content"] = content
    return out


def _json(schema: Doc) -> Doc:
    return {JSON: {"schema": schema}}


def _error_schema(status: int) -> Doc:
    return {"allOf": [_ref("Error"), {"properties": {"status": {"const": status}}}]}


def _error(status: int, description: str, headers: Doc | None = None) -> Doc:
    return _response(description, _json(_error_schema(status)), headers)


def _factory_error(description: str, headers: Doc | None = None) -> Doc:
    """The factory's answer: one plain-text line."""
    return _response(description, {TEXT: {"schema": {"type": "string"}}}, headers)


def _merge(*groups: dict[str, Doc]) -> dict[str, Doc]:
    """Responses by status; a status in several groups gets both descriptions, media types, headers."""
    out: dict[str, Doc] = {}
    for group in groups:
        for status, response in group.items():
            mine = out.get(status)
            if mine is None:
                out[status] = copy.deepcopy(response)
                continue
            mine["description"] += " " + response["description"]
            for part in ("content", "headers"):
                for name, value in response.get(part, {}).items():
                    mine.setdefault(part, {}).setdefault(name, copy.deepcopy(value))
    return dict(sorted(out.items()))


_REFUSALS = {
    "408": _error(408, "The request head (or a POST body) did not arrive within the server's timeout."),
    "413": _error(413, "The request has a body: only POST may, and only a small one (`talos.max_post_body`)."),
    "414": _error(414, "The request line is longer than `talos.max_request_line`."),
    "431": _error(431, "The request head is larger than `talos.max_header_size`, or has more than "
                       "`talos.max_headers` fields."),
}


def _refusals(path_params: bool) -> dict[str, Doc]:
    """What the server layer answers before routing, for any request (the info's description
    says more): the statuses only it answers by reference, the others merged with the route's."""
    out: dict[str, Doc] = {status: {"$ref": f"#/components/responses/Refused{status}"} for status in _REFUSALS}
    out["400"] = _error(400, "Or refused by the server layer: malformed HTTP, or a malformed target.")
    out["503"] = _error(503, "Or too many connections (in total, or from this client).", {"Retry-After": RETRY_AFTER})
    if path_params:
        out["404"] = _error(404, "Or an empty path segment (`//`, or a trailing `/`).")
    return out


def _refusal_components() -> dict[str, Doc]:
    out: dict[str, Doc] = {}
    for status, response in _REFUSALS.items():
        out[f"Refused{status}"] = copy.deepcopy(response)
        out[f"Refused{status}Head"] = {k: v for k, v in response.items() if k != "content"}
    return out


def _unavailable(what: str) -> Doc:
    return _error(503, what, {"Retry-After": RETRY_AFTER})


_UPSTREAM = {
    "502": _error(502, "The image factory answered wrongly (an unexpected status, corrupt data, a different image on "
                       "resume)."),
    "503": _unavailable("Serving is disabled (`talos.enabled`), or the image factory is unreachable, failing (5xx, "
                        "429) or still building, or a download slot is not free yet; the work goes on."),
    "504": _error(504, "The image factory timed out.", {"Retry-After": RETRY_AFTER}),
}
_DISABLED = {"503": _unavailable("Serving is disabled (`talos.enabled` is false).")}
_BAD_VERSION = {"400": _error(400, "The version is not `latest` or a Talos version.")}

# --- operations ---------------------------------------------------------------------------------


def _operation(
    op_id: str, tag: str, summary: str, description: str, responses: dict[str, Doc],
    parameters: Iterable[Doc] = (), **more: Any,
) -> Doc:
    params = list(parameters)
    path_params = any(p["in"] == "path" for p in params)
    # on the mirror too the server layer's refusals are JSON, beside the factory's text lines
    op: Doc = {
        "operationId": op_id, "tags": [tag], "summary": summary, "description": description,
        "responses": _merge(responses, _refusals(path_params)),
    }
    if params:
        op["parameters"] = copy.deepcopy(params)
    op.update(more)
    return op


def _head_of(get: Doc) -> Doc:
    """HEAD: what GET answers, headers only (Klein runs the GET handler; twisted.web drops the body)."""
    head = copy.deepcopy(get)
    head["operationId"] = get["operationId"] + "Head"
    head["summary"] = get["summary"] + " (headers only)"
    for response in head["responses"].values():
        if "$ref" in response:
            response["$ref"] += "Head"  # the refusal without its body
        response.pop("content", None)
    return head


def _get_and_head(get: Doc) -> Doc:
    return {"get": get, "head": _head_of(get)}


def _plain(op_id: str, tag: str, summary: str, description: str, media: str, schema: Doc | None,
           headers: Doc | None = None) -> Doc:
    content = {media: {"schema": schema} if schema is not None else {}}
    return _get_and_head(_operation(op_id, tag, summary, description, {"200": _response(summary, content, headers)}))


def _no_store() -> Doc:
    return {"Cache-Control": _header("`no-store`: live state", {"const": "no-store"}, required=True)}
