"""HTTP byte ranges (RFC 9110 §14): parse a Range header against a known size."""

from __future__ import annotations

MAX_RANGES = 64


class Unsatisfiable(ValueError):
    """No range of the header overlaps the representation: answered 416."""


def parse_range(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """Return [(first, last)] inclusive ranges, or None to send the whole body.

    Malformed headers and units other than bytes are ignored, as the RFC allows; too many
    ranges (a denial-of-service pattern) are answered with the whole body.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    ranges: list[tuple[int, int]] = []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or len(parts) > MAX_RANGES:
        return None
    for part in parts:
        first_s, dash, last_s = part.partition("-")
        if not dash:
            return None
        first_s, last_s = first_s.strip(), last_s.strip()
        if first_s and not first_s.isdigit() or last_s and not last_s.isdigit():
            return None
        if not first_s:
            if not last_s:
                return None
            suffix = int(last_s)
            if suffix == 0:
                continue
            ranges.append((max(0, size - suffix), size - 1))
            continue
        first = int(first_s)
        if last_s and int(last_s) < first:
            return None
        if first >= size:
            continue
        last = int(last_s) if last_s else size - 1
        ranges.append((first, min(last, size - 1)))
    if not ranges:
        raise Unsatisfiable(f"bytes */{size}")
    return ranges


def _etags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _http_date(value: str) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, mtime: float) -> bool:
    """RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since."""
    if if_none_match:
        tags = _etags(if_none_match)
        # weak comparison for If-None-Match
        return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)
    if if_modified_since:
        since = _http_date(if_modified_since)
        return since is not None and int(mtime) <= since
    return False


def if_range_holds(if_range: str | None, etag: str, mtime: float) -> bool:
    """Whether a Range may be honoured: If-Range absent, or matching strongly."""
    if not if_range:
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag
    since = _http_date(value)
    return since is not None and int(mtime) == int(since)
