#!/usr/bin/env python3
"""bench/bare_web.py: one file served by plain twisted.web and nothing else (B6's ceiling).

    .venv/bin/python bench/bare_web.py --file PATH --port PORT

listens on 127.0.0.1:PORT and answers every path with the file: a leaf `Resource` whose
HEAD is 200 with Content-Length and Accept-Ranges: bytes and no body, whose GET with one
`Range: bytes=a-b` (also `a-` and `-n`) is a 206 with Content-Range and the bytes read
with os.pread, an unsatisfiable range a 416, and whose GET without a usable Range is a 200
streaming the whole file (FileSender, a pull producer). No access log (Site.log does
nothing), no routing, no limits, no metrics, no cache lookup: what is left is twisted.web's
HTTP parsing and response writing on the default reactor, in one process and one thread.

This is the ceiling of the stack the daemon is built on: bench/run's B6 measures it in the
same run as the daemon and nginx (Range GETs with wrk, HEADs with ab -k -i), so the
daemon's req/s can be read against what any twisted.web server can do on this machine, not
only against nginx's. It prints `bare twisted.web listening on PORT` once it listens.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from twisted.internet import reactor
from twisted.protocols.basic import FileSender
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

_RANGE = re.compile(rb"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class OneFile(Resource):
    isLeaf = True

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.length = b"%d" % self.size

    def _range(self, header: bytes | None) -> tuple[int, int] | None:
        """(first, last) of a single satisfiable byte range; None: no usable Range (serve
        the whole file, RFC 9110 14.2); raises ValueError if unsatisfiable."""
        if header is None:
            return None
        m = _RANGE.match(header)
        if m is None or (not m.group(1) and not m.group(2)):
            return None  # several ranges, another unit, bad syntax: ignored
        if not m.group(1):  # bytes=-n: the last n bytes
            n = int(m.group(2))
            if n == 0 or self.size == 0:
                raise ValueError
            return max(0, self.size - n), self.size - 1
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else self.size - 1
        if m.group(2) and last < first:
            return None  # invalid: ignored
        if first >= self.size:
            raise ValueError
        return first, min(last, self.size - 1)

    def render_HEAD(self, request):  # type: ignore[no-untyped-def]
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", self.length)
        request.setHeader(b"Accept-Ranges", b"bytes")
        return b""

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Accept-Ranges", b"bytes")
        try:
            rng = self._range(request.getHeader(b"range"))
        except ValueError:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"Content-Range", b"bytes */" + self.length)
            return b""
        if rng is not None:
            first, last = rng
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (first, last, self.size))
            return os.pread(self.fd, last - first + 1, first)  # render() sets Content-Length
        request.setHeader(b"Content-Length", self.length)
        f = open(self.path, "rb")

        def done(result: object) -> None:
            f.close()
            if not request.finished and not request._disconnected:
                request.finish()

        request.notifyFinish().addErrback(lambda _: None)
        FileSender().beginFileTransfer(f, request).addBoth(done)
        return NOT_DONE_YET


class QuietSite(Site):
    def log(self, request):  # type: ignore[no-untyped-def]
        pass  # no access log


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", required=True, help="the file to serve")
    ap.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = ap.parse_args()
    site = QuietSite(OneFile(args.file))
    port = reactor.listenTCP(args.port, site, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"bare twisted.web listening on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
