"""Every configuration key, defined once: its type, default, converter and one-line doc.

A key is one line in a dataclass below, ``name: type = key(default, converter, "doc")``; the
key tables the sources read (:data:`TALOS_SCHEMA`, :data:`CONVERTERS`...) are derived from
the dataclass fields, so a key cannot have a default without a converter or a doc, and mypy
checks that the default and the converter's result have the field's type. The docs
(``conf/talos-images.yaml``, the README's table) are held to these by tests/test_config_docs.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Callable, Mapping, TypeVar

from talos_twisted.names import MAX_EXTENSIONS

from .convert import (
    Converter,
    check_keys,
    fail,
    kind,
    list_of,
    optional,
    parse_arch,
    parse_base_url,
    parse_public_url,
    parse_compression,
    parse_extension,
    parse_listen,
    parse_log_format,
    parse_overlay,
    parse_path,
    parse_platform,
    parse_positive_int,
    parse_prefetch_asset,
    parse_timeout,
    parse_version,
    via,
)
from .paths import default_cache_directory
from .units import parse_bool, parse_duration, parse_size

T = TypeVar("T")

DEFAULT_LISTEN = "tcp:8080"
_METADATA = "talos_images.key"


@dataclass(frozen=True)
class Key:
    """One key as the sources and the docs see it."""

    name: str
    default: Any  # the typed default; None when ``shown`` (computed from the environment)
    convert: Converter[Any]
    doc: str  # one line; backticks mark code, for the README (the YAML comment drops them)
    env: bool = True  # also read from TALOS_<KEY>
    shown: str | None = None  # how the docs write a default computed at load time


@dataclass(frozen=True)
class _Spec:
    """What key() leaves in a field's metadata."""

    convert: Converter[Any]
    doc: str
    env: bool
    shown: str | None


def key(default: T, convert: Converter[T], doc: str, *, env: bool = True) -> T:
    """A dataclass field that is a configuration key (typed as its default, for mypy)."""
    return field(default=default, metadata={_METADATA: _Spec(convert, doc, env, None)})


def computed_key(factory: Callable[[], T], convert: Converter[T], doc: str, *, shown: str) -> T:
    """A key whose default depends on the environment; *shown* is how the docs write it."""
    return field(default_factory=factory, metadata={_METADATA: _Spec(convert, doc, True, shown)})


def _key_of(f: Field[Any], owner: str) -> Key:
    spec = f.metadata.get(_METADATA)
    if not isinstance(spec, _Spec):  # fails at import: a key without converter or doc is a bug
        raise TypeError(f"{owner}.{f.name} must be declared with key(...) or computed_key(...)")
    default = None if f.default is MISSING else f.default
    return Key(f.name, default, spec.convert, spec.doc, spec.env, spec.shown)


def keys_of(cls: Any) -> tuple[Key, ...]:
    return tuple(_key_of(f, cls.__name__) for f in fields(cls))


# No more names than a URL may give: a longer list could never be requested.
_extensions = list_of(parse_extension, allow_empty=True, most=MAX_EXTENSIONS)


@dataclass(frozen=True)
class PrefetchImage:
    """An image fetched into the cache at start-up, so the first real client gets a hit."""

    version: str = key("latest", via(parse_version), '"latest" (newest stable) or e.g. `v1.11.2`', env=False)
    arch: str = key("amd64", via(parse_arch), "`amd64` or `arm64`", env=False)
    platform: str = key("openstack", via(parse_platform), "one of the served `platforms`", env=False)
    extensions: tuple[str, ...] = key((), _extensions, "system extensions (short or full names)", env=False)
    overlay: str | None = key(None, optional(via(parse_overlay)), "e.g. `rpi_generic` (arm64 boards)", env=False)
    assets: tuple[str, ...] = key(
        ("disk",),
        list_of(parse_prefetch_asset, allow_empty=False),
        "what to fetch: `disk` (the `.raw`), and for PXE boots `kernel`, `initramfs`, `cmdline`",
        env=False,
    )


PREFETCH_SCHEMA: tuple[Key, ...] = keys_of(PrefetchImage)
PREFETCH_KEYS: tuple[str, ...] = tuple(k.name for k in PREFETCH_SCHEMA)
_PREFETCH_CONVERTERS: dict[str, Converter[Any]] = {k.name: k.convert for k in PREFETCH_SCHEMA}


def _convert_prefetch_item(item: Any, label: str) -> PrefetchImage:
    if isinstance(item, PrefetchImage):  # an already-typed override is validated all the same
        item = asdict(item)
    if not isinstance(item, Mapping):
        fail(label, f"expected a mapping with keys {', '.join(PREFETCH_KEYS)}, not {kind(item)}")
    check_keys(item, PREFETCH_KEYS, f"{label}.")
    return PrefetchImage(**{k: _PREFETCH_CONVERTERS[k](raw, f"{label}.{k}") for k, raw in item.items()})


