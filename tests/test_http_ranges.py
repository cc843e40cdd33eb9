"""Table tests of the pure HTTP range / conditional logic (talos_twisted.http_ranges)."""

import re
from email.utils import formatdate

import pytest

from talos_twisted.http_conditional import parse_http_date
from talos_twisted.http_ranges import (
    MAX_RANGES, Part, Plan, Unsatisfiable, if_range_holds, not_modified, parse_range, plan_parts_length,
    plan_response,
)

SIZE = 1000
ETAG = '"sha256-ab"'
MTIME = 1_700_000_000.75  # a fraction: dates compare at whole seconds
BOUNDARY = "BOUNDARY"
DATA = bytes(i % 251 for i in range(SIZE))


def date(seconds: float) -> str:
    return formatdate(int(seconds), usegmt=True)


def plan(**kw) -> Plan:
    args = dict(
        method="GET", size=SIZE, etag=ETAG, mtime=MTIME, range_header=None, if_range=None,
        if_none_match=None, if_modified_since=None, boundary=BOUNDARY,
    )
    args.update(kw)
    return plan_response(**args)


def body(p: Plan, data: bytes = DATA) -> bytes:
    """The body a streaming producer would send for p, reading data as the file."""
    return b"".join(part.prefix + data[part.start:part.end] for part in p.parts) + p.trailer


def spans(p: Plan) -> list[tuple[int, int]]:
    return [(part.start, part.end) for part in p.parts]


def check_consistent(p: Plan, data: bytes = DATA) -> None:
    if p.parts:
        assert p.header("Content-Length") == str(len(body(p, data))) == str(plan_parts_length(p))
    else:
        assert p.header("Content-Length") is None and p.trailer == b""


WHOLE = (200, [(0, SIZE)])
IGNORED = WHOLE
UNSATISFIABLE = (416, [])
SIXTEEN = ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(16))

