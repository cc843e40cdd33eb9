"""Property tests of plan_response: hostile header values never break its invariants."""

from email.utils import formatdate

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talos_twisted.http_ranges import Plan, plan_response

ETAG = '"sha256-ab"'
MTIME = 1_700_000_000.25
BOUNDARY = "3d6b6a416f9b5355f4bcf7f7d2c3e1a0"
# bounded and reproducible: no example database written into the working tree
bounded = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

latin1 = st.binary(max_size=64).map(lambda b: b.decode("latin-1"))  # what the caller decodes
number = st.one_of(st.integers(0, 2**42), st.integers(0, 2000), st.integers(2**62, 2**70)).map(str)
digits = st.one_of(number, st.just(""), st.sampled_from(["²", "١", "0" * 50 + "7", "9" * 5000, "-1", "+1", " 1"]))
range_spec = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", digits, digits),
    st.builds(lambda a: f"-{a}", digits),
    st.sampled_from(["", " ", "-", "\xff", "0-", "-0", "5-3", "a-b", "0-1-2"]),
)
range_header = st.one_of(
    st.none(), st.text(max_size=64), latin1,
    st.builds(lambda unit, specs, sep: unit + "=" + sep.join(specs),
              st.sampled_from(["bytes", "BYTES", "items", "", "bytes ", "\xffbytes"]),
              st.lists(range_spec, max_size=40), st.sampled_from([",", ", ", ",,", " ,\t"])),
)
date_header = st.one_of(
    st.none(), st.text(max_size=40), latin1,
    st.integers(-2**40, 2**40).map(lambda d: formatdate(min(max(MTIME + d, 0), 253402300799), usegmt=True)),
    st.sampled_from(["Fri, 31 Dec 99999 23:59:59 GMT", "Sat, 01 Jan 0000 00:00:00 GMT", "9" * 5000]),
)
etag_header = st.one_of(
    st.none(), st.text(max_size=40), latin1,
    st.sampled_from([ETAG, "W/" + ETAG, "*", '"x"', f'"x", {ETAG}', '"', "W/", 'W/"', ", ,"]),
)
methods = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "get"]), st.text(max_size=8))


def check_invariants(p: Plan, size: int, max_ranges: int) -> None:
    assert p.status in {200, 206, 304, 412, 416}
    if p.status == 200:
        assert [(x.prefix, x.start, x.end) for x in p.parts] == [(b"", 0, size)] and p.trailer == b""
        assert p.headers == (("Content-Length", str(size)),)
        return
    if p.status == 206:
        assert 1 <= len(p.parts) <= max_ranges
        for a, b in zip(p.parts, p.parts[1:]):
            assert a.end < b.start  # sorted, disjoint and not even adjacent (coalesced)
        assert all(0 <= x.start < x.end <= size for x in p.parts)
        assert sum(x.end - x.start for x in p.parts) <= size
        length = sum(len(x.prefix) + x.end - x.start for x in p.parts) + len(p.trailer)
        assert p.header("Content-Length") == str(length) == str(p.body_length)
        assert (len(p.parts) == 1) == (p.header("Content-Range") is not None) == (p.trailer == b"")
        return
    assert p.parts == () and p.trailer == b"" and p.header("Content-Length") is None
    assert p.headers == ((("Content-Range", f"bytes */{size}"),) if p.status == 416 else ())


@bounded
@given(
    method=methods, size=st.one_of(st.integers(0, 2**40), st.integers(0, 64)),
    range_header=range_header, if_range=st.one_of(etag_header, date_header),
    if_none_match=etag_header, if_modified_since=date_header,
    if_match=etag_header, if_unmodified_since=date_header, max_ranges=st.integers(1, 32),
)
def test_never_raises_and_keeps_invariants(method, size, range_header, if_range, if_none_match,
                                           if_modified_since, if_match, if_unmodified_since, max_ranges):
    p = plan_response(
        method=method, size=size, etag=ETAG, mtime=MTIME, range_header=range_header, if_range=if_range,
        if_none_match=if_none_match, if_modified_since=if_modified_since, if_match=if_match,
        if_unmodified_since=if_unmodified_since, max_ranges=max_ranges, boundary=BOUNDARY,
    )
    check_invariants(p, size, max_ranges)


