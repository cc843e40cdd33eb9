"""The daemon's configuration: defaults < YAML file < ``TALOS_*`` environment < command line.

Pure (no Twisted, no reactor): everything here can be tested with plain function calls.
Every problem is reported as a :class:`ConfigError` whose text is one line naming the key
(or environment variable, or command-line option) and what is wrong with it, because the
message ends up in a single log line or a terminal when ``twistd`` refuses to start.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from typing import Any, Callable, Iterator, Mapping, NoReturn
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError


class ConfigError(ValueError):
    """A configuration problem; ``str(e)`` is one line naming the key and what is wrong."""

    def __init__(self, message: str) -> None:
        # One line whatever went in: the message is logged as a single record.
        super().__init__(" ".join(str(message).splitlines()))


# --------------------------------------------------------------------------- value parsers

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"({_NUMBER})\s*([a-z]*)")
_SIZE_HELP = "use bytes or a unit like 500MiB, 20GiB, 10GB"
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgt", start=1):
    # Bare K/M/G/T and Kubernetes-style Ki/Mi/... mean the binary unit: that is what people
    # mean for disk sizes; only the explicit KB/MB/GB/TB are decimal.
    _SIZE_UNITS[_prefix] = _SIZE_UNITS[_prefix + "i"] = _SIZE_UNITS[_prefix + "ib"] = 1024**_power
    _SIZE_UNITS[_prefix + "b"] = 1000**_power

_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = r"(%s)\s*(ms|s|m|h|d)" % _NUMBER  # "ms" before "m": the regex tries in order
_DURATION_RE = re.compile(rf"(?:{_DURATION_PART}\s*)+")
_DURATION_PART_RE = re.compile(_DURATION_PART)
_DURATION_HELP = "use seconds or a unit like 45s, 5m, 1h30m, 250ms"

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _split_sign(text: str) -> tuple[int, str]:
    """Peel a leading minus off so "-5GiB" is reported as negative, not as garbage."""
    if text.startswith("-"):
        return -1, text[1:].lstrip()
    return 1, text


def parse_size(value: str | int | float) -> int:
    """Bytes from ``123``, ``"123"``, ``"500MiB"``, ``"10GB"``, ``"1.5GiB"``; ValueError otherwise."""
    if isinstance(value, bool):  # bool is an int subclass; `true` is not a size
        raise ValueError(f"{value!r} is not a size ({_SIZE_HELP})")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # YAML may hand us 1000000.0
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        sign, body = _split_sign(value.strip().lower())
        match = _SIZE_RE.fullmatch(body)
        if match is None or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size ({_SIZE_HELP})")
        multiplier = _SIZE_UNITS[match.group(2)]
        amount = Decimal(match.group(1)) * multiplier  # Decimal: "1.1GB" is exactly 1100000000
        if multiplier == 1 and amount != amount.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number of bytes")
        size = sign * int(amount)  # fractions of a larger unit round down to whole bytes
    else:
        raise ValueError(f"{value!r} is not a size ({_SIZE_HELP})")
    if size < 0:
        raise ValueError(f"{value!r} is negative; a size must be 0 or more")
    return size


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``45``, ``"45"``, ``"45s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration ({_DURATION_HELP})")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a duration ({_DURATION_HELP})")
    elif isinstance(value, str):
        sign, body = _split_sign(value.strip().lower())
        if re.fullmatch(_NUMBER, body):
            seconds = float(body)
        elif _DURATION_RE.fullmatch(body):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(body))
        else:
            raise ValueError(f"{value!r} is not a duration ({_DURATION_HELP})")
        seconds *= sign
    else:
        raise ValueError(f"{value!r} is not a duration ({_DURATION_HELP})")
    if seconds < 0:
        raise ValueError(f"{value!r} is negative; a duration must be 0 or more")
    return seconds


def parse_bool(value: str | bool | int) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case); ValueError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # YAML `enabled: 1`
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"{value!r} is not a boolean (use true/false, yes/no, on/off, 1/0)")


# --------------------------------------------------------------------------- the config objects

DEFAULT_LISTEN = "tcp:8080"


def _home(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME")
    if home:
        return home
    # Daemons started by init systems may run without HOME; the password database still knows.
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir


def expand_path(path: str, environ: Mapping[str, str]) -> str:
    """``~`` expanded against *environ*'s HOME, made absolute (twistd may chdir when daemonizing)."""
    if path == "~" or path.startswith("~/"):
        path = _home(environ) + path[1:]
    elif path.startswith("~"):
        path = os.path.expanduser(path)  # ~user: only the password database can answer
    return os.path.abspath(path)


