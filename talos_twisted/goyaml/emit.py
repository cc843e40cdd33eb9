"""go-yaml v4's ``Marshal`` text of the nodes the representer (`representer`) made: its
libyaml-derived emitter (scalar analysis, quoting, block layout with 4-space indentation,
unlimited line width). Only what a marshalled Go value can produce is ported: block
collections, ``[]``/``{}`` for empty ones, plain/quoted/literal scalars, ``!!binary``.
"""

from __future__ import annotations

from dataclasses import dataclass

from talos_twisted.goyaml.representer import DOUBLE, LITERAL, PLAIN, SINGLE, Map, Rep, Scalar, Seq
from talos_twisted.goyaml.resolve import GoYAMLError

BEST_INDENT = 4
_BREAKS = "\r\n\x85\u2028\u2029"


@dataclass(frozen=True)
class _Analysis:
    multiline: bool
    block_plain: bool
    single: bool
    block: bool


def _printable(c: str) -> bool:
    o = ord(c)
    return c == "\n" or 0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF or (0xE000 <= o <= 0xFFFD and o != 0xFEFF)


def _analyze(value: str) -> _Analysis:
    """libyaml's yaml_emitter_analyze_scalar, for the block context (flow_level 0)."""
    if not value:
        return _Analysis(False, True, True, False)
    block_ind = value.startswith(("---", "..."))
    breaks = special = tabs = lead_space = lead_break = trail_space = trail_break = False
    break_space = space_break = prev_space = prev_break = False
    preceded_ws = True
    n = len(value)
    for i, c in enumerate(value):
        followed_ws = i + 1 >= n or value[i + 1] in " \t"
        if i == 0:
            if c in "#,[]{}&*!|>'\"%@`" or (c in "?:-" and followed_ws):
                block_ind = True
        elif (c == ":" and followed_ws) or (c == "#" and preceded_ws):
            block_ind = True
        if c == "\t":
            tabs = True
        elif not _printable(c):
            special = True
        if c == " ":
            lead_space = lead_space or i == 0
            trail_space = trail_space or i == n - 1
            break_space = break_space or prev_break
            prev_space, prev_break = True, False
        elif c in _BREAKS:
            breaks = True
            lead_break = lead_break or i == 0
            trail_break = trail_break or i == n - 1
            space_break = space_break or prev_space
            prev_space, prev_break = False, True
        else:
            prev_space = prev_break = False
        preceded_ws = c in " \t\0" or c in _BREAKS
    plain = not (lead_space or lead_break or trail_space or trail_break or break_space or space_break)
    plain = plain and not (tabs or special or breaks or block_ind)
    single = not (break_space or space_break or tabs or special)
    block = not (trail_space or space_break or special)
    return _Analysis(breaks, plain, single, block)


_ESCAPES = {
    0x00: "0", 0x07: "a", 0x08: "b", 0x09: "t", 0x0A: "n", 0x0B: "v", 0x0C: "f", 0x0D: "r", 0x1B: "e",
    0x22: '"', 0x5C: "\\", 0x85: "N", 0xA0: "_", 0x2028: "L", 0x2029: "P",
}  # fmt: skip


def _escape(c: str) -> str:
    o = ord(c)
    if o in _ESCAPES:
        return "\\" + _ESCAPES[o]
    if o <= 0xFF:
        return f"\\x{o:02X}"
    return f"\\u{o:04X}" if o <= 0xFFFF else f"\\U{o:08X}"