@dataclass(frozen=True)
class Profile:
    """A named image recipe, for machines whose tooling cannot send a query string."""

    name: str
    extensions: tuple[str, ...] = ()
    overlay: str | None = None
    customization: str = "{}"  # the factory's `customization` fields as JSON (hashable)


_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.ASCII)
_PROFILE_KEYS = ("extensions", "overlay", "customization")


def _convert_profiles(value: Any, label: str) -> tuple[Profile, ...]:
    from talos_twisted.schematic import SchematicError, parse_schematic

    if value is None:
        return ()
    if isinstance(value, tuple) and all(isinstance(p, Profile) for p in value):
        return value
    if not isinstance(value, Mapping):
        fail(label, f"expected a mapping of profile names to {{extensions, overlay, customization}}, not {kind(value)}")
    out = []
    for name, spec in value.items():
        where = f"{label}.{name}"
        if not isinstance(name, str) or not _PROFILE_NAME.fullmatch(name):
            fail(where, "a profile name is lowercase letters, digits and '-', at most 63")
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            fail(where, f"expected a mapping with keys {', '.join(_PROFILE_KEYS)}, not {kind(spec)}")
        check_keys(spec, _PROFILE_KEYS, f"{where}.")
        exts = _extensions(spec.get("extensions"), f"{where}.extensions")
        overlay = optional(via(parse_overlay))(spec.get("overlay"), f"{where}.overlay")
        custom = spec.get("customization") or {}
        if not isinstance(custom, Mapping):
            fail(f"{where}.customization", f"expected a mapping of the factory's customization fields, not {kind(custom)}")
        if "systemExtensions" in custom:
            fail(f"{where}.customization", "systemExtensions come from the profile's extensions: list them there")
        text = json.dumps(dict(custom), sort_keys=True)
        try:
            parse_schematic(json.dumps({"customization": dict(custom)}))  # as the factory would read it
        except SchematicError as e:
            fail(f"{where}.customization", f"the image factory would refuse it: {e}")
        out.append(Profile(name, exts, overlay, text))
    return tuple(out)


