"""The OpenAPI 3.1 document of the whole HTTP interface, served at `/openapi.json`.

Built in Python from the facts the routes check (the name patterns and arches of
`names.py`), so a change there changes the document too. `tests/test_openapi.py` holds it
to the Klein routes (every route has its operations, every operation its route) and runs
schemathesis with it against a daemon in front of the fake factory.

Three kinds of answers are documented:

- our own routes: errors are JSON ``{"error": "<one sentence>", "status": N}``;
- the server layer (`httpserver.py`), which refuses some requests before any route sees
  them (malformed targets and heads, limits, too many connections): JSON of the same shape,
  on every operation;
- the factory-compatible mirror (tag ``factory mirror``), which answers as the Talos Image
  Factory does: errors are one ``text/plain`` line, ``500`` included.

`document(routed)` keeps only the operations the running app routes, so a route family
documented here before it is implemented appears in the served document once it exists.

Here: our own routes' paths and the document; the mirror's paths are `openapi_mirror`'s, the
component schemas `openapi_schemas`', the pieces both are built of `openapi_parts`'.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Callable, Iterator

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

from talos_twisted._version import __version__
from talos_twisted.openapi_mirror import mirror_paths
from talos_twisted.openapi_parts import (
    _ARCH, _BAD_VERSION, _CHECKSUM_HEADERS, _DIGITS, _DISABLED, _IMAGE_QUERY, JSON, MIRROR, OCTETS, _PLATFORM,
    _PROFILE, _RANGE_HEADERS, SCHEMATIC_ID, TEXT, _UPSTREAM, Doc, _error, _get_and_head, _header, _json, _merge,
    _no_store, _operation, _plain, _ref, _refusal_components, _response, _unavailable, _version_param,
)
from talos_twisted.openapi_schemas import schemas

# --- our routes ---------------------------------------------------------------------------------

_IMAGE_DESCRIPTION = (
    "The raw, decompressed disk image, from the cache (`X-Talos-Cache: HIT`) or while it downloads from the factory "
    "(`MISS`, or `JOIN` when the download is already running). A hit has `Content-Length`, `Accept-Ranges`, a strong "
    "`ETag`, `Last-Modified`, ranges and conditional requests; a miss answers like a hit as soon as the raw size is "
    "known (without validators), otherwise it streams chunked from byte 0. If the factory has sent nothing within "
    "`first_byte_timeout` the answer is `503` + `Retry-After` and the download goes on. A HEAD of a miss starts the "
    "download and waits for the size, at most `first_byte_timeout`: `200` with or without `Content-Length`, never "
    "an error. `latest` answers carry `Cache-Control: no-cache` and `Content-Location` with the pinned URL."
)


def _image_responses() -> dict[str, Doc]:
    described = {
        "X-Talos-Version": _header("the resolved version", {"type": "string"}, required=True),
        "X-Talos-Schematic": _header("the schematic ID", {"type": "string", "pattern": SCHEMATIC_ID}, required=True),
        "X-Talos-Cache": _header("where the bytes come from", {"enum": ["HIT", "MISS", "JOIN"]}, required=True),
        "Content-Disposition": _header('`attachment; filename="talos-{version}-{arch}-{platform}.raw"`',
                                       required=True),
        "Cache-Control": _header("`no-cache` for `latest`, else `max-age=86400`",
                                 {"enum": ["no-cache", "max-age=86400"]}, required=True),
        "Content-Location": _header("the pinned URL of a `latest` request"),
    }
    validators = {
        "ETag": _header("strong, from the image's sha256 (cached images only)"),
        "Last-Modified": _header("when the image was cached (cached images only)"),
    }
    sized = {
        "Content-Length": _header("the image's size, or the body's for a range (absent while a miss streams "
                                  "chunked)", _DIGITS),
        "Accept-Ranges": _header("`bytes` once the size is known", {"const": "bytes"}),
    }
    return {
        "200": _response("The whole image.", {OCTETS: {}}, {**described, **validators, **sized}),
        "206": _response(
            "The requested range (`application/octet-stream` with `Content-Range`) or ranges "
            "(`multipart/byteranges`).",
            {OCTETS: {}, "multipart/byteranges": {}},
            {**described, **validators, **sized, "Content-Range": _header("`bytes first-last/size` of one range")},
        ),
        "304": _response("Not modified (`If-None-Match`, `If-Modified-Since`).", None, {**described, **validators}),
        "400": _error(400, "Malformed input: the version, arch or file name, an unknown query parameter (named), too "
                           "many extensions, more than one overlay, a malformed schematic ID, a schematic "
                           "together with extensions or overlay, or a schematic the factory cannot build for the "
                           "version (an extension or overlay it lacks)."),
        "404": _error(404, "Not found: a version, extension or overlay (with close matches suggested), a platform "
                           "not served here, or a schematic the factory does not know."),
        "412": _response("A precondition failed (`If-Match`, `If-Unmodified-Since`); no body."),
        "416": _error(416, "No requested range is within the image.",
                      {"Content-Range": _header("`bytes */size`", {"type": "string", "pattern": "^bytes \\*/[0-9]+$"},
                                                required=True)}),
        **_UPSTREAM,
    }


def _checksum_responses() -> dict[str, Doc]:
    headers = {
        "X-Talos-Version": _header("the resolved version", required=True),
        "X-Talos-Schematic": _header("the schematic ID", {"type": "string", "pattern": SCHEMATIC_ID}, required=True),
        "Cache-Control": _header("`no-cache` for `latest`, else `max-age=86400`",
                                 {"enum": ["no-cache", "max-age=86400"]}, required=True),
        "ETag": _header("the checksum file's own strong ETag (absent on a HEAD before the image is cached)"),
    }
    line = {"type": "string", "pattern": "^[0-9a-f]{64}  [a-z0-9-]+\\.raw\\n$"}
    return {
        "200": _response('`"<sha256 hex>  {platform}.raw\\n"` of exactly the bytes this cache serves for the image '
                         "URL. On a miss the download is started (or joined) and waited for, up to "
                         "`checksum_wait`; a HEAD does not wait (`200` without `ETag`).",
                         {TEXT: {"schema": line}},
                         {**headers, "Content-Length": _header("the line's length", _DIGITS)}),
        "304": _response("The checksum file's ETag matches `If-None-Match`.", None, headers),
        "400": _error(400, "Malformed input (as for the image)."),
        "404": _error(404, "Not found (as for the image)."),
        **_UPSTREAM,
        "503": _unavailable("As for the image, or the image is still being downloaded after `checksum_wait`."),
        "507": _error(507, "The image is larger than the whole cache: it is streamed but not kept, so this cache "
                           "has no checksum of it."),
    }


def _ours() -> dict[str, Doc]:
    image_params = [_version_param(), _ARCH, _PLATFORM]
    profile_params = [_PROFILE, _version_param(), _ARCH, _PLATFORM]
    no_query = {"400": _error(400, "A profile names the whole image: a query string is a `400`.")}
    unknown_profile = {"404": _error(404, "No profile of that name is configured.")}
    paths: dict[str, Doc] = {
        "/images/talos/{version}/{arch}/{platform}.raw": _get_and_head(_operation(
            "getImage", "images", "A raw Talos disk image", _IMAGE_DESCRIPTION, _image_responses(),
            image_params + _IMAGE_QUERY + _RANGE_HEADERS,
        )),
        "/images/talos/{version}/{arch}/{platform}.raw.sha256": _get_and_head(_operation(
            "getImageChecksum", "images", "The sha256 file of an image", "For Ironic / metal3's `image.checksum`.",
            _checksum_responses(), image_params + _IMAGE_QUERY + _CHECKSUM_HEADERS,
        )),
        "/images/talos/profiles/{name}/{version}/{arch}/{platform}.raw": _get_and_head(_operation(
            "getProfileImage", "images", "The image of a configured profile",
            "For BMCs and tools that cannot send a query string; the schematic is computed locally, so a hit needs no "
            "upstream call. " + _IMAGE_DESCRIPTION,
            _merge(_image_responses(), no_query, unknown_profile), profile_params + _RANGE_HEADERS,
        )),
        "/images/talos/profiles/{name}/{version}/{arch}/{platform}.raw.sha256": _get_and_head(_operation(
            "getProfileImageChecksum", "images", "The sha256 file of a profile's image", "As for an image.",
            _merge(_checksum_responses(), no_query, unknown_profile), profile_params + _CHECKSUM_HEADERS,
        )),
        "/images/talos/versions": _get_and_head(_operation(
            "getVersions", "discovery", "The factory's versions and what `latest` resolves to",
            "The last known list is used while the factory is failing.",
            _merge({"200": _response("The versions, ascending.", _json(_ref("Versions")), _max_age())}, _UPSTREAM),
        )),
        "/images/talos/{version}/extensions": _get_and_head(_operation(
            "getExtensions", "discovery", "The extension catalog of a version", "Full and short names.",
            _merge({"200": _response("The catalog.", _json(_ref("Extensions")), _max_age())}, _BAD_VERSION,
                   {"404": _error(404, "The factory has no such version.")}, _UPSTREAM),
            [_version_param()],
        )),
        "/images/talos/{version}/overlays": _get_and_head(_operation(
            "getOverlays", "discovery", "The overlay catalog of a version", "Names and images.",
            _merge({"200": _response("The catalog.", _json(_ref("Overlays")), _max_age())}, _BAD_VERSION,
                   {"404": _error(404, "The factory has no such version.")}, _UPSTREAM),
            [_version_param()],
        )),
        "/images/talos/cache": _get_and_head(_operation(
            "getCache", "operator", "The cached images and the running downloads", "Live state.",
            _merge({"200": _response("The cache.", _json(_ref("CacheListing")), _no_store())}, _DISABLED),
        )),
        "/healthz": _plain("getHealth", "operator", "Liveness: the process serves HTTP", "Always `200`.",
                           JSON, _ref("Health"), _no_store()),
        "/readyz": _get_and_head(_operation(
            "getReadiness", "operator", "Readiness, with a reason per check",
            "Ready when the cache is writable, free space is above `min_free_space` (and 16 MiB), and the factory "
            "is reachable (a call worked in the last 60 s; otherwise a probe of `/versions`, at most every 30 s) or "
            "an image is cached.",
            {"200": _response("Ready.", _json(_ref("Readiness")), _no_store()),
             "503": _response("Not ready: the failing checks say why.", _json(_ref("Readiness")), _no_store())},
        )),
        "/metrics": _plain("getMetrics", "operator", "Prometheus metrics", "All named `talos_…`.",
                           TEXT, {"type": "string"}, _no_store()),
        "/": _plain("getStatusPage", "operator", "The operator's status page", "HTML that polls `/status.json`.",
                    "text/html", {"type": "string"}, _no_store()),
        "/favicon.ico": _plain("getFavicon", "operator", "The status page's icon", "An SVG.", "image/svg+xml",
                               {"type": "string"}),
        "/status.json": _plain("getStatus", "operator", "What the status page shows", "Never calls the factory.",
                               JSON, _ref("Status"), _no_store()),
        "/openapi.json": _plain("getOpenAPI", "operator", "This document", "OpenAPI 3.1; only the routes this "
                                "daemon serves.", JSON, {"type": "object", "required": ["openapi", "paths"]},
                                {"Cache-Control": _header("`max-age=60`", {"const": "max-age=60"}, required=True)}),
    }
    return paths


def _max_age() -> Doc:
    return {"Cache-Control": _header("`max-age=60`: discovery changes rarely", {"const": "max-age=60"}, required=True)}


# --- the document -------------------------------------------------------------------------------

_DESCRIPTION = """\
A Twisted daemon serving **raw, decompressed** Talos Linux disk images built by the Talos
Image Factory, from a bounded on-disk cache, with ranges and validators.

