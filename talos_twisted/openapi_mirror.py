"""The OpenAPI paths of the factory-compatible mirror (tag ``factory mirror``, `mirror.py`):
the factory's paths, status codes (its ``500`` included) and one-line ``text/plain`` errors."""

from __future__ import annotations

from talos_twisted.openapi_parts import (
    ASSET, _DIGITS, EXAMPLE_SCHEMATIC, EXAMPLE_VERSION, JSON, MIRROR, MIRROR_VERSION, _PROFILE, _RANGE_HEADERS,
    RETRY_AFTER, SCHEMATIC_ID, TARGET, TEXT, VERSION, Doc, _factory_error, _get_and_head, _header, _json, _merge,
    _operation, _path_param, _ref, _response,
)

_REQUEST_ID = {"X-Request-ID": _header("the request's ID (an incoming one is echoed), as the factory's",
                                       required=True)}
_MIRROR_ERRORS = {
    "404": _factory_error("`404 page not found` while the mirror is off (`talos.mirror`)."),
    "500": _factory_error("As the factory: `internal server error` for what it does not explain (a malformed "
                          "version included)."),
    "502": _factory_error("The image factory answered wrongly (a 4xx of the factory's passes through as it "
                          "worded it)."),
    "503": _factory_error("The image factory is unreachable or failing, or serving is disabled.",
                          {"Retry-After": RETRY_AFTER}),
    "504": _factory_error("The image factory timed out.", {"Retry-After": RETRY_AFTER}),
}


def _mirror_version(description: str = "a Talos version, the leading `v` optional; a malformed one is the "
                                      "factory's `500`", pattern: str = MIRROR_VERSION) -> Doc:
    return _path_param("version", {"type": "string", "pattern": pattern}, EXAMPLE_VERSION, description)


_MIRROR_SCHEMATIC = _path_param("schematic", {"type": "string", "pattern": SCHEMATIC_ID}, EXAMPLE_SCHEMATIC,
                                "a schematic ID")
_TARGET = _path_param("target", {"type": "string", "pattern": TARGET}, "metal-amd64",
                      "`{platform}-{arch}`, with `-secureboot` after the arch for a secureboot boot")
_ASSET = _path_param(
    "path", {"type": "string", "pattern": ASSET}, "metal-amd64.raw.zst",
    "the factory's asset path: `<platform>-<arch>[-secureboot].{raw,qcow2,vhd,ova}[.tar.gz|.gz|.xz|.zst]`, "
    "`iso`, `uki.efi`, the installer tar, `kernel-<arch>`, `initramfs-<arch>.xz`, `cmdline-<platform>-<arch>`",
)


def _get_only(get: Doc) -> Doc:
    # the factory's router serves HEAD on /image only (a HEAD here is 405, as there)
    return {"get": get}


def _catalog(kind: str, item: str) -> Doc:
    return _get_only(_operation(
        f"factoryGet{kind.capitalize()}", MIRROR, f"The factory's official {kind} of a version",
        f"As `GET /version/{{v}}/{kind}/official` of the factory (Talos < 1.7 has no overlays: `[]`).",
        _merge({"200": _response("The list, in the factory's order.",
                                 _json({"type": "array", "items": _ref(item)}), _REQUEST_ID),
                "404": _factory_error("`version X is not available`.")}, _MIRROR_ERRORS),
        [_mirror_version()],
    ))


def _asset_get() -> Doc:
    described = {
        **_REQUEST_ID,
        "X-Talos-Version": _header("the version", required=True),
        "X-Talos-Schematic": _header("the schematic ID", {"type": "string", "pattern": SCHEMATIC_ID}, required=True),
        "X-Talos-Cache": _header("where the bytes come from", {"enum": ["HIT", "MISS", "JOIN"]}, required=True),
        "Cache-Control": _header("`max-age=86400`", {"const": "max-age=86400"}, required=True),
        "Content-Disposition": _header('`attachment; filename="{path}"`', required=True),
        "Content-Length": _header("the size (absent while a miss streams chunked)", _DIGITS),
        "Accept-Ranges": _header("`bytes` once the size is known", {"const": "bytes"}),
        "ETag": _header("strong, once cached"),
        "Last-Modified": _header("when it was cached"),
    }
    return _operation(
        "factoryGetImage", MIRROR, "A factory asset, from the cache",
        "As `GET /image/...` of the factory, from this cache: compressed assets byte-exact, `.raw` decompressed "
        "(the same cache entry as `/images/talos/...`), kernels and initramfs as they are; unlike the factory, "
        "with `Content-Length`, ranges and validators.",
        _merge({
            "200": _response("The asset; its Content-Type by extension, as the factory's.", {"*/*": {}}, described),
            "206": _response("The requested range(s).", {"*/*": {}},
                             {**described, "Content-Range": _header("`bytes first-last/size` of one range")}),
            "304": _response("Not modified.", None, _REQUEST_ID),
            "400": _factory_error("`error parsing profile from path: ...`, or (from the factory) an extension or "
                                  "overlay the version's catalog lacks."),
            "402": _factory_error("`.sha256`, `.sha512`, `.sigstore.json`: enterprise only, as on the community "
                                  "factory."),
            "404": _factory_error('`schematic ID "<id>" not found`, or `version X is not available`.'),
            "412": _response("A precondition failed (`If-Match`, `If-Unmodified-Since`); no body."),
            "416": _factory_error("No requested range is within the asset."),
        }, _MIRROR_ERRORS),
        [_MIRROR_SCHEMATIC, _mirror_version(), _ASSET, *_RANGE_HEADERS],
    )