def _convert_prefetch(value: Any, label: str) -> tuple[PrefetchImage, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        fail(label, f"expected a list of images (mappings with {', '.join(PREFETCH_KEYS)}), not {kind(value)}")
    return tuple(_convert_prefetch_item(item, f"{label}[{i}]") for i, item in enumerate(value))


@dataclass(frozen=True)
class TalosConfig:
    """The ``talos:`` section. Sizes are bytes, durations are seconds.

    To add a key: one line here (this order is the docs' order), then its row in the README's
    table and its entry in conf/talos-images.yaml; tests/test_config_docs.py fails until the
    docs say what this says.
    """

    enabled: bool = key(
        True, via(parse_bool), "serve images at all; `false` answers every `/images/talos/…` request with `503`"
    )
    base_url: str = key(
        "https://factory.talos.dev", via(parse_base_url), "the Talos Image Factory to build and download images from"
    )
    # Computed so that a bare TalosConfig() follows the process environment; load_config
    # always passes the value computed from the environ it was given.
    cache_directory: str = computed_key(
        default_cache_directory,
        via(parse_path),
        "where images (under `images/`) and learned metadata (under `meta/`) are cached",
        shown="${XDG_CACHE_HOME:-~/.cache}/talos-images",
    )
    max_cache_size: int = key(
        0, via(parse_size), "disk used by cached images before the least recently used are evicted; `0` = unlimited"
    )
    min_free_space: int = key(
        0, via(parse_size), "free space kept on the cache's filesystem by evicting images; `0` = no check"
    )
    default_extensions: tuple[str, ...] = key(
        (), _extensions, "system extensions added to every requested image (short or full names)"
    )
    platforms: tuple[str, ...] = key(
        ("openstack", "metal", "nocloud"),
        list_of(parse_platform, allow_empty=False),
        "platforms that may be requested (`{platform}.raw`)",
    )
    compression: str = key(
        "zst",
        via(parse_compression),
        "what to download from the factory: `zst`, `xz` or `none` (images are always served decompressed)",
    )
    metadata_ttl: float = key(  # 0 is allowed: refresh on every use
        900.0, via(parse_duration), "how long the versions list and the extension/overlay catalogs are reused"
    )
    connect_timeout: float = key(10.0, via(parse_timeout), "time allowed to open a connection to the factory")
    metadata_timeout: float = key(
        30.0, via(parse_timeout), "time allowed for a whole metadata response (versions, catalogs, schematics)"
    )
    first_byte_timeout: float = key(
        45.0,
        via(parse_timeout),
        "how long clients wait for the first image byte before `503` + `Retry-After`; the download goes on",
    )
    build_timeout: float = key(
        1260.0, via(parse_timeout), "upper bound for the factory's build of an image before its first byte"
    )
    idle_timeout: float = key(
        120.0, via(parse_timeout), "a download with no data from the factory for this long mid-transfer has failed"
    )
    resume_window: float = key(
        600.0,
        via(parse_timeout),
        "how long a broken download keeps being resumed (backoff with jitter) before its clients are aborted",
    )
    client_stall_timeout: float = key(
        300.0, via(parse_timeout), "a client that accepts no data for this long is disconnected"
    )
    checksum_wait: float = key(  # 0 is allowed: answer at once if not ready
        45.0,
        via(parse_duration),
        "how long a `.sha256` request waits for a running download before `503` + `Retry-After`",
    )
    shutdown_grace: float = key(  # 0 is allowed: cancel running downloads at once
        30.0,
        via(parse_duration),
        "on `SIGTERM`, how long running downloads and the clients being served get to finish before they are "
        "cancelled; `0` = cancel at once",
    )
    max_downloads: int = key(
        4, via(parse_positive_int), "simultaneous image downloads from the factory (at least 1); more wait their turn"
    )
    log_format: str = key(
        "text", via(parse_log_format), "`text` (twistd's own lines) or `json` (one JSON object per line on stdout, with `-n`)"
    )
    progress_interval: float = key(
        30.0, via(parse_timeout), "how often a running download's progress (bytes, rate, ETA) is logged"
    )
    scrub_rate: int = key(
        50_000_000, via(parse_size), "bytes per second the background scrub re-hashes cached images at, holes included; `0` = off"
    )
    max_ranges: int = key(
        16, via(parse_positive_int), "ranges in one `Range` header; more (or overlapping to more than the image) get the whole image"
    )
    request_header_timeout: float = key(
        10.0, via(parse_timeout), "time a client has to send a whole request head"
    )
    request_body_timeout: float = key(
        30.0, via(parse_timeout), "time a client has to send a whole `POST` body"
    )
    keepalive_timeout: float = key(
        60.0, via(parse_timeout), "an idle keep-alive connection between two requests is closed after this"
    )
    max_connections: int = key(
        2000, via(parse_positive_int), "client connections at once; more get `503` + `Retry-After`"
    )
    max_connections_per_client: int = key(
        64, via(parse_positive_int), "client connections at once from one source address; more get `503` + `Retry-After`"
    )
    max_request_line: int = key(
        8 * 1024, via(parse_size), "longest request line; longer gets `414`"
    )
    max_header_size: int = key(
        32 * 1024, via(parse_size), "largest request head; larger gets `431`"
    )
    max_headers: int = key(100, via(parse_positive_int), "most header fields in a request; more gets `431`")
    max_post_body: int = key(
        64 * 1024, via(parse_size), "largest `POST` body (kept in memory, never on disk); larger gets `413`"
    )
    mirror: bool = key(
        True,
        via(parse_bool),
        "serve the factory-compatible mirror routes (`/versions`, `/schematics`, `/image/…`, `/pxe/…`); "
        "`false` answers them `404`",
    )
    public_url: str = key(
        "",
        via(parse_public_url),
        "this server's URL as provisioning clients reach it (e.g. `http://10.0.0.5:8080`), the base of the URLs "
        "in `/pxe/…` scripts; empty = the request's scheme and `Host`",
    )
    profiles: tuple[Profile, ...] = key(
        (),
        _convert_profiles,
        "named images served at `/images/talos/profiles/{NAME}/{version}/{arch}/{platform}.raw`: "
        "`{NAME: {extensions, overlay, customization}}` (in the file only)",
        env=False,
    )
    prefetch: tuple[PrefetchImage, ...] = key(
        (),
        _convert_prefetch,
        "images fetched into the cache at start-up and checked again every `metadata_ttl` (at least 60 s)",
        env=False,  # a list of mappings has no sensible single-string form
    )



@dataclass(frozen=True)
class Config:
    listen: str = key(
        DEFAULT_LISTEN,
        via(parse_listen),
        "Twisted server endpoint to listen on (e.g. `tcp:8080:interface=127.0.0.1`, `ssl:8443:…`, `unix:…`)",
        env=False,  # the environment sets the talos: keys only
    )
    talos: TalosConfig = field(default_factory=TalosConfig)


TALOS_SCHEMA: tuple[Key, ...] = keys_of(TalosConfig)
TALOS_KEYS: tuple[str, ...] = tuple(k.name for k in TALOS_SCHEMA)
LISTEN = _key_of(fields(Config)[0], "Config")  # not keys_of(Config): talos is a section, not a key
TOP_LEVEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))
# What a setting's key may be: "listen" or a talos key (the file nests the latter under talos:).
CONVERTERS: dict[str, Converter[Any]] = {k.name: k.convert for k in (LISTEN, *TALOS_SCHEMA)}