class _Emitter:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.indent = -1
        self.indents: list[int] = []
        self.column = 0
        self.whitespace = True
        self.indention = True

    def put(self, text: str) -> None:
        self.out.append(text)
        self.column += len(text)

    def put_break(self, c: str = "\n") -> None:
        self.out.append(c)
        self.column = 0
        self.indention = True

    def write_indent(self) -> None:
        indent = max(self.indent, 0)
        if not self.indention or self.column > indent or (self.column == indent and not self.whitespace):
            self.put_break()
        if self.column < indent:
            self.put(" " * (indent - self.column))
        self.whitespace = True

    def indicator(self, text: str, need_ws: bool, is_ws: bool = False, is_indention: bool = False) -> None:
        if need_ws and not self.whitespace:
            self.put(" ")
        self.put(text)
        self.whitespace = is_ws
        self.indention = self.indention and is_indention

    def increase_indent(self, flow: bool, in_seq_item: bool) -> None:
        self.indents.append(self.indent)
        if self.indent < 0:
            self.indent = BEST_INDENT if flow else 0
        elif in_seq_item:
            self.indent += 2  # [Go] the first indent inside a sequence skips the "- "
        else:
            self.indent = BEST_INDENT * ((self.indent + BEST_INDENT) // BEST_INDENT)

    def node(self, rep: Rep, in_seq_item: bool = False, simple_key: bool = False) -> None:
        if isinstance(rep, Scalar):
            self.scalar(rep, in_seq_item, simple_key)
        elif isinstance(rep, Seq):
            if not rep.items:
                self.indicator("[", True, True)
                self.indicator("]", False)
                return
            self.increase_indent(False, in_seq_item)
            for item in rep.items:
                self.write_indent()
                self.indicator("-", True, False, True)
                self.node(item, in_seq_item=True)
            self.indent = self.indents.pop()
        else:
            if not rep.pairs:
                self.indicator("{", True, True)
                self.indicator("}", False)
                return
            self.increase_indent(False, in_seq_item)
            for key, value in rep.pairs:
                self.write_indent()
                if self._simple_key(key):
                    self.node(key, simple_key=True)
                    self.indicator(":", False)
                else:
                    self.indicator("?", True, False, True)
                    self.node(key)
                    self.write_indent()
                    self.indicator(":", True, False, True)
                self.node(value)
            self.indent = self.indents.pop()

    @staticmethod
    def _simple_key(key: Rep) -> bool:
        if not isinstance(key, Scalar):
            return isinstance(key, Seq) and not key.items or isinstance(key, Map) and not key.pairs
        return not _analyze(key.value).multiline and len(key.tag) + len(key.value.encode()) <= 128

    def scalar(self, sc: Scalar, in_seq_item: bool, simple_key: bool) -> None:
        a = _analyze(sc.value)
        style = DOUBLE if simple_key and a.multiline else sc.style
        if style == PLAIN and (not a.block_plain or (not sc.value and simple_key)):
            style = SINGLE
        if style == SINGLE and not a.single:
            style = DOUBLE
        if style == LITERAL and (not a.block or simple_key):
            style = DOUBLE
        if sc.tag:
            self.indicator(sc.tag, True)
        parent = self.indent
        self.increase_indent(True, in_seq_item)
        if style == PLAIN:
            if sc.value and not self.whitespace:
                self.put(" ")
            self.put(sc.value)
            self.whitespace = self.whitespace and not sc.value
            self.indention = False
        elif style == SINGLE:
            self._single(sc.value)
        elif style == DOUBLE:
            self.indicator('"', True)
            every = sc.value.startswith("\ufeff")  # [Go] is_bom tests the string's start, not i
            self.put("".join(_escape(c) if every or not _printable(c) or c in _BREAKS or c in '"\\' else c for c in sc.value))
            self.indicator('"', False)
        else:
            self._literal(sc.value, in_seq_item, parent)
        self.indent = self.indents.pop()

    def _single(self, value: str) -> None:
        self.indicator("'", True)
        breaks = False
        for c in value:
            if c in _BREAKS:
                if not breaks and c == "\n":
                    self.put_break()
                self.put_break(c)
                breaks = True
            else:
                if breaks:
                    self.write_indent()
                self.put("''" if c == "'" else c)
                self.indention = breaks = False
        self.indicator("'", False)

    def _literal(self, value: str, in_seq_item: bool, parent: int) -> None:
        hint = value[0] == " " or value[0] in _BREAKS
        # go-yaml writes an indentation indicator relative to its own indentation rule, which a
        # reader applies to the parent's: inside a sequence it points at the wrong column; and
        # with no indicator libyaml refuses a tab where it detects the indentation
        if (hint and (in_seq_item or self.indent != parent + BEST_INDENT)) or value[0] == "\t":
            raise GoYAMLError(
                "yaml: go-yaml would write this multi-line string as a block it cannot read back "
                f"(its first line starts with {'a tab' if value[0] == chr(9) else 'a space or a line break'})"
            )
        self.indicator("|", True)
        if hint:
            self.indicator(str(BEST_INDENT), False)
        if value[-1] not in _BREAKS:
            self.indicator("-", False)
        elif len(value) == 1 or value[-2] in _BREAKS:
            self.indicator("+", False)
        self.put_break()
        self.whitespace = True
        breaks = True
        for c in value:
            if c in _BREAKS:
                self.put_break(c)
                breaks = True
            else:
                if breaks:
                    self.write_indent()
                self.put(c)
                self.indention = breaks = False


def dump(root: Rep) -> str:
    """The document go-yaml's ``Marshal`` writes for ``root`` (no ``---``, final newline)."""
    emitter = _Emitter()
    emitter.node(root)
    emitter.indent = -1
    emitter.write_indent()
    return "".join(emitter.out)