# (Range header, expected status, expected spans [start, end))
RANGE_CASES = [
    (None, *WHOLE),
    ("bytes=0-99", 206, [(0, 100)]),
    ("bytes=100-", 206, [(100, SIZE)]),
    ("bytes=-100", 206, [(900, SIZE)]),
    ("bytes=-5000", 206, [(0, SIZE)]),
    ("bytes=990-2000", 206, [(990, SIZE)]),
    ("bytes=0-0", 206, [(0, 1)]),
    ("bytes=999-", 206, [(999, SIZE)]),
    ("bytes=-1", 206, [(999, SIZE)]),
    ("bytes=0-0,10-19", 206, [(0, 1), (10, 20)]),
    ("bytes=0-1,2000-3000", 206, [(0, 2)]),  # the unsatisfiable one is dropped
    ("bytes=100-199,0-9", 206, [(0, 10), (100, 200)]),  # sorted
    ("bytes=0-9,5-20", 206, [(0, 21)]),  # overlapping: coalesced into a single part
    ("bytes=0-9,10-19", 206, [(0, 20)]),  # adjacent: coalesced
    ("bytes=0-499,500-", 206, [(0, SIZE)]),  # adds up to exactly size: allowed, one part
    ("bytes=0-9,5-20,100-199,150-", 206, [(0, 21), (100, SIZE)]),
    ("bytes=-0,0-1", 206, [(0, 2)]),
    ("BYTES=0-1", 206, [(0, 2)]),  # the unit is case-insensitive
    (" bytes=0-1\t", 206, [(0, 2)]),
    ("bytes= 0-1 ,\t5-6", 206, [(0, 2), (5, 7)]),
    ("bytes=0-1,,", 206, [(0, 2)]),  # empty list elements are allowed
    ("bytes=" + SIXTEEN, 206, [(i * 10, i * 10 + 2) for i in range(16)]),
    # too many ranges, or ranges adding up to more than the image: the image once
    ("bytes=" + SIXTEEN + ",500-501", *WHOLE),
    ("bytes=" + ",".join(["0-"] * 64), *WHOLE),
    ("bytes=0-,0-", *WHOLE),
    ("bytes=0-600,400-", *WHOLE),
    ("bytes=-600,0-600", *WHOLE),
    # syntactically valid, nothing satisfiable
    ("bytes=1000-", *UNSATISFIABLE),
    ("bytes=1000-1000, 2000-", *UNSATISFIABLE),
    ("bytes=-0", *UNSATISFIABLE),
    ("bytes=" + "9" * 5000 + "-", *UNSATISFIABLE),  # > 4300 digits: int() would raise
    # absurd numbers are "beyond the end", never int()-ed
    ("bytes=0-" + "9" * 5000, 206, [(0, SIZE)]),
    ("bytes=-" + "9" * 5000, 206, [(0, SIZE)]),
    ("bytes=" + "0" * 5000 + "5-9", 206, [(5, 10)]),
    ("bytes=" + "9" * 30 + "-" + "9" * 25, *IGNORED),  # last < first, even beyond the clamp
    # invalid: ignored
    ("items=0-1", *IGNORED),
    ("bytes=5-3", *IGNORED),
    ("bytes=a-b", *IGNORED),
    ("bytes=²-", *IGNORED),  # '²'.isdigit() is True
    ("bytes=0-²", *IGNORED),
    ("bytes=-²", *IGNORED),
    ("bytes=١-٢", *IGNORED),  # Arabic-Indic digits
    ("bytes=\xff-", *IGNORED),
    ("\xffbytes=0-1", *IGNORED),
    ("ｂytes=0-1", *IGNORED),
    ("bytes=0-1,\xa05-6", *IGNORED),  # NBSP is not OWS (str.strip() would remove it)
    ("", *IGNORED),
    ("   ", *IGNORED),
    ("bytes", *IGNORED),
    ("bytes=", *IGNORED),
    ("bytes=,, ,", *IGNORED),
    ("bytes=-", *IGNORED),
    ("bytes=--1", *IGNORED),
    ("bytes=0-1-2", *IGNORED),
    ("bytes=0-1=2", *IGNORED),
    ("bytes==0-1", *IGNORED),
    ("bytes 0-1", *IGNORED),
    ("bytes=0 - 1", *IGNORED),
    ("bytes=+1-2", *IGNORED),
    ("bytes=0x10-", *IGNORED),
    ("bytes=1_0-", *IGNORED),  # int() accepts underscores
    ("bytes=0-1\x00", *IGNORED),
    ("bytes=0-1,x", *IGNORED),  # one invalid range-spec voids the header
    ("bytes=5-3,1000-", *IGNORED),  # invalid beats unsatisfiable
]


@pytest.mark.parametrize("header,status,expected", RANGE_CASES)
def test_ranges(header, status, expected):
    p = plan(range_header=header)
    assert (p.status, spans(p)) == (status, expected)
    check_consistent(p)
    if status == 416:
        assert p.headers == (("Content-Range", f"bytes */{SIZE}"),)
    elif status == 200:
        assert p.headers == (("Content-Length", str(SIZE)),) and p.parts == (Part(b"", 0, SIZE),)
    elif len(expected) == 1:
        (start, end), = expected
        assert p.headers == (("Content-Range", f"bytes {start}-{end - 1}/{SIZE}"), ("Content-Length", str(end - start)))
        assert p.parts == (Part(b"", start, end),) and p.trailer == b"" and body(p) == DATA[start:end]
    else:
        assert p.header("Content-Type") == f"multipart/byteranges; boundary={BOUNDARY}"
        assert p.header("Content-Range") is None
        assert parse_byteranges(body(p)) == [(a, b - 1, SIZE, DATA[a:b]) for a, b in expected]


