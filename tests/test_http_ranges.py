import pytest

from talos_twisted.http_ranges import Unsatisfiable, if_range_holds, not_modified, parse_range
from twisted.web.http import datetimeToString


@pytest.mark.parametrize("header,expected", [
    (None, None),
    ("bytes=0-99", [(0, 99)]),
    ("bytes=100-", [(100, 999)]),
    ("bytes=-100", [(900, 999)]),
    ("bytes=-5000", [(0, 999)]),
    ("bytes=990-2000", [(990, 999)]),
    ("bytes=0-0,10-19", [(0, 0), (10, 19)]),
    ("bytes=0-1,2000-3000", [(0, 1)]),
    ("items=0-1", None),
    ("bytes=5-1", None),
    ("bytes=a-b", None),
    ("bytes=" + ",".join(["0-1"] * 65), None),
])
def test_parse_range(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=-0"])
def test_unsatisfiable(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header, 1000)


def test_conditionals():
    etag, mtime = '"sha256-ab"', 1_700_000_000.0
    assert not_modified('"x", "sha256-ab"', None, etag, mtime)
    assert not not_modified('"x"', datetimeToString(int(mtime) + 10).decode(), etag, mtime)
    assert not_modified(None, datetimeToString(int(mtime)).decode(), etag, mtime)
    assert not not_modified(None, datetimeToString(int(mtime) - 1).decode(), etag, mtime)
    assert if_range_holds(None, etag, mtime)
    assert if_range_holds(etag, etag, mtime) and not if_range_holds('"other"', etag, mtime)
    assert if_range_holds(datetimeToString(int(mtime)).decode(), etag, mtime)
    assert not if_range_holds(datetimeToString(int(mtime) - 5).decode(), etag, mtime)
