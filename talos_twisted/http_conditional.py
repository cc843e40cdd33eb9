"""HTTP conditional requests (RFC 9110 §13): entity tags, HTTP-dates and preconditions.

Pure functions over header values as the caller received them (decoded as latin-1, so any
character may appear). Nothing here raises on a header value: what cannot be parsed is
treated as the RFC says for that field, which is either "ignore the field" or "matches no
validator".
"""

from __future__ import annotations

import calendar
import re

_OWS = " \t"
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
# RFC 9110 §5.6.7: recipients must accept all three formats. [0-9] and [A-Za-z], not \d or
# \w: those accept non-ASCII digits and letters, which int() would then happily convert.
_IMF_FIXDATE = re.compile(
    r"[A-Za-z]{3}, ([0-9]{2}) ([A-Za-z]{3}) ([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT")
_RFC850_DATE = re.compile(
    r"[A-Za-z]{6,9}, ([0-9]{2})-([A-Za-z]{3})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT")
_ASCTIME_DATE = re.compile(
    r"[A-Za-z]{3} ([A-Za-z]{3}) ([0-9 ][0-9]) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})")


def _present(value: str | None) -> str | None:
    """The field value without OWS, or None when absent or empty.

    An empty field value is treated as absent: it carries no validator, and proxies that
    merge or strip fields produce it.
    """
    if value is None:
        return None
    return value.strip(_OWS) or None


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP-date, or None if it is not one (RFC 9110 §5.6.7).

    Own parser rather than email.utils: that one accepts far more than HTTP-date, returns
    naive (local time) datetimes for some inputs and raises several exception types.
    """
    value = value.strip(_OWS)
    if m := _IMF_FIXDATE.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850_DATE.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        # §5.6.7 wants "more than 50 years in the future" resolved against the clock; a fixed
        # pivot keeps this pure, and nobody has sent rfc850-date since the 1990s.
        year = str((1900 if int(yy) >= 70 else 2000) + int(yy))
    elif m := _ASCTIME_DATE.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    month = _MONTHS.get(mon.lower())
    y, d, h, mi, s = int(year), int(day.strip()), int(hh), int(mm), int(ss)
    # Validated before timegm so that nothing downstream can raise; second 60 is a leap second.
    if month is None or not 1 <= y <= 9999 or h > 23 or mi > 59 or s > 60:
        return None
    if not 1 <= d <= calendar.monthrange(y, month)[1]:
        return None
    return calendar.timegm((y, month, d, h, mi, s))


def _split_tag(value: str) -> tuple[bool, str] | None:
    """(weak, opaque-tag) of exactly one entity-tag (RFC 9110 §8.8.3), or None."""
    weak = value.startswith("W/")
    opaque = value[2:] if weak else value
    if len(opaque) < 2 or opaque[0] != '"' or opaque[-1] != '"' or '"' in opaque[1:-1]:
        return None
    return weak, opaque


def _tag_list(value: str) -> list[tuple[bool, str]]:
    """The entity-tags of a #entity-tag list; anything unparseable is skipped.

    Not value.split(","): a comma is a legal etagc, so '"a,b"' is one tag. Skipped garbage
    matches no validator, which is the conservative reading for both If-Match (fails) and
    If-None-Match (does not suppress the body).
    """
    tags: list[tuple[bool, str]] = []
    pos, n = 0, len(value)
    while pos < n:
        if value[pos] in " \t,":
            pos += 1
            continue
        start = pos
        if value.startswith('W/"', pos):
            pos += 2
        if pos < n and value[pos] == '"':
            close = value.find('"', pos + 1)
            if close < 0:
                break  # unterminated: nothing after it can be trusted
            tag = _split_tag(value[start:close + 1])
            if tag is not None:
                tags.append(tag)
            pos = close + 1
        else:
            comma = value.find(",", pos)
            pos = n if comma < 0 else comma + 1
    return tags


def _own_tag(etag: str) -> tuple[bool, str]:
    # The caller's ETag should be a valid entity-tag; if not, compare it verbatim as strong.
    return _split_tag(etag) or (False, etag)


def etag_list_matches(header: str, etag: str, *, strong: bool) -> bool:
    """Whether an If-Match / If-None-Match value matches etag (RFC 9110 §8.8.3.2).

    "*" matches any current representation, and this one exists.
    """
    if header.strip(_OWS) == "*":
        return True
    own_weak, own = _own_tag(etag)
    if strong and own_weak:
        return False
    return any(opaque == own and not (strong and weak) for weak, opaque in _tag_list(header))


def precondition_status(
    *, method: str, etag: str, mtime: float, if_match: str | None, if_unmodified_since: str | None,
    if_none_match: str | None, if_modified_since: str | None,
) -> int | None:
    """412 or 304 if a precondition decides the response, else None (RFC 9110 §13.2.2).

    The steps run in the RFC's order, so If-Match beats If-Unmodified-Since and If-None-Match
    beats If-Modified-Since. Dates compare at 1 s granularity, truncated the way the caller
    formats Last-Modified (int(mtime)).
    """
    seconds = int(mtime)
    get_or_head = method in ("GET", "HEAD")  # methods are case-sensitive (§9.1)
    if_match = _present(if_match)
    if if_match is not None:
        if not etag_list_matches(if_match, etag, strong=True):  # §13.1.1: strong comparison
            return 412
    elif (ius := _present(if_unmodified_since)) is not None:
        since = parse_http_date(ius)  # §13.1.4: an invalid date is ignored
        if since is not None and seconds > since:
            return 412
    if_none_match = _present(if_none_match)
    if if_none_match is not None:
        if etag_list_matches(if_none_match, etag, strong=False):  # §13.1.2: weak comparison
            return 304 if get_or_head else 412
    elif get_or_head and (ims := _present(if_modified_since)) is not None:
        since = parse_http_date(ims)  # §13.1.3: an invalid date is ignored
        if since is not None and seconds <= since:
            return 304
    return None


def if_range_matches(if_range: str, etag: str, mtime: float) -> bool:
    """Whether an If-Range value lets the Range be honoured (RFC 9110 §13.1.5).

    An entity-tag must match strongly (a weak one never does); a date must equal the
    Last-Modified second exactly. Anything else, garbage included, is false: the Range is
    then ignored and the whole representation sent, which is always a correct answer.
    """
    value = if_range.strip(_OWS)
    if '"' in value[:3]:  # §13.1.5: how an entity-tag is told from an HTTP-date
        tag = _split_tag(value)
        own_weak, own = _own_tag(etag)
        return tag is not None and not tag[0] and not own_weak and tag[1] == own
    since = parse_http_date(value)
    return since is not None and since == int(mtime)


# --- the API web.py uses today; kept until it switches to http_ranges.plan_response ----------


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, mtime: float) -> bool:
    """RFC 9110 §13.2.2 for a GET: If-None-Match wins over If-Modified-Since."""
    return precondition_status(
        method="GET", etag=etag, mtime=mtime, if_match=None, if_unmodified_since=None,
        if_none_match=if_none_match, if_modified_since=if_modified_since,
    ) == 304


def if_range_holds(if_range: str | None, etag: str, mtime: float) -> bool:
    """Whether a Range may be honoured: If-Range absent (or empty), or matching."""
    value = _present(if_range)
    return value is None or if_range_matches(value, etag, mtime)