def parse_byteranges(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """A strict multipart/byteranges parser: [(first, last, size, data)]."""
    delimiter = b"--" + BOUNDARY.encode()
    assert data.startswith(delimiter)
    parts, pos = [], 0
    while True:
        pos += len(delimiter)
        if data[pos:] == b"--\r\n":
            return parts
        head_end = data.index(b"\r\n\r\n", pos)
        lines = data[pos:head_end].decode("ascii").split("\r\n")
        assert lines[0] == "" and lines[1] == "Content-Type: application/octet-stream"
        first, last, size = map(int, re.fullmatch(r"Content-Range: bytes (\d+)-(\d+)/(\d+)", lines[2]).groups())
        assert len(lines) == 3
        start = head_end + 4
        parts.append((first, last, size, data[start:start + last - first + 1]))
        pos = start + last - first + 1
        assert data[pos:pos + 2 + len(delimiter)] == b"\r\n" + delimiter
        pos += 2


def test_multipart_exact_layout():
    p = plan(range_header="bytes=10-11,0-1", content_type="application/x-raw")
    head = "Content-Type: application/x-raw\r\nContent-Range: bytes"
    expected = (
        f"--BOUNDARY\r\n{head} 0-1/1000\r\n\r\n".encode() + DATA[0:2]
        + f"\r\n--BOUNDARY\r\n{head} 10-11/1000\r\n\r\n".encode() + DATA[10:12] + b"\r\n--BOUNDARY--\r\n"
    )
    assert body(p) == expected
    assert p.headers == (("Content-Type", "multipart/byteranges; boundary=BOUNDARY"),
                         ("Content-Length", str(len(expected))))
    assert p.parts[0] == Part(expected[:expected.index(DATA[0:2])], 0, 2)


def test_amplification_is_bounded():
    # the attack: 0-,0-,... on a 32 MiB image answered 2 GiB; now any Range is at most the
    # image plus per-part framing
    size = 32 * 1024 * 1024
    for header in ["bytes=" + ",".join(["0-"] * 64), "bytes=" + ",".join(["0-"] * 16),
                   "bytes=" + ",".join(f"{i}-{size}" for i in range(16)),
                   "bytes=" + ",".join(f"{i * 3}-{i * 3 + 1}" for i in range(16))]:
        p = plan(size=size, range_header=header)
        # framing: at most 16 parts of ~100 bytes of headers each
        assert len(p.parts) <= 16 and p.body_length <= size + 16 * 128
        assert sum(part.end - part.start for part in p.parts) <= size


# (request headers, expected status)
old, new, now = date(MTIME - 1), date(MTIME + 60), date(MTIME)
CONDITIONAL_CASES = [
    (dict(if_none_match=ETAG), 304),
    (dict(if_none_match="W/" + ETAG), 304),  # weak comparison
    (dict(if_none_match="*"), 304),
    (dict(if_none_match=f'"x", {ETAG}'), 304),
    (dict(if_none_match=f'"a,b",{ETAG}'), 304),  # a comma inside a tag is not a separator
    (dict(if_none_match='"x"'), 200),
    (dict(if_none_match='"sha256-ab'), 200),  # unterminated
    (dict(if_none_match="sha256-ab"), 200),  # unquoted is not an entity-tag
    (dict(if_none_match="\xff\xfe, *"), 200),
    (dict(if_none_match=""), 200),  # empty: as absent
    (dict(if_none_match='"x"', if_modified_since=new), 200),  # IMS ignored with INM
    (dict(if_none_match=ETAG, method="POST"), 412),
    (dict(if_modified_since=now), 304),
    (dict(if_modified_since=new), 304),
    (dict(if_modified_since=old), 200),
    (dict(if_modified_since=now, method="HEAD"), 304),
    (dict(if_modified_since=now, method="POST"), 200),  # only GET/HEAD
    (dict(if_modified_since="Tuesday, 14-Nov-23 22:13:20 GMT"), 304),  # rfc850-date
    (dict(if_modified_since="Tue Nov 14 22:13:20 2023"), 304),  # asctime-date
    (dict(if_modified_since="garbage"), 200),
    (dict(if_modified_since=" "), 200),
    (dict(if_modified_since="\xff\xff\xff, 14 Nov 2023 22:13:20 GMT"), 200),
    (dict(if_modified_since="Tue, ١٤ Nov 2023 22:13:20 GMT"), 200),
    (dict(if_modified_since="Fri, 31 Dec 99999 23:59:59 GMT"), 200),
    (dict(if_modified_since="Sat, 01 Jan 0000 00:00:00 GMT"), 200),
    (dict(if_modified_since="Wed, 31 Feb 2024 00:00:00 GMT"), 200),
    (dict(if_modified_since="Wed, 14 Nov 2023 25:13:20 GMT"), 200),
    (dict(if_modified_since="9" * 5000), 200),
    (dict(if_modified_since=now + ", " + now), 200),  # more than one member: ignored
    (dict(if_match=ETAG), 200),
    (dict(if_match="*"), 200),
    (dict(if_match='"x", ' + ETAG), 200),
    (dict(if_match='"x"'), 412),
    (dict(if_match="W/" + ETAG), 412),  # strong comparison
    (dict(if_match="\xff"), 412),  # garbage matches nothing
    (dict(if_unmodified_since=old), 412),
    (dict(if_unmodified_since=now), 200),
    (dict(if_unmodified_since="not a date"), 200),  # invalid: ignored
    (dict(if_match=ETAG, if_unmodified_since=old), 200),  # IUS ignored with If-Match
    (dict(if_match='"x"', if_none_match=ETAG), 412),  # If-Match is evaluated first
    (dict(if_none_match=ETAG, range_header="bytes=5000-"), 304),  # preconditions before Range
    (dict(if_unmodified_since=old, range_header="bytes=0-1"), 412),
]


@pytest.mark.parametrize("headers,status", CONDITIONAL_CASES)
def test_conditionals(headers, status):
    p = plan(**headers)
    assert p.status == status
    check_consistent(p)
    if status in (304, 412):
        assert p == Plan(status)
    else:
        assert p.parts == (Part(b"", 0, SIZE),)


# (method, If-Range, Range, expected status)
IF_RANGE_CASES = [
    ("GET", ETAG, "bytes=0-1", 206),
    ("GET", now, "bytes=0-1", 206),
    ("GET", " " + ETAG + " ", "bytes=0-1", 206),
    ("GET", "", "bytes=0-1", 206),  # empty: as absent
    ("GET", "W/" + ETAG, "bytes=0-1", 200),  # weak never matches
    ('GET', '"stale"', "bytes=0-1", 200),
    ("GET", old, "bytes=0-1", 200),
    ("GET", new, "bytes=0-1", 200),  # exact match, not "not later than"
    ("GET", "\xff" * 3, "bytes=0-1", 200),
    ("GET", '"', "bytes=0-1", 200),
    ("GET", ETAG, None, 200),
    ("GET", ETAG, "bytes=5000-", 416),
    ("GET", '"stale"', "bytes=5000-", 200),
    ("HEAD", None, "bytes=0-1", 200),  # §14.2: only GET has range handling
    ("POST", None, "bytes=0-1", 200),
    ("get", None, "bytes=0-1", 200),  # methods are case-sensitive
]


@pytest.mark.parametrize("method,if_range,range_header,status", IF_RANGE_CASES)
def test_if_range_and_methods(method, if_range, range_header, status):
    p = plan(method=method, if_range=if_range, range_header=range_header)
    assert p.status == status
    check_consistent(p)
    if status == 200:
        assert spans(p) == [(0, SIZE)]


@pytest.mark.parametrize("header,status,expected", [
    (None, 200, [(0, 0)]),
    ("bytes=0-", 416, []),
    ("bytes=0-0", 416, []),
    ("bytes=-0", 416, []),
    # satisfiable per §14.1.2 but no Content-Range can describe it: the (empty) whole
    ("bytes=-5", 200, [(0, 0)]),
    ("bytes=0-,-5", 200, [(0, 0)]),
])
def test_empty_representation(header, status, expected):
    p = plan(size=0, range_header=header)
    assert (p.status, spans(p)) == (status, expected)
    check_consistent(p, b"")
    if status == 416:
        assert p.headers == (("Content-Range", "bytes */0"),)


def test_max_ranges_is_a_parameter():
    assert plan(range_header="bytes=0-1,5-6,9-10", max_ranges=2).status == 200
    assert plan(range_header="bytes=0-1,5-6,,", max_ranges=2).status == 206
    assert MAX_RANGES == 16


@pytest.mark.parametrize("bad", [
    dict(size=-1), dict(max_ranges=0), dict(boundary=""), dict(boundary="a" * 71), dict(boundary="a\r\nX: y"),
    dict(boundary="ends in space "), dict(content_type="text/plain\r\nX-Injected: 1"), dict(content_type="é"),
])
def test_caller_errors_are_value_errors(bad):
    with pytest.raises(ValueError):
        plan(**bad)


@pytest.mark.parametrize("value,expected", [
    ("Tue, 14 Nov 2023 22:13:20 GMT", 1_700_000_000),
    ("Tuesday, 14-Nov-23 22:13:20 GMT", 1_700_000_000),
    ("Tue Nov 14 22:13:20 2023", 1_700_000_000),
    ("Sun Nov  6 08:49:37 1994", 784_111_777),
    ("Sunday, 06-Nov-94 08:49:37 GMT", 784_111_777),
    ("Thu, 29 Feb 2024 00:00:00 GMT", 1_709_164_800),
    ("Sat, 31 Dec 2016 23:59:60 GMT", 1_483_228_800),  # leap second
    ("Tue, 14 Nov 2023 22:13:20 UTC", None),
    ("Thu, 29 Feb 2023 00:00:00 GMT", None),
    ("Tue, 14 Xyz 2023 22:13:20 GMT", None),
    ("Tue, 14 Nov 2023 22:60:20 GMT", None),
    ("", None),
])
def test_parse_http_date(value, expected):
    assert parse_http_date(value) == expected


# --- the API web.py uses until it switches to plan_response -------------------------------


@pytest.mark.parametrize("header,expected", [
    (None, None),
    ("bytes=0-99", [(0, 99)]),
    ("bytes=100-", [(100, 999)]),
    ("bytes=-100", [(900, 999)]),
    ("bytes=-5000", [(0, 999)]),
    ("bytes=990-2000", [(990, 999)]),
    ("bytes=0-0,10-19", [(0, 0), (10, 19)]),
    ("bytes=10-19,0-5", [(10, 19), (0, 5)]),  # the order sent, not coalesced (yet)
    ("bytes=0-1,2000-3000", [(0, 1)]),
    ("items=0-1", None),
    ("bytes=5-1", None),
    ("bytes=a-b", None),
    ("bytes=²-", None),
    ("bytes=0-,0-", None),
    ("bytes=" + ",".join(["0-1"] * 17), None),
    ("bytes=0-" + "9" * 5000, [(0, 999)]),
])
def test_parse_range(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=-0", "bytes=" + "9" * 5000 + "-"])
def test_unsatisfiable(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header, 1000)


def test_legacy_conditionals():
    etag, mtime = ETAG, 1_700_000_000.0
    assert not_modified('"x", "sha256-ab"', None, etag, mtime)
    assert not not_modified('"x"', date(mtime + 10), etag, mtime)
    assert not_modified(None, date(mtime), etag, mtime)
    assert not not_modified(None, date(mtime - 1), etag, mtime)
    assert not not_modified(None, "Fri, 31 Dec 99999 23:59:59 GMT", etag, mtime)
    assert not not_modified("\xff", "\xff", etag, mtime)
    assert if_range_holds(None, etag, mtime)
    assert if_range_holds(etag, etag, mtime) and not if_range_holds('"other"', etag, mtime)
    assert if_range_holds(date(mtime), etag, mtime)
    assert not if_range_holds(date(mtime - 5), etag, mtime)
    assert not if_range_holds("Mon, 99 Foo 10000 99:99:99 GMT", etag, mtime)