def default_cache_directory(environ: Mapping[str, str] | None = None) -> str:
    """``${XDG_CACHE_HOME:-~/.cache}/talos-images``."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = xdg if os.path.isabs(xdg) else os.path.join(_home(env), ".cache")
    return expand_path(os.path.join(base, "talos-images"), env)


@dataclass(frozen=True)
class PrefetchImage:
    """An image fetched into the cache at start-up, so the first real client gets a hit."""

    version: str = "latest"  # "latest" or vX.Y.Z[-pre]
    arch: str = "amd64"  # amd64 | arm64
    platform: str = "openstack"
    extensions: tuple[str, ...] = ()
    overlay: str | None = None


@dataclass(frozen=True)
class TalosConfig:
    """The ``talos:`` section. Sizes are bytes, durations are seconds."""

    enabled: bool = True
    base_url: str = "https://factory.talos.dev"
    # A factory so that a bare TalosConfig() follows the process environment; load_config
    # always passes the value computed from the environ it was given.
    cache_directory: str = field(default_factory=default_cache_directory)
    max_cache_size: int = 0  # 0 = unlimited
    min_free_space: int = 0  # kept free on the cache filesystem; 0 = no check
    default_extensions: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ("openstack", "metal", "nocloud")
    compression: str = "xz"  # what to download from the factory: xz | zst | none
    metadata_ttl: float = 900.0
    connect_timeout: float = 10.0
    metadata_timeout: float = 30.0
    first_byte_timeout: float = 45.0
    build_timeout: float = 1260.0
    idle_timeout: float = 120.0
    client_stall_timeout: float = 300.0
    checksum_wait: float = 45.0
    max_downloads: int = 4
    prefetch: tuple[PrefetchImage, ...] = ()


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN  # a Twisted server endpoint description
    talos: TalosConfig = field(default_factory=TalosConfig)


TALOS_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TalosConfig))
PREFETCH_KEYS: tuple[str, ...] = tuple(f.name for f in fields(PrefetchImage))
TOP_LEVEL_KEYS: tuple[str, ...] = ("listen", "talos")
ENV_PREFIX = "TALOS_"
COMPRESSIONS: tuple[str, ...] = ("xz", "zst", "none")
ARCHES: tuple[str, ...] = ("amd64", "arm64")

# Same shapes as request.py accepts in URLs, so a configured name is always requestable.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_PLATFORM_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_VERSION_RE = re.compile(r"v\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?")


# --------------------------------------------------------------------------- per-key converters
#
# A converter takes (raw value, label) and returns the typed value or raises ConfigError
# "<label>: <problem>". The label is where the value came from: "talos.max_cache_size" for
# the file, "TALOS_MAX_CACHE_SIZE" for the environment, "--max-cache-size" for overrides.

Converter = Callable[[Any, str], Any]


def _fail(label: str, problem: str) -> NoReturn:
    raise ConfigError(f"{label}: {problem}")


def _kind(value: object) -> str:
    """How a wrongly typed value is described in messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _via(parse: Callable[[Any], Any]) -> Converter:
    """A converter from a parser that raises ValueError with a label-less message."""

    def convert(value: Any, label: str) -> Any:
        if value is None:  # `key:` with nothing after it in YAML
            _fail(label, "no value given (remove the key to use the default)")
        try:
            return parse(value)
        except ValueError as exc:
            _fail(label, str(exc))

    return convert


def _parse_string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {_kind(value)} ({value!r})")
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _parse_listen(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a server endpoint description like tcp:8080")
    return value.strip()


def _parse_path(value: Any) -> str:
    text = _parse_string(value)
    if "\0" in text:
        raise ValueError(f"{value!r} is not a usable path")
    return text  # ~ is expanded in load_config, against the environ it was given


def _parse_base_url(value: Any) -> str:
    bad = f"{value!r} is not an http(s) URL like https://factory.talos.dev"
    text = _parse_string(value)
    if re.search(r"\s", text):
        raise ValueError(bad)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(bad) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(bad)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} must be scheme://host[:port][/path], without credentials, query or fragment")
    return text.rstrip("/")  # paths are appended as "/schematics", "/image/..."


def _parse_compression(value: Any) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in COMPRESSIONS:
        raise ValueError(f"{value!r} is not one of {', '.join(COMPRESSIONS)}")
    return text


