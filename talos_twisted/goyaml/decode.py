"""go-yaml v4's decoding of nodes into typed Go values (its ``constructor.go``), as needed
for a struct such as the factory's schematic: strings, unsigned ints, bools, slices,
structs with unknown fields refused, and free-form ``map[string]any`` values.

Go behaviours kept on purpose: a typed string field takes a number's text as written; a
null leaves a field at its zero value and is dropped from a slice of strings or structs;
duplicate keys and unknown fields are errors; ``<<`` merges mappings (explicit keys win);
a plain timestamp into a string field is an error (v4.0.0-rc.6, which the factory uses).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from talos_twisted.goyaml.load import Node
from talos_twisted.goyaml.resolve import BINARY, MAP, MERGE, SEQ, STR, TIMESTAMP, GoTime, GoYAMLError, resolve

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class AnyMap:
    """A Go ``map[any]any``: a mapping with a key that is not a string (kept as pairs, as
    Python would fold the distinct Go keys ``1``, ``1.0`` and ``true`` into one)."""

    items: tuple[tuple[Any, Any], ...]


class ConstructError(GoYAMLError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"yaml: construct errors: line {line}: {message}")
        self.line = line


def go_quote(text: str) -> str:
    """Roughly Go's ``%#v`` of a string (for messages only)."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif not c.isprintable():
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _decode_binary(text: str) -> str:
    try:
        data = base64.b64decode("".join(text.split("\n")).replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise GoYAMLError("!!binary value contains invalid base64 data") from None
    return data.decode("utf-8", "surrogateescape")  # Go strings may hold any bytes


def _alias_ratio(count: int) -> float:
    # go-yaml's allowedAliasRatio: guards against billion-laughs documents
    low, high = 400_000, 4_000_000
    if count <= low:
        return 0.99
    if count >= high:
        return 0.10
    return 0.99 - 0.89 * (count - low) / (high - low)


_OLD_BOOLS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "off", "Off", "OFF"), False),
}