Errors of our routes are JSON: `{"error": "<one sentence>", "status": N}`, with
`Retry-After` where a later try may succeed. A method a route does not serve is a `405`
with `Allow`; a path no route serves is a `404` (under the mirror's paths, as the factory
words them); a `500` is a bug (its body names a reference to the daemon's log).

The server layer refuses some requests before routing, whatever the path: `400`
(malformed HTTP or target), `404` (an empty path segment), `408`, `413` (a body on
anything but POST), `414`, `431`, `503` (too many connections). Every operation lists them.

The routes tagged `factory mirror` answer as the Talos Image Factory does, its status
codes (`500` included) and its one-line `text/plain` errors, from this cache.
"""

_TAGS = [
    {"name": "images", "description": "Raw disk images and their sha256 files."},
    {"name": "discovery", "description": "Versions and catalogs, as the factory lists them."},
    {"name": "operator", "description": "Health, readiness, metrics, the status page and this document."},
    {"name": MIRROR, "description": "Factory-compatible routes (the factory's paths, status codes and plain-text "
                                    "errors), served from this cache."},
]

METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")


def document(routed: Callable[[str, str], bool] | None = None) -> Doc:
    """The OpenAPI document; with `routed(path, METHOD)`, only the operations it says are served
    (`path` with its parameters filled in from their examples)."""
    paths = {**_ours(), **mirror_paths()}
    if routed is not None:
        kept: dict[str, Doc] = {}
        for template, item in paths.items():
            concrete = sample_path(template, item)
            ops = {m: op for m, op in item.items() if m not in METHODS or routed(concrete, m.upper())}
            if any(m in METHODS for m in ops):
                kept[template] = ops
        paths = kept
    components = {"schemas": schemas(), "responses": _refusal_components()}
    _factor(paths, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "talos-images", "version": __version__.public(), "description": _DESCRIPTION,
        },
        "tags": copy.deepcopy(_TAGS),
        "paths": paths,
        "components": components,
    }


def _factor(paths: Doc, components: Doc) -> None:
    """Each header and parameter becomes a component, referenced where it is used: written
    once, however many operations (and their HEAD twins) share it."""
    headers: dict[str, Doc] = components.setdefault("headers", {})
    parameters: dict[str, Doc] = components.setdefault("parameters", {})
    names: dict[str, str] = {}  # kind + JSON of a component -> its name

    def ref(kind: str, table: dict[str, Doc], base: str, obj: Doc) -> Doc:
        key = kind + json.dumps(obj, sort_keys=True)
        name = names.get(key)
        if name is None:
            name, n = base, 2
            while name in table:
                name, n = f"{base}.{n}", n + 1
            table[name] = obj
            names[key] = name
        return {"$ref": f"#/components/{kind}/{name}"}

    for item in paths.values():
        for method, op in item.items():
            if method not in METHODS:
                continue
            if "parameters" in op:
                op["parameters"] = [ref("parameters", parameters, p["name"], p) for p in op["parameters"]]
            for response in op["responses"].values():
                for name, header in response.get("headers", {}).items():
                    response["headers"][name] = ref("headers", headers, name, header)


def operations(doc: Doc) -> Iterator[tuple[str, str, Doc]]:
    """(path template, METHOD, operation) of every operation of `doc`."""
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method.upper(), op


@functools.lru_cache(maxsize=4)
def served_json(url_map: Map) -> bytes:
    """The body of `/openapi.json`: the document of what `url_map` routes, made once (the
    routes are the class's, fixed once it is defined; making it takes some milliseconds)."""
    return json.dumps(document(served_by(url_map))).encode() + b"\n"


def served_by(url_map: Map) -> Callable[[str, str], bool]:
    """`routed(path, METHOD)` for `document`: whether a rule of `url_map` serves it."""
    adapter = url_map.bind("localhost")

    def routed(path: str, method: str) -> bool:
        try:
            adapter.match(path, method=method)
        except HTTPException:  # NotFound, MethodNotAllowed, RequestRedirect
            return False
        return True

    return routed


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def sample_path(template: str, item: Doc, components: Doc | None = None) -> str:
    """`template` with each path parameter replaced by its example (`components` resolves
    the references of a document `document` made)."""
    examples: dict[str, str] = {}
    for method, op in item.items():
        if method in METHODS:
            for p in op.get("parameters", []):
                if "$ref" in p and components is not None:
                    p = components["parameters"][p["$ref"].rpartition("/")[2]]
                if p["in"] == "path":
                    examples[p["name"]] = str(p["example"])
    return _PLACEHOLDER.sub(lambda m: examples[m.group(1)], template)