def _parse_positive_int(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a whole number of 1 or more")
    return value


def _parse_timeout(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:  # a zero timeout would fail every request at once
        raise ValueError(f"{value!r} must be more than 0 seconds")
    return seconds


def _parse_version(value: Any) -> str:
    text = value.strip() if isinstance(value, str) else value
    if text != "latest" and not (isinstance(text, str) and _VERSION_RE.fullmatch(text)):
        raise ValueError(f"{value!r} is not 'latest' or a Talos version like v1.11.2")
    return text


def _parse_arch(value: Any) -> str:
    text = value.strip() if isinstance(value, str) else value
    if text not in ARCHES:
        raise ValueError(f"{value!r} is not one of {', '.join(ARCHES)}")
    return text


def _name_parser(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _parse_string(value)
        if not pattern.fullmatch(text):
            raise ValueError(f"{value!r} is not {what}")
        return text

    return parse


_parse_extension = _name_parser(_NAME_RE, "an extension name like siderolabs/qemu-guest-agent")
_parse_overlay = _name_parser(_NAME_RE, "an overlay name like rpi_generic")
_parse_platform = _name_parser(_PLATFORM_RE, "a platform name (lowercase letters, digits and '-')")


def _list_parser(item: Callable[[Any], str], *, allow_empty: bool) -> Callable[[Any], tuple[str, ...]]:
    """A YAML list or a comma string (the environment and command line can only give the latter)."""

    def parse(value: Any) -> tuple[str, ...]:
        if value is None:  # `default_extensions:` with every item commented out
            items: list[Any] = []
        elif isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(f"expected a list or a comma-separated string, not {_kind(value)}")
        result: list[str] = []
        for raw in items:
            if isinstance(raw, str) and not raw.strip():
                continue  # "a,,b" and a trailing comma are harmless
            name = item(raw)
            if name not in result:  # order kept, duplicates dropped
                result.append(name)
        if not result and not allow_empty:
            raise ValueError("must name at least one item")
        return tuple(result)

    return parse


def _list_converter(item: Callable[[Any], str], *, allow_empty: bool) -> Converter:
    parse = _list_parser(item, allow_empty=allow_empty)

    def convert(value: Any, label: str) -> tuple[str, ...]:
        try:
            return parse(value)
        except ValueError as exc:
            _fail(label, str(exc))

    return convert


def _optional(convert: Converter) -> Converter:
    def convert_optional(value: Any, label: str) -> Any:
        return None if value is None else convert(value, label)

    return convert_optional


def _check_keys(mapping: Mapping[Any, Any], known: tuple[str, ...], prefix: str) -> None:
    """Unknown keys are errors: a typo must not silently fall back to a default."""
    for key in mapping:
        if key in known:
            continue
        name = key if isinstance(key, str) else repr(key)
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
        _fail(f"{prefix}{name}", f"unknown key ({hint})")


_PREFETCH_CONVERTERS: dict[str, Converter] = {
    "version": _via(_parse_version),
    "arch": _via(_parse_arch),
    "platform": _via(_parse_platform),
    "extensions": _list_converter(_parse_extension, allow_empty=True),
    "overlay": _optional(_via(_parse_overlay)),
}


def _convert_prefetch_item(item: Any, label: str) -> PrefetchImage:
    if isinstance(item, PrefetchImage):  # an already-typed override is validated all the same
        item = asdict(item)
    if not isinstance(item, Mapping):
        _fail(label, f"expected a mapping with keys {', '.join(PREFETCH_KEYS)}, not {_kind(item)}")
    _check_keys(item, PREFETCH_KEYS, f"{label}.")
    return PrefetchImage(**{key: _PREFETCH_CONVERTERS[key](raw, f"{label}.{key}") for key, raw in item.items()})


def _convert_prefetch(value: Any, label: str) -> tuple[PrefetchImage, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        _fail(label, f"expected a list of images (mappings with {', '.join(PREFETCH_KEYS)}), not {_kind(value)}")
    return tuple(_convert_prefetch_item(item, f"{label}[{i}]") for i, item in enumerate(value))


_CONVERTERS: dict[str, Converter] = {
    "listen": _via(_parse_listen),
    "enabled": _via(parse_bool),
    "base_url": _via(_parse_base_url),
    "cache_directory": _via(_parse_path),
    "max_cache_size": _via(parse_size),
    "min_free_space": _via(parse_size),
    "default_extensions": _list_converter(_parse_extension, allow_empty=True),
    "platforms": _list_converter(_parse_platform, allow_empty=False),
    "compression": _via(_parse_compression),
    "metadata_ttl": _via(parse_duration),  # 0 is allowed: refresh on every use
    "connect_timeout": _via(_parse_timeout),
    "metadata_timeout": _via(_parse_timeout),
    "first_byte_timeout": _via(_parse_timeout),
    "build_timeout": _via(_parse_timeout),
    "idle_timeout": _via(_parse_timeout),
    "client_stall_timeout": _via(_parse_timeout),
    "checksum_wait": _via(parse_duration),  # 0 is allowed: answer at once if not ready
    "max_downloads": _via(_parse_positive_int),
    "prefetch": _convert_prefetch,
}
assert set(_CONVERTERS) == {"listen", *TALOS_KEYS}, "every config key needs a converter"


# --------------------------------------------------------------------------- sources

Setting = tuple[str, Any, str]  # (key, raw value, label naming its source)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: the later one would silently win, hiding a mistake."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if duplicate:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _file_settings(path: str) -> Iterator[Setting]:
    document = _read_yaml(path)
    if document is None:  # an empty file, or only comments: all defaults
        return
    if not isinstance(document, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping with 'listen' and 'talos' keys, not {_kind(document)}")
    _check_keys(document, TOP_LEVEL_KEYS, "")
    if "listen" in document:
        yield "listen", document["listen"], "listen"
    talos = document.get("talos")
    if talos is None:  # `talos:` with every key commented out
        return
    if not isinstance(talos, Mapping):
        _fail("talos", f"expected a mapping of settings, not {_kind(talos)}")
    _check_keys(talos, TALOS_KEYS, "talos.")
    for key, value in talos.items():
        yield key, value, f"talos.{key}"


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _env_settings(environ: Mapping[str, str]) -> Iterator[Setting]:
    # Only our own names are read: other tools (talosctl...) set TALOS_* variables too.
    for key in TALOS_KEYS:
        if key == "prefetch":  # a list of mappings has no sensible single-string form
            continue
        name = env_name(key)
        if name in environ:
            yield key, environ[name], name


# the command line's short spelling of a key, where it differs from the key
_OPTION_NAMES = {"cache_directory": "--cache-dir"}


def option_name(key: str) -> str:
    return _OPTION_NAMES.get(key, "--" + key.replace("_", "-"))


def _override_settings(overrides: Mapping[str, object]) -> Iterator[Setting]:
    for key, value in overrides.items():
        if value is None:  # an option not given on the command line
            continue
        if key not in _CONVERTERS:
            close = difflib.get_close_matches(str(key), list(_CONVERTERS), n=1)
            hint = f" (did you mean {option_name(close[0])}?)" if close else ""
            _fail(option_name(str(key)), f"unknown option{hint}")
        yield key, value, option_name(key)


def _check_prefetch_platforms(talos: TalosConfig, prefetch_label: str) -> None:
    """A prefetched image must be one the daemon would serve, or it only wastes disk."""
    for i, image in enumerate(talos.prefetch):
        if image.platform not in talos.platforms:
            _fail(
                f"{prefetch_label}[{i}].platform",
                f"{image.platform!r} is not one of the served platforms ({', '.join(talos.platforms)})",
            )


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """defaults < YAML file < environment ``TALOS_<KEY>`` < overrides (command line).

    ``overrides`` keys are ``"listen"`` or any TalosConfig field name; values are strings
    (as typed on a command line) or already-typed values; ``None`` values are ignored.
    Raises ConfigError (one line) for any problem.
    """
    env = os.environ if environ is None else environ
    sources: list[Iterator[Setting]] = []
    if path is not None:
        sources.append(_file_settings(os.fspath(path)))
    sources.append(_env_settings(env))
    if overrides:
        sources.append(_override_settings(overrides))

    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for source in sources:
        for key, raw, label in source:
            # Every source's value is validated, even one a later source replaces: a broken
            # file should not start working by accident because an override happens to be set.
            values[key] = _CONVERTERS[key](raw, label)
            labels[key] = label

    listen = values.pop("listen", DEFAULT_LISTEN)
    if "cache_directory" in values:
        values["cache_directory"] = expand_path(values["cache_directory"], env)
    else:
        values["cache_directory"] = default_cache_directory(env)
    talos = TalosConfig(**values)
    _check_prefetch_platforms(talos, labels.get("prefetch", "talos.prefetch"))
    return Config(listen=listen, talos=talos)