class Decoder:
    """One document's decoding (alias accounting is per document, as in go-yaml)."""

    def __init__(self) -> None:
        self._count = 0
        self._alias_count = 0
        self._alias_depth = 0
        self._active: set[int] = set()

    # --- plumbing ---------------------------------------------------------------------

    def run(self, node: Node, fn: Callable[[Node], T]) -> T:
        """Construct ``node`` with ``fn``, following aliases as go-yaml does."""
        self._count += 1
        if self._alias_depth:
            self._alias_count += 1
        if self._alias_count > 100 and self._count > 1000 and self._alias_count / self._count > _alias_ratio(self._count):
            raise GoYAMLError("yaml: document contains excessive aliasing")
        if node.kind != "alias":
            return fn(node)
        if id(node) in self._active or node.alias is None:
            raise GoYAMLError(f"yaml: anchor '{node.value}' value contains itself")
        self._active.add(id(node))
        self._alias_depth += 1
        try:
            return self.run(node.alias, fn)
        finally:
            self._alias_depth -= 1
            self._active.discard(id(node))

    @staticmethod
    def terror(node: Node, type_name: str) -> ConstructError:
        value = ""
        if node.tag not in (SEQ, MAP):
            text = node.value if len(node.value) <= 10 else node.value[:7] + "..."
            value = f" `{text}`"
        return ConstructError(node.line, f"cannot construct {node.tag}{value} into {type_name}")

    @staticmethod
    def resolved(node: Node) -> tuple[str, Any]:
        if node.tag == STR:
            return STR, node.value
        tag, value = resolve(node.tag, node.value)
        if tag == BINARY:
            return BINARY, _decode_binary(node.value)
        return tag, value

    def _scalar(self, node: Node, type_name: str) -> tuple[str, Any]:
        if node.kind != "scalar":
            raise self.terror(node, type_name)
        return self.resolved(node)

    # --- typed values (None: a null, which leaves the Go value as it was) ------------

    def string(self, node: Node, type_name: str = "string") -> str | None:
        def build(n: Node) -> str | None:
            tag, value = self._scalar(n, type_name)
            if value is None:
                return None
            if tag == TIMESTAMP:
                raise self.terror(n, type_name)
            return str(value) if tag == BINARY else n.value

        return self.run(node, build)

    def text(self, node: Node, type_name: str) -> str | None:
        """The text a Go ``encoding.TextUnmarshaler`` is given."""

        def build(n: Node) -> str | None:
            if n.kind != "scalar":
                raise ConstructError(n.line, f"cannot construct {n.tag} into {type_name} (TextUnmarshaler)")
            tag, value = self.resolved(n)
            if value is None:
                return None
            return str(value) if tag == BINARY else n.value

        return self.run(node, build)

    def uint(self, node: Node, bits: int, type_name: str) -> int | None:
        def build(n: Node) -> int | None:
            _, value = self._scalar(n, type_name)
            if value is None:
                return None
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**bits:
                return value
            if isinstance(value, float) and value.is_integer() and 0 <= value < 2**bits:
                return int(value)  # a whole float fits; 1.5 does not (rc.6)
            raise self.terror(n, type_name)

        return self.run(node, build)

    def boolean(self, node: Node) -> bool | None:
        def build(n: Node) -> bool | None:
            _, value = self._scalar(n, "bool")
            if value is None or isinstance(value, bool):
                return value
            if isinstance(value, str) and value in _OLD_BOOLS:
                return _OLD_BOOLS[value]  # YAML 1.1 booleans, for typed bools only
            raise self.terror(n, "bool")

        return self.run(node, build)

    def sequence(self, node: Node, type_name: str, item: Callable[[Node], T | None]) -> list[T] | None:
        def build(n: Node) -> list[T] | None:
            if n.kind == "scalar" and self.resolved(n)[1] is None:
                return None
            if n.kind != "seq":
                raise self.terror(n, type_name)
            return [v for v in (item(c) for c in n.content) if v is not None]

        return self.run(node, build)

    # --- mappings ---------------------------------------------------------------------

    def _check_unique(self, node: Node) -> None:
        keys = node.content[0::2]
        for i, first in enumerate(keys):
            for later in keys[i + 1 :]:
                if first.kind == later.kind and first.value == later.value:
                    raise ConstructError(later.line, f"mapping key {go_quote(later.value)} already defined at line {first.line}")

    def _merge_sources(self, merge: Node) -> list[Node]:
        def mapping(n: Node) -> Node:
            target = n.alias if n.kind == "alias" else n
            if target is None or target.kind != "map":
                raise GoYAMLError("yaml: map merge requires map or sequence of maps as the value")
            return target

        if merge.kind == "seq":
            return [mapping(n) for n in merge.content]
        return [mapping(merge)]

    def entries(self, node: Node, key_of: Callable[[Node], K | None]) -> list[tuple[K, Node, Node]]:
        """A mapping's (key, key node, value node) after merges; explicit keys win."""
        self._check_unique(node)
        found: list[tuple[K, Node, Node]] = []
        merge: Node | None = None
        for k, v in zip(node.content[0::2], node.content[1::2]):
            if k.kind == "scalar" and k.tag == MERGE:
                merge = v
                continue
            key = key_of(k)
            if key is not None:  # a null key is not constructed, so skipped
                found.append((key, k, v))
        if merge is not None:
            seen = {key for key, _, _ in found}
            for source in self._merge_sources(merge):
                for key, k, v in self.run(source, lambda n: self.entries(n, key_of)):
                    if key not in seen:
                        seen.add(key)
                        found.append((key, k, v))
        return found

    def struct(self, node: Node, type_name: str, fields: Collection[str]) -> dict[str, Node] | None:
        """The value nodes of a struct's fields, by YAML name (None: a null, the zero struct)."""

        def build(n: Node) -> dict[str, Node] | None:
            if n.kind == "scalar" and self.resolved(n)[1] is None:
                return None
            if n.kind != "map":
                raise self.terror(n, type_name)
            out: dict[str, Node] = {}
            explicit = {id(k) for k in n.content[0::2]}
            for name, k, v in self.entries(n, self.string):
                if name not in fields:
                    raise ConstructError(k.line, f"field {name} not found in type {type_name}")
                if name in out and id(k) in explicit:
                    raise ConstructError(k.line, f"field {name} already set in type {type_name}")
                out[name] = v
            return out

        return self.run(node, build)

    def string_map(self, node: Node, type_name: str) -> dict[str, Any] | None:
        def build(n: Node) -> dict[str, Any] | None:
            if n.kind == "scalar" and self.resolved(n)[1] is None:
                return None
            if n.kind != "map":
                raise self.terror(n, type_name)
            return {key: self.interface(v) for key, _, v in self.entries(n, self.string)}

        return self.run(node, build)

    def interface(self, node: Node) -> Any:
        """A Go ``any``: None, bool, int, float, str, GoTime, list, dict (string keys) or AnyMap."""

        def build(n: Node) -> Any:
            if n.kind == "scalar":
                return self.resolved(n)[1]
            if n.kind == "seq":
                return [self.interface(c) for c in n.content]
            keys = [k.alias if k.kind == "alias" and k.alias is not None else k for k in n.content[0::2]]
            if all(k.tag in (STR, MERGE) for k in keys):
                return {key: self.interface(v) for key, _, v in self.entries(n, self.string)}
            pairs: dict[tuple[str, Any], tuple[Any, Any]] = {}
            for ident, _, v in self.entries(n, self._any_key):
                pairs[ident] = (ident[1], self.interface(v))
            return AnyMap(tuple(pairs.values()))

        return self.run(node, build)

    def _any_key(self, node: Node) -> tuple[str, Any]:
        value = self.interface(node)
        if isinstance(value, list | dict | AnyMap):
            raise GoYAMLError(f"yaml: cannot use '{value!r}' as a map key; try decoding into yaml.Node")
        # Go keeps 1, 1.0 and true apart; so must the identity used here
        return type(value).__name__ if not isinstance(value, GoTime) else "time", value
