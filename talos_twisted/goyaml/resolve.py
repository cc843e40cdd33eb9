"""go-yaml v4's scalar resolution (its ``resolve.go``): the tag and value a scalar's text has.

This is YAML 1.2's core schema as go-yaml implements it, not YAML 1.1: ``yes``/``on`` and
``12:30`` are strings, ``010`` is octal 8 (Go's ``strconv.ParseInt`` with base 0), ``-0`` is
a negative zero float, and timestamps are recognised for untagged plain scalars only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

STR = "!!str"
BOOL = "!!bool"
INT = "!!int"
FLOAT = "!!float"
NULL = "!!null"
TIMESTAMP = "!!timestamp"
BINARY = "!!binary"
MERGE = "!!merge"
SEQ = "!!seq"
MAP = "!!map"

_LONG_PREFIX = "tag:yaml.org,2002:"


class GoYAMLError(ValueError):
    """Something go-yaml would refuse to load or dump (the message is go-yaml-like)."""


def short_tag(tag: str) -> str:
    if tag.startswith(_LONG_PREFIX):
        return "!!" + tag[len(_LONG_PREFIX) :]
    return tag


def long_tag(tag: str) -> str:
    if tag.startswith("!!"):
        return _LONG_PREFIX + tag[2:]
    return tag


@dataclass(frozen=True)
class GoTime:
    """A ``time.Time`` as go-yaml's timestamp parser makes it (wall clock plus UTC offset)."""

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    nanosecond: int = 0
    offset: int = 0  # seconds east of UTC

    def format(self) -> str:
        """Go's ``time.RFC3339Nano`` layout, as go-yaml marshals a time."""
        text = f"{self.year:04d}-{self.month:02d}-{self.day:02d}T{self.hour:02d}:{self.minute:02d}:{self.second:02d}"
        if self.nanosecond:
            text += "." + f"{self.nanosecond:09d}".rstrip("0")
        if self.offset == 0:
            return text + "Z"
        sign = "+" if self.offset > 0 else "-"
        minutes = abs(self.offset) // 60
        return text + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# resolve.go's table of texts with a fixed meaning; only consulted for a known first character
_FIXED: dict[str, tuple[str, object]] = {}
for _texts, _tag, _value in (
    (("true", "True", "TRUE"), BOOL, True),
    (("false", "False", "FALSE"), BOOL, False),
    (("", "~", "null", "Null", "NULL"), NULL, None),
    ((".nan", ".NaN", ".NAN"), FLOAT, math.nan),
    ((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), FLOAT, math.inf),
    (("-.inf", "-.Inf", "-.INF"), FLOAT, -math.inf),
    (("-0", "-0.0"), FLOAT, -0.0),
    (("<<",), MERGE, "<<"),
):
    for _t in _texts:
        _FIXED[_t] = (_tag, _value)

_HINTS = {"+": "S", "-": "S", ".": "."}
_HINTS.update({c: "D" for c in "0123456789"})
_HINTS.update({c: "M" for c in "yYnNtTfFoO~"})

_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?\Z")  # what strconv.ParseFloat takes after a '.'
_RESOLVABLE = frozenset(("", STR, BOOL, INT, FLOAT, NULL, TIMESTAMP))
_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _parse_go_int(text: str, signed: bool) -> int | None:
    """strconv.ParseInt/ParseUint with base 0 (prefixes 0x, 0o, 0b and a leading 0 for octal)."""
    sign = 1
    if signed and text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    base = 10
    if len(text) > 1 and text[0] == "0":
        base = {"x": 16, "X": 16, "o": 8, "O": 8, "b": 2, "B": 2}.get(text[1], 8)
        text = text[2:] if base != 8 or text[1] in "oO" else text[1:]
    if not text or any(c not in _DIGITS[base] for c in text):
        return None
    value = sign * int(text, base)
    if signed:
        return value if -(2**63) <= value < 2**63 else None
    return value if value < 2**64 else None


def _parse_go_float(text: str) -> float | None:
    value = float(text)
    return None if math.isinf(value) else value  # strconv reports overflow as an error


def resolve(tag: str, text: str) -> tuple[str, object]:
    """Port of go-yaml's ``resolve(tag, in)``: the resolved short tag and Go-like value."""
    tag = short_tag(tag)
    if tag not in _RESOLVABLE:
        return tag, text
    rtag, out = _resolve(tag, text)
    if tag in ("", rtag, STR):
        return rtag, out
    if tag == FLOAT and rtag == INT:
        return FLOAT, float(out)  # type: ignore[arg-type]
    raise GoYAMLError(f"cannot decode {rtag} `{text}` as a {tag}")


