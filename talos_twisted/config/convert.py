"""Converters: a raw setting and the label of its source in, the typed value or a ConfigError out.

The label is where the value came from: ``talos.max_cache_size`` for the file,
``TALOS_MAX_CACHE_SIZE`` for the environment, ``--max-cache-size`` for overrides; every
message is ``"<label>: <problem>"`` so the operator knows what to fix.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Mapping, NoReturn, TypeVar
from urllib.parse import urlsplit

from talos_twisted import names

from .units import parse_duration

T = TypeVar("T")
Converter = Callable[[Any, str], T]
Parser = Callable[[Any], T]  # raises ValueError with a label-less message


class ConfigError(ValueError):
    """A configuration problem; ``str(e)`` is one line naming the key and what is wrong."""

    def __init__(self, message: str) -> None:
        # One line whatever went in: the message is logged as a single record.
        super().__init__(" ".join(str(message).splitlines()))


def fail(label: str, problem: str) -> NoReturn:
    raise ConfigError(f"{label}: {problem}")


def kind(value: object) -> str:
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


def via(parse: Parser[T]) -> Converter[T]:
    """A converter from a parser; an empty value is refused before the parser sees it."""

    def convert(value: Any, label: str) -> T:
        if value is None:  # `key:` with nothing after it in YAML
            fail(label, "no value given (remove the key to use the default)")
        try:
            return parse(value)
        except ValueError as exc:
            fail(label, str(exc))

    return convert


def optional(convert: Converter[T]) -> Converter[T | None]:
    """``None`` (YAML ``null`` or ``key:``) is a value here: "no such thing"."""

    def convert_optional(value: Any, label: str) -> T | None:
        return None if value is None else convert(value, label)

    return convert_optional


def check_keys(mapping: Mapping[Any, Any], known: tuple[str, ...], prefix: str) -> None:
    """Unknown keys are errors: a typo must not silently fall back to a default."""
    for key in mapping:
        if key in known:
            continue
        name = key if isinstance(key, str) else repr(key)
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(known)}"
        fail(f"{prefix}{name}", f"unknown key ({hint})")


# --------------------------------------------------------------------------- parsers


def parse_string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {kind(value)} ({value!r})")
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_listen(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a server endpoint description like tcp:8080")
    return value.strip()


def parse_path(value: Any) -> str:
    text = parse_string(value)
    if "\0" in text:
        raise ValueError(f"{value!r} is not a usable path")
    return text  # ~ is expanded in load_config, against the environ it was given


def parse_base_url(value: Any) -> str:
    bad = f"{value!r} is not an http(s) URL like https://factory.talos.dev"
    text = parse_string(value)
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


def parse_public_url(value: Any) -> str:
    """`""` (the request's own Host) or an http(s) URL, as `parse_base_url`."""
    if isinstance(value, str) and not value.strip():
        return ""
    return parse_base_url(value)


PREFETCH_ASSETS = ("disk", "kernel", "initramfs", "cmdline")


def parse_prefetch_asset(value: Any) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in PREFETCH_ASSETS:
        raise ValueError(f"{value!r} is not one of {', '.join(PREFETCH_ASSETS)}")
    return str(text)


def parse_compression(value: Any) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if not isinstance(text, str) or not names.is_compression(text):
        raise ValueError(f"{value!r} is not one of {', '.join(names.COMPRESSIONS)}")
    return text


def parse_log_format(value: Any) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in ("text", "json"):
        raise ValueError(f"{value!r} is not one of text, json")
    return str(text)


def parse_positive_int(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r} is not a whole number of 1 or more")
    return value


def parse_timeout(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:  # a zero timeout would fail every request at once
        raise ValueError(f"{value!r} must be more than 0 seconds")
    return seconds


def parse_version(value: Any) -> str:
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or not names.is_version_spec(text):
        raise ValueError(f"{value!r} is not 'latest' or a Talos version like v1.11.2")
    return text


def parse_arch(value: Any) -> str:
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or not names.is_arch(text):
        raise ValueError(f"{value!r} is not one of {', '.join(names.ARCHES)}")
    return text


def _name_parser(is_valid: Callable[[str], bool], what: str) -> Parser[str]:
    def parse(value: Any) -> str:
        text = parse_string(value)
        if not is_valid(text):
            raise ValueError(f"{value!r} is not {what}")
        return text

    return parse


parse_extension = _name_parser(names.is_extension_name, "an extension name like siderolabs/qemu-guest-agent")
parse_overlay = _name_parser(names.is_overlay_name, "an overlay name like rpi_generic")
parse_platform = _name_parser(
    names.is_platform_name,
    "a platform name (lowercase letters, digits and '-'; 'secureboot' only last, as in metal-secureboot)",
)


def list_of(item: Parser[str], *, allow_empty: bool, most: int | None = None) -> Converter[tuple[str, ...]]:
    """A YAML list or a comma string (the environment and command line can only give the latter)."""

    def parse(value: Any) -> tuple[str, ...]:
        if value is None:  # `default_extensions:` with every item commented out
            items: list[Any] = []
        elif isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(f"expected a list or a comma-separated string, not {kind(value)}")
        result: list[str] = []
        for raw in items:
            if isinstance(raw, str) and not raw.strip():
                continue  # "a,,b" and a trailing comma are harmless
            name = item(raw)
            if name not in result:  # order kept, duplicates dropped
                result.append(name)
        if not result and not allow_empty:
            raise ValueError("must name at least one item")
        if most is not None and len(result) > most:
            raise ValueError(f"too many items ({len(result)}; at most {most})")
        return tuple(result)

    def convert(value: Any, label: str) -> tuple[str, ...]:
        try:
            return parse(value)
        except ValueError as exc:
            fail(label, str(exc))

    return convert

