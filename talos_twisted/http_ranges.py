"""HTTP range requests (RFC 9110 §14) as a pure response plan.

plan_response() decides status, headers and the exact body layout (which file bytes, and the
multipart/byteranges framing around them) for a representation of known size. It is the only
place that knows the multipart layout; the caller streams the parts in order. Header values
come in as the caller decoded them (latin-1), and no value makes anything here raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from talos_twisted.http_conditional import if_range_holds, not_modified, precondition_status

__all__ = [
    "MAX_RANGES", "Part", "Plan", "Unsatisfiable", "if_range_holds", "not_modified", "parse_range",
    "plan_parts_length", "plan_response",
]

# More ranges than this as sent get the whole representation (§14.2 lets a server ignore
# a Range; many small ranges are a denial-of-service pattern).
MAX_RANGES = 16

_OWS = " \t"
# Positions are clamped to this: far beyond any file, and small enough that arithmetic on it
# stays cheap. Digit strings longer than _MAX_DIGITS never reach int() (which refuses more
# than 4300 digits and is quadratic below that).
_HUGE = 1 << 63
_MAX_DIGITS = 19
# RFC 2046 §5.1.1 bchars, at most 70 of them, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

_Span = tuple[int, int]  # [start, end) of the representation


class Unsatisfiable(ValueError):
    """No range of the header overlaps the representation: answered 416."""


@dataclass(frozen=True)
class Part:
    """prefix bytes, then the representation's bytes [start, end)."""

    prefix: bytes
    start: int
    end: int