def plan_get(size: int, header: str, max_ranges: int = 16) -> Plan:
    return plan_response(method="GET", size=size, etag=ETAG, mtime=MTIME, range_header=header, if_range=None,
                         if_none_match=None, if_modified_since=None, max_ranges=max_ranges, boundary=BOUNDARY)


def reference(size: int, first: int | None, last: int | None) -> tuple[int, range | None]:
    """RFC 9110 §14.1.2 for one valid range-spec, via Python's own slice clamping."""
    whole = range(size)
    if first is None:  # suffix-range "-last"
        if last and not size:
            return 200, None  # our documented choice: satisfiable, but no Content-Range for it
        selected = whole[-last:] if last else range(0)
    elif last is not None and last < first:
        return 200, None  # invalid: ignored
    else:
        selected = whole[first:] if last is None else whole[first:last + 1]
    return (206, selected) if len(selected) else (416, None)


positions = st.one_of(st.none(), st.integers(0, 2**41), st.integers(0, 100))


@bounded
@given(size=st.one_of(st.integers(0, 2**40), st.integers(0, 100)), first=positions, last=positions)
def test_single_range_is_the_rfc_answer(size, first, last):
    if first is None and last is None:
        last = 0
    p = plan_get(size, f"bytes={'' if first is None else first}-{'' if last is None else last}")
    status, selected = reference(size, first, last)
    assert p.status == status
    if status == 206:
        assert [(x.start, x.end) for x in p.parts] == [(selected.start, selected.stop)]
        assert p.headers == (("Content-Range", f"bytes {selected.start}-{selected.stop - 1}/{size}"),
                             ("Content-Length", str(len(selected))))
    elif status == 200:
        assert [(x.start, x.end) for x in p.parts] == [(0, size)]


@bounded
@given(size=st.integers(0, 120), specs=st.lists(st.tuples(positions, positions), min_size=1, max_size=20),
       max_ranges=st.integers(1, 20))
def test_multiple_ranges_select_exactly_the_requested_bytes(size, specs, max_ranges):
    """Against a byte-set reference: coalescing loses and adds nothing."""
    specs = [(a, b) for a, b in specs if not (a is not None and b is not None and b < a)]  # valid only
    specs = [(a, 0 if (a, b) == (None, None) else b) for a, b in specs]
    if not specs:
        return
    header = "bytes=" + ",".join(f"{'' if a is None else a}-{'' if b is None else b}" for a, b in specs)
    p = plan_get(size, header, max_ranges)
    selections = [reference(size, a, b) for a, b in specs]
    wanted = [s for status, s in selections if status == 206]
    if len(specs) > max_ranges or sum(map(len, wanted)) > size or any(st_ == 200 for st_, _ in selections):
        assert p.status == 200 and [(x.start, x.end) for x in p.parts] == [(0, size)]
        return
    if not wanted:
        assert p.status == 416
        return
    assert p.status == 206
    assert {i for x in p.parts for i in range(x.start, x.end)} == {i for s in wanted for i in s}
    data = bytes(i % 256 for i in range(size))
    body = b"".join(x.prefix + data[x.start:x.end] for x in p.parts) + p.trailer
    assert p.header("Content-Length") == str(len(body))
    if len(p.parts) > 1:
        assert body.startswith(f"--{BOUNDARY}\r\n".encode()) and body.endswith(f"\r\n--{BOUNDARY}--\r\n".encode())
        assert body.count(f"--{BOUNDARY}".encode()) == len(p.parts) + 1
