"""go-yaml v4's representer: the node a marshalled Go value becomes (`represent`), the style
it asks for each scalar (`rep_str`: plain, single- or double-quoted, literal, ``!!binary``)
and the order of map keys (`key_less`). The emitter (`emit`) writes the text of the nodes.
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

from talos_twisted.goyaml.decode import AnyMap
from talos_twisted.goyaml.resolve import STR, GoTime, GoYAMLError, format_float, is_base60_float, is_old_bool, resolve

PLAIN, SINGLE, DOUBLE, LITERAL = "plain", "single", "double", "literal"
_GO_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}


@dataclass(frozen=True)
class Scalar:
    value: str
    style: str = PLAIN  # the representer's request; the emitter may still quote it
    tag: str = ""  # "" for implicit, else a short tag written out (only !!binary here)


@dataclass(frozen=True)
class Seq:
    items: tuple[Rep, ...]


@dataclass(frozen=True)
class Map:
    pairs: tuple[tuple[Rep, Rep], ...]


Rep = Scalar | Seq | Map


def _literal_ok(text: str) -> bool:
    # go-yaml's shouldUseLiteralStyle: a newline, two bytes or more, something not a space
    return "\n" in text and len(text.encode("utf-8", "surrogateescape")) >= 2 and any(c not in _GO_SPACES for c in text)


def rep_str(text: str) -> Scalar:
    """go-yaml's ``stringv``: the style a Go string is written in."""
    tag = ""
    if any("\ud800" <= c <= "\udfff" for c in text):  # not UTF-8: Go writes the bytes as !!binary
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise GoYAMLError("yaml: cannot marshal a string that is not valid UTF-8") from None
        b64 = base64.b64encode(data).decode()
        text = "".join(b64[i : i + 70] + "\n" for i in range(0, len(b64), 70)) if len(b64) >= 70 else b64
        tag, plain, single = "!!binary", True, False
    else:
        plain = resolve("", text)[0] == STR
        # strings a YAML 1.1 reader would take for something else: single-quoted in rc.6
        single = plain and (is_base60_float(text) or is_old_bool(text) or text == "<<")
        plain = plain and not single
    if "\n" in text:
        return Scalar(text, LITERAL if _literal_ok(text) else DOUBLE, tag)
    return Scalar(text, PLAIN if plain else SINGLE if single else DOUBLE, tag)


def _go_kind(v: Any) -> int:
    # reflect.Kind numbers, which order map keys of different types
    if v is None:
        return 20  # a nil interface
    if isinstance(v, bool):
        return 1
    if isinstance(v, int):
        return 2 if v < 2**63 else 11
    if isinstance(v, float):
        return 14
    if isinstance(v, str):
        return 24
    return 25  # time.Time, a struct


def _is_digit(c: str) -> bool:
    return unicodedata.category(c) == "Nd"


def _str_less(a: str, b: str) -> bool:
    # go-yaml's keyList.Less for two strings: letters by code point, digit runs by value
    digits = False
    for i in range(min(len(a), len(b))):
        ca, cb = a[i], b[i]
        if ca == cb:
            digits = _is_digit(ca)
            continue
        al, bl = unicodedata.category(ca).startswith("L"), unicodedata.category(cb).startswith("L")
        if al and bl:
            return ca < cb
        if al or bl:
            return al if digits else bl
        an = bn = 0
        if ca == "0" or cb == "0":
            j = i - 1
            while j >= 0 and _is_digit(a[j]):
                if a[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai, bi = i, i
        while ai < len(a) and _is_digit(a[ai]):
            an = ((an * 10 + ord(a[ai]) - 48 + 2**63) % 2**64) - 2**63  # int64 arithmetic
            ai += 1
        while bi < len(b) and _is_digit(b[bi]):
            bn = ((bn * 10 + ord(b[bi]) - 48 + 2**63) % 2**64) - 2**63
            bi += 1
        if an != bn:
            return an < bn
        if ai != bi:
            return ai < bi
        return ca < cb
    return len(a) < len(b)


def key_less(a: Any, b: Any) -> bool:
    """go-yaml's keyList.Less: numbers (and bools) by value, then by kind; strings naturally."""
    ak, bk = _go_kind(a), _go_kind(b)
    numeric = (1, 2, 11, 14)
    if ak in numeric and bk in numeric:
        af, bf = float(a), float(b)
        if af != bf:
            return af < bf
        if ak != bk:
            return ak < bk
        return bool(a < b)
    if ak != 24 or bk != 24:
        return ak < bk
    return _str_less(a, b)


def represent(value: Any) -> Rep:
    """The representation of a Go ``any`` value (see ``Decoder.interface``)."""
    if value is None:
        return Scalar("null")
    if isinstance(value, bool):
        return Scalar("true" if value else "false")
    if isinstance(value, int):
        return Scalar(str(value))
    if isinstance(value, float):
        return Scalar(format_float(value))
    if isinstance(value, str):
        return rep_str(value)
    if isinstance(value, GoTime):
        return Scalar(value.format())
    if isinstance(value, AnyMap):  # pairs, not a dict: Python would fold 1, 1.0 and True
        return Map(tuple((represent(k), represent(v)) for k, v in _sorted_pairs(value.items)))
    if isinstance(value, Mapping):
        return Map(tuple((represent(k), represent(v)) for k, v in _sorted_pairs(tuple(value.items()))))
    if isinstance(value, Sequence):  # str was handled above
        return Seq(tuple(represent(v) for v in value))
    raise GoYAMLError(f"yaml: cannot marshal type {type(value).__name__}")


def _compare(a: tuple[Any, Any], b: tuple[Any, Any]) -> int:
    return -1 if key_less(a[0], b[0]) else 1 if key_less(b[0], a[0]) else 0


def _sorted_pairs(items: tuple[tuple[Any, Any], ...]) -> list[tuple[Any, Any]]:
    return sorted(items, key=cmp_to_key(_compare))
