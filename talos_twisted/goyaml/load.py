"""Read the first YAML document of a text into go-yaml-like nodes.

PyYAML's pure-Python reader, scanner and parser give the events (with each scalar's style
and explicit tag); the few places where go-yaml's libyaml port reads differently are
overridden here, and the node tree is built the way go-yaml's own parser builds it (a
plain scalar's tag is resolved at once, quoted scalars are ``!!str``, plain ``<<`` is a
merge key). No YAML 1.1 typing from PyYAML is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from yaml import events as ev
from yaml.error import Mark, MarkedYAMLError, YAMLError
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.scanner import Scanner, ScannerError

from talos_twisted.goyaml.resolve import MAP, MERGE, SEQ, STR, GoYAMLError, resolve, short_tag

# go-yaml v4 also admits DEL and the C1 controls (for JSON compatibility), PyYAML does not
_NOT_ALLOWED = re.compile("[^\x09\x0a\x0d\x20-\x7e\x7f-\x9f\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# go-yaml's double-quoted escapes: unlike PyYAML, no "\/" (not a YAML 1.1 escape) but "\'"
_ESCAPES = {
    "0": "\0", "a": "\x07", "b": "\x08", "t": "\t", "\t": "\t", "n": "\n", "v": "\x0b",
    "f": "\x0c", "r": "\r", "e": "\x1b", " ": " ", '"': '"', "'": "'", "\\": "\\",
    "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029",
}  # fmt: skip
_CODES = {"x": 2, "u": 4, "U": 8}
_QUOTED = "while scanning a quoted scalar"


class _Loader(Reader, Scanner, Parser):
    def __init__(self, stream: str | bytes) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)

    def event(self) -> ev.Event:
        return self.get_event()  # type: ignore[no-untyped-call, no-any-return]  # PyYAML is unannotated

    def check_printable(self, data: str) -> None:
        match = _NOT_ALLOWED.search(data)
        if match:
            position = self.index + (len(self.buffer) - self.pointer) + match.start()
            raise ReaderError(self.name, position, ord(match.group()), "unicode", "control characters are not allowed")

    def scan_flow_scalar_non_spaces(self, double: bool, start_mark: Mark | None) -> list[str]:
        # PyYAML's loop, with go-yaml's escape set and its check of \u/\U code points
        chunks: list[str] = []
        while True:
            length = 0
            while self.peek(length) not in "'\"\\\0 \t\r\n\x85\u2028\u2029":
                length += 1
            if length:
                chunks.append(self.prefix(length))
                self.forward(length)
            ch = self.peek()
            if not double and ch == "'" and self.peek(1) == "'":
                chunks.append("'")
                self.forward(2)
            elif (double and ch == "'") or (not double and ch in '"\\'):
                chunks.append(ch)
                self.forward()
            elif double and ch == "\\":
                self.forward()
                ch = self.peek()
                if ch in _ESCAPES:
                    chunks.append(_ESCAPES[ch])
                    self.forward()
                elif ch in _CODES:
                    self.forward()
                    digits = self.prefix(_CODES[ch])
                    if len(digits) != _CODES[ch] or any(c not in "0123456789ABCDEFabcdef" for c in digits):
                        raise ScannerError(_QUOTED, start_mark, "did not find expected hexdecimal number", self.get_mark())
                    code = int(digits, 16)
                    if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                        raise ScannerError(_QUOTED, start_mark, "found invalid Unicode character escape code", self.get_mark())
                    chunks.append(chr(code))
                    self.forward(len(digits))
                elif ch in "\r\n\x85\u2028\u2029":
                    self.scan_line_break()  # type: ignore[no-untyped-call]  # PyYAML is unannotated
                    chunks.extend(self.scan_flow_scalar_breaks(double, start_mark))
                else:
                    raise ScannerError(_QUOTED, start_mark, "found unknown escape character", self.get_mark())
            else:
                return chunks

    def scan_block_scalar_indentation(self) -> tuple[list[str], int, object]:
        chunks, max_indent, end_mark = super().scan_block_scalar_indentation()
        if self.peek() == "\t":  # libyaml refuses a tab where it is still detecting the indentation
            raise ScannerError(
                "while scanning a block scalar", None, "found a tab character where an indentation space is expected",
                self.get_mark(),
            )  # fmt: skip
        return chunks, max_indent, end_mark


@dataclass(eq=False)
class Node:
    """A node as go-yaml's parser makes it; ``alias`` nodes point at their anchor's node."""

    kind: str  # "scalar", "seq", "map" or "alias"
    tag: str = ""  # short tag, already resolved for plain scalars
    value: str = ""  # scalar text, or the anchor name of an alias
    style: str = ""  # "" plain, or PyYAML's style character (' " | >)
    line: int = 0
    content: list[Node] = field(default_factory=list)  # items, or keys and values alternating
    alias: Node | None = None


def _scalar_tag(tag: str | None, style: str, value: str) -> str:
    if tag and tag != "!":
        return short_tag(tag)
    if style:
        return STR
    if value == "<<":
        return MERGE
    return resolve("", value)[0]


class _Composer:
    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.anchors: dict[str, Node] = {}

    def node(self) -> Node:
        event = self.loader.event()
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, ev.AliasEvent):
            target = self.anchors.get(event.anchor or "")
            if target is None:
                raise GoYAMLError(f"yaml: line {line}: unknown anchor '{event.anchor}' referenced")
            return Node("alias", target.tag, event.anchor or "", line=line, alias=target)
        if isinstance(event, ev.ScalarEvent):
            style = event.style or ""
            node = Node("scalar", _scalar_tag(event.tag, style, event.value), event.value, style, line)
        elif isinstance(event, ev.SequenceStartEvent | ev.MappingStartEvent):
            is_seq = isinstance(event, ev.SequenceStartEvent)
            tag = short_tag(event.tag) if event.tag and event.tag != "!" else (SEQ if is_seq else MAP)
            node = Node("seq" if is_seq else "map", tag, line=line)
            end = ev.SequenceEndEvent if is_seq else ev.MappingEndEvent
            while not self.loader.check_event(end):
                node.content.append(self.node())
            self.loader.event()
        else:  # pragma: no cover - the parser yields no other event here
            raise GoYAMLError(f"yaml: line {line}: unexpected {type(event).__name__}")
        if event.anchor:
            self.anchors[event.anchor] = node  # registered once complete: a self-reference is unknown
        return node


def _describe(e: YAMLError) -> str:
    if isinstance(e, MarkedYAMLError):
        stage = "scanner" if isinstance(e, ScannerError) else "parser"
        context = f" ({e.context})" if e.context else ""
        mark = e.problem_mark
        where = f" at L{mark.line + 1}.C{mark.column + 1}" if mark is not None else ""
        return f"go-yaml load error in {stage}{context}{where}: {e.problem}"
    if isinstance(e, ReaderError):
        return f"go-yaml load error in reader: {e.reason}"
    return f"go-yaml load error: {e}"


def load_first(text: str | bytes) -> Node | None:
    """The root node of the first document, or None when there is none (go-yaml's EOF).

    Later documents are never read, as go-yaml's decoder reads one document per call.
    """
    try:
        loader = _Loader(text)
        loader.event()  # stream start
        if loader.check_event(ev.StreamEndEvent):
            return None
        loader.event()  # document start
        root = _Composer(loader).node()
        loader.event()  # document end
        return root
    except YAMLError as e:
        raise GoYAMLError(_describe(e)) from None
    except UnicodeDecodeError:
        raise GoYAMLError("go-yaml load error in reader: invalid UTF-8") from None