def _pxe_responses(not_found: str) -> dict[str, Doc]:
    return _merge({
        "200": _response("The iPXE script, its URLs on this server's mirror routes (`talos.public_url`, or the "
                         "request's Host).",
                         {TEXT: {"schema": {"type": "string", "pattern": "^#!ipxe\\n"}}},
                         {**_REQUEST_ID, "Cache-Control": _header("`no-cache`", {"const": "no-cache"},
                                                                  required=True)}),
        "400": _factory_error("A target the factory cannot parse, or a Host header that is not a valid host[:port] "
                              "with no `talos.public_url`."),
        "404": _factory_error(not_found),
    }, _MIRROR_ERRORS)


def mirror_paths() -> dict[str, Doc]:
    """The mirror's paths, by template."""
    return {
        "/versions": _get_only(_operation(
            "factoryGetVersions", MIRROR, "The factory's versions",
            "As `GET /versions` of the factory: a JSON array of strings, ascending, sent as `text/plain` (the "
            "factory sets no Content-Type; Go sniffs it).",
            _merge({"200": _response("The versions.", {TEXT: {"schema": {"type": "string"}}}, _REQUEST_ID)},
                   _MIRROR_ERRORS),
        )),
        "/version/{version}/extensions/official": _catalog("extensions", "FactoryExtension"),
        "/version/{version}/overlays/official": _catalog("overlays", "FactoryOverlay"),
        "/schematics": {"post": _operation(
            "factoryCreateSchematic", MIRROR, "Store a schematic",
            "As `POST /schematics` of the factory: the body is YAML (JSON is YAML too); `201` also when it existed. "
            "Kept here at once and POSTed to the factory (now, or before its first download). Names of extensions "
            "and overlays are not checked here.",
            _merge({
                "201": _response("Its ID and canonical YAML.", _json(_ref("SchematicCreated")), _REQUEST_ID),
                "400": _factory_error("The schematic is invalid (unknown fields included)."),
            }, _MIRROR_ERRORS),
            requestBody={"required": True, "content": {
                "application/yaml": {"schema": _ref("Schematic")}, JSON: {"schema": _ref("Schematic")},
            }},
        )},
        "/schematics/{schematic}": _get_only(_operation(
            "factoryGetSchematic", MIRROR, "A stored schematic", "Its canonical YAML.",
            _merge({"200": _response("The canonical YAML.", {"application/yaml": {"schema": _ref("Schematic")}},
                                     _REQUEST_ID),
                    "404": _factory_error("`schematic not found`.")}, _MIRROR_ERRORS),
            [_MIRROR_SCHEMATIC],
        )),
        "/image/{schematic}/{version}/{path}": _get_and_head(_asset_get()),
        "/pxe/{schematic}/{version}/{target}": _get_only(_operation(
            "factoryGetPxe", MIRROR, "An iPXE script",
            "As `GET /pxe/...` of the factory, pointing at this server: the node boots from the cache, the "
            "factory down or not. The kernel and initramfs downloads are started at once.",
            _pxe_responses('`schematic ID "<id>" not found`, or `version X is not available`.'),
            [_MIRROR_SCHEMATIC, _mirror_version(), _TARGET],
        )),
        "/pxe/profiles/{name}/{version}/{target}": _get_only(_operation(
            "factoryGetProfilePxe", MIRROR, "An iPXE script of a configured profile",
            "As `/pxe/{schematic}/...`, with the schematic of a profile of `talos.profiles`; `latest` allowed.",
            _pxe_responses("`profile 'X' not found`, or an unknown version."),
            [_PROFILE, _mirror_version("`latest` or a Talos version, the leading `v` optional", VERSION), _TARGET],
        )),
    }