@dataclass(frozen=True)
class Plan:
    """What to answer.

    The body is each part's prefix then its file bytes, in order, then trailer. For 304, 412
    and 416 there is no representation data: parts is empty and the caller sends no body
    (304) or its own error body (412, 416), so headers carry no Content-Length then.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    parts: tuple[Part, ...] = ()
    trailer: bytes = b""

    @property
    def body_length(self) -> int:
        return sum(len(p.prefix) + p.end - p.start for p in self.parts) + len(self.trailer)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


def plan_parts_length(plan: Plan) -> int:
    """The exact body length of plan (its Content-Length when it has parts)."""
    return plan.body_length


def _position(digits: str) -> tuple[int, int, str] | None:
    """(value clamped to _HUGE, digit count, significant digits) of a 1*DIGIT, or None.

    The last two order any two numbers exactly, however long, without int().

    ASCII only: str.isdigit() alone accepts '²' and other Unicode digits.
    """
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    significant = digits.lstrip("0") or "0"
    value = _HUGE if len(significant) > _MAX_DIGITS else min(int(significant), _HUGE)
    return value, len(significant), significant


# What the Range header asks for: None = ignore it (send the whole representation), else the
# satisfiable spans as sent (possibly empty: 416).
_Requested = list[_Span] | None


def _requested_spans(header: str | None, size: int, max_ranges: int) -> _Requested:
    """Parse a Range value (RFC 9110 §14.1.2, §14.2) into clamped spans, in the order sent."""
    if header is None:
        return None
    unit, eq, range_set = header.strip(_OWS).partition("=")
    # Other units are ignored (§14.2); the unit compares case-insensitively (§14.1).
    if not eq or not unit.isascii() or unit.lower() != "bytes":
        return None
    specs: list[str] = []
    for element in range_set.split(","):
        element = element.strip(_OWS)
        if not element:
            continue  # empty list elements are allowed and do not count (§5.6.1.2)
        specs.append(element)
        if len(specs) > max_ranges:
            return None
    if not specs:
        return None  # "bytes=" or "bytes=,": a range-set needs one range-spec
    spans: list[_Span] = []
    for spec in specs:
        first_s, dash, last_s = spec.partition("-")
        last = _position(last_s) if last_s else None
        if not dash or (last_s and last is None):
            return None  # one invalid range-spec makes the whole header invalid (§14.1.1)
        if not first_s:  # suffix-range
            if last is None:
                return None
            length = last[0]
            # A zero suffix is satisfiable by nothing; on an empty representation a non-zero
            # one is satisfiable but has no Content-Range spelling (plan_response sends 200).
            if length > 0 and size > 0:
                spans.append((max(0, size - length), size))
            elif length > 0:
                return None
            continue
        first = _position(first_s)
        if first is None or (last is not None and last[1:] < first[1:]):
            return None  # not a number, or last-pos < first-pos: invalid (§14.1.1)
        if first[0] >= size:
            continue  # valid but unsatisfiable
        spans.append((first[0], size if last is None else min(last[0] + 1, size)))
    # Ranges that ask for more bytes than the representation has can only be repeating
    # it; answer it once instead (the 0-,0-,0-... amplification).
    if sum(end - start for start, end in spans) > size:
        return None
    return spans


def _coalesce(spans: list[_Span]) -> list[_Span]:
    """Sorted, with overlapping and adjacent spans merged (§15.3.7.2 allows coalescing)."""
    merged: list[_Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def plan_response(
    *, method: str, size: int, etag: str, mtime: float,
    range_header: str | None, if_range: str | None,
    if_none_match: str | None, if_modified_since: str | None,
    if_match: str | None = None, if_unmodified_since: str | None = None,
    max_ranges: int = MAX_RANGES, boundary: str, content_type: str = "application/octet-stream",
) -> Plan:
    """The response to a request for a representation of size bytes with these validators.

    The caller sets ETag, Last-Modified and Accept-Ranges itself, and applies plan.headers
    after its own (a multipart Content-Type replaces the representation's). HEAD gets the
    same plan as GET except for Range, which only GET honours; the caller sends no body.
    Raises ValueError only for bad arguments of the caller's (size, max_ranges, boundary,
    content_type), never for a header value.
    """
    if not 0 <= size < _HUGE or max_ranges < 1:
        raise ValueError(f"size {size} / max_ranges {max_ranges} out of range")
    if not _BOUNDARY.fullmatch(boundary) or not (content_type.isascii() and content_type.isprintable()):
        raise ValueError("invalid multipart boundary or content type")
    status = precondition_status(
        method=method, etag=etag, mtime=mtime, if_match=if_match, if_unmodified_since=if_unmodified_since,
        if_none_match=if_none_match, if_modified_since=if_modified_since,
    )
    if status is not None:  # §13.2.2: preconditions come before Range
        return Plan(status)
    whole = Plan(200, (("Content-Length", str(size)),), (Part(b"", 0, size),))
    # §14.2: GET is the only method with range handling; §13.2.2 step 5 / §13.1.5: If-Range
    # is only looked at with a Range, and a false one means the Range is ignored.
    if method != "GET" or range_header is None:
        return whole
    if not if_range_holds(if_range, etag, mtime):
        return whole
    spans = _requested_spans(range_header, size, max_ranges)
    if spans is None:
        return whole
    if not spans:
        return Plan(416, (("Content-Range", f"bytes */{size}"),))
    spans = _coalesce(spans)
    if len(spans) == 1:
        start, end = spans[0]
        return Plan(206, (("Content-Range", f"bytes {start}-{end - 1}/{size}"),
                          ("Content-Length", str(end - start))), (Part(b"", start, end),))
    # RFC 9110 §14.6 / RFC 2046 §5.1.1 layout: the first delimiter opens the body, later
    # ones follow the previous part's data after a CRLF that belongs to the delimiter.
    parts = tuple(
        Part(
            (b"\r\n" if i else b"") + f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n".encode("ascii"),
            start, end,
        )
        for i, (start, end) in enumerate(spans)
    )
    trailer = f"\r\n--{boundary}--\r\n".encode("ascii")
    length = sum(len(p.prefix) + p.end - p.start for p in parts) + len(trailer)
    headers = (("Content-Type", f"multipart/byteranges; boundary={boundary}"), ("Content-Length", str(length)))
    return Plan(206, headers, parts, trailer)


def parse_range(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """Return [(first, last)] inclusive ranges in the order sent, or None for the whole body.

    Kept for web.py until it switches to plan_response. Malformed headers, other units, more
    than MAX_RANGES ranges or ranges adding up to more than size are ignored (None).
    Raises Unsatisfiable (and nothing else) when no range overlaps the representation.
    """
    spans = _requested_spans(header, size, MAX_RANGES)
    if spans is None:
        return None
    if not spans:
        raise Unsatisfiable(f"bytes */{size}")
    return [(start, end - 1) for start, end in spans]