def _resolve(tag: str, text: str) -> tuple[str, object]:
    hint = _HINTS.get(text[:1], "") if text else "N"
    if not hint or tag == STR:
        return STR, text
    if text in _FIXED:
        return _FIXED[text]
    if hint == "." and _DOT_FLOAT.match(text):
        value = _parse_go_float(text)
        if value is not None:
            return FLOAT, value
    elif hint in "DS":
        if tag in ("", TIMESTAMP):
            stamp = parse_timestamp(text)
            if stamp is not None:
                return TIMESTAMP, stamp
        plain = text.replace("_", "")
        number = _parse_go_int(plain, signed=True)
        if number is None:
            number = _parse_go_int(plain, signed=False)
        if number is not None:
            return INT, number
        if _YAML_FLOAT.match(plain):
            value = _parse_go_float(plain)
            if value is not None:
                return FLOAT, value
    return STR, text


# --- timestamps: Go's time.Parse with go-yaml's four layouts ------------------------------

_LAYOUTS = (
    ("Y", "-", "M", "-", "D", "T", "h", ":", "m", ":", "s", "f", "z"),
    ("Y", "-", "M", "-", "D", "t", "h", ":", "m", ":", "s", "f", "z"),
    ("Y", "-", "M", "-", "D", " ", "h", ":", "m", ":", "s", "f"),
    ("Y", "-", "M", "-", "D"),
)


def _num(s: str, fixed: bool) -> tuple[int, str] | None:
    # Go's getnum: one or two digits (exactly two when fixed)
    if not s[:1].isascii() or not s[:1].isdigit():
        return None
    if len(s) < 2 or not (s[1].isascii() and s[1].isdigit()):
        return None if fixed else (int(s[0]), s[1:])
    return int(s[:2]), s[2:]


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _parse_layout(layout: tuple[str, ...], s: str) -> GoTime | None:
    f = {"Y": 0, "M": 0, "D": 0, "h": 0, "m": 0, "s": 0, "f": 0, "z": 0}
    for chunk in layout:
        if chunk == "Y":
            if len(s) < 4 or not s[:4].isascii() or not s[:4].isdigit():
                return None
            f["Y"], s = int(s[:4]), s[4:]
        elif chunk in "MDhms":
            got = _num(s, False)
            if got is None:
                return None
            f[chunk], s = got
        elif chunk == "f":
            if len(s) >= 2 and s[0] in ".," and s[1].isascii() and s[1].isdigit():
                n = 1
                while n < len(s) and s[n].isascii() and s[n].isdigit():
                    n += 1
                f["f"], s = int(s[1:10][: n - 1].ljust(9, "0")), s[n:]
        elif chunk == "z":
            if s[:1] == "Z":
                s = s[1:]
                continue
            if len(s) < 6 or s[3] != ":" or s[0] not in "+-":
                return None
            hh, mm = _num(s[1:3], True), _num(s[4:6], True)
            if hh is None or mm is None or hh[0] > 24 or mm[0] > 60:
                return None
            f["z"] = (hh[0] * 60 + mm[0]) * 60 * (-1 if s[0] == "-" else 1)
            s = s[6:]
        elif chunk == " ":
            if not s.startswith(" "):
                return None
            s = s.lstrip(" ")  # a layout space matches a run of spaces
        elif not s.startswith(chunk):
            return None
        else:
            s = s[len(chunk) :]
    if s or not 1 <= f["M"] <= 12 or f["h"] > 23 or f["m"] > 59 or f["s"] > 59:
        return None
    if not 1 <= f["D"] <= _days_in(f["M"], f["Y"]):
        return None
    return GoTime(f["Y"], f["M"], f["D"], f["h"], f["m"], f["s"], f["f"], f["z"])


def parse_timestamp(text: str) -> GoTime | None:
    """go-yaml's parseTimestamp: only texts starting ``YYYY-`` are tried."""
    if len(text) < 5 or not text[:4].isascii() or not text[:4].isdigit() or text[4] != "-":
        return None
    for layout in _LAYOUTS:
        stamp = _parse_layout(layout, text)
        if stamp is not None:
            return stamp
    return None


# --- what the marshaller writes for numbers ------------------------------------------------


def format_float(value: float) -> str:
    """Go's ``strconv.FormatFloat(f, 'g', -1, 64)`` with go-yaml's names for the specials."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    # repr is the shortest text that reads back, as Go's shortest formatting is
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    dp = len(digits) + int(exponent)  # position of the decimal point
    exp = dp - 1
    if exp < -4 or exp >= 6:  # the shortest 'g' switches to %e from the 7th digit (eprec 6)
        text = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{text}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def is_old_bool(text: str) -> bool:
    """YAML 1.1 booleans: strings go-yaml still quotes so 1.1 readers keep them strings."""
    return text in ("y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off", "OFF")


_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?\Z")


def is_base60_float(text: str) -> bool:
    return bool(text) and (text[0] in "+-" or text[0].isdigit()) and ":" in text and bool(_BASE60.match(text))
