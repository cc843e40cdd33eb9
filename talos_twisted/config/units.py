"""Parsers for the human spellings of sizes, durations and booleans.

Each takes a value as YAML, the environment or a command line gives it and returns the typed
value, or raises ValueError with a message that does not name the key: the caller knows
where the value came from and prefixes that.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

# ASCII digits only: Decimal() and float() would also take other scripts' digits.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
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
