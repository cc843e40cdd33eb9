"""A faithful fake of the Talos Image Factory, for tests and offline demos.

It follows ``docs/factory-api.md`` (routes, status codes, one-line plain-text errors,
``X-Request-ID``, synchronous builds, optional 302 to an object-store-like ``/blob``), serves
deterministic pseudo disk images, and has knobs to inject the faults a real factory and
network produce: error statuses, slow builds, slow links, connections cut, closed early or
stalled mid-body, corrupted bytes, non-reproducible rebuilds.

Use it in-process (``Site(FakeFactory().resource())`` on ``tcp:0:interface=127.0.0.1``) or
stand-alone with ``twistd -n talos-fake-factory --listen tcp:9080``.

Images: ``raw_size()`` bytes, mostly zeros, with a 64 KiB "boot" region at offset 0 and six
data regions spread over the image (together about ``data_fraction`` of it), always ending
in a run of zeros. The data derive from sha256(schematic, version, platform, arch,
generation). Compressed bodies are multi-stream xz (CRC64) and multi-frame zstd (frame
checksums), one stream/frame per ``stream_size`` raw bytes, and single-member gzip; they
are computed on first use, chunk by chunk, and cached in memory.
"""

from __future__ import annotations

import collections
import hashlib
import json
import lzma
import random
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, TypeAlias, cast
from urllib.parse import unquote

import zstandard
from twisted.application import service, strports
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import RESPONSES
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from talos_twisted.schematic import SchematicError, parse_schematic
from talos_twisted.versions import InvalidVersion, Version

__all__ = ["DEFAULT_VERSIONS", "FakeFactory", "Options", "makeService"]

KiB = 1024
MiB = 1024 * KiB

DEFAULT_VERSIONS: list[str] = [
    "v1.6.7",
    "v1.7.7",
    "v1.9.6",
    "v1.10.6",
    "v1.10.7",
    "v1.11.0",
    "v1.11.1",
    "v1.11.2",
    "v1.12.0-alpha.1",
    "v1.12.0-beta.0",
]

ROUTES = ("versions", "extensions", "overlays", "schematics", "image", "blob")
COMPRESSIONS = ("xz", "zst", "gz", "none")

_V1_7 = Version(1, 7, 0)
_V1_9 = Version(1, 9, 0)
_V1_11 = Version(1, 11, 0)


# --------------------------------------------------------------------------------------
# Catalogs


@dataclass(frozen=True)
class _Ext:
    name: str
    author: str
    description: str
    tag: str  # "{talos}" is replaced by the Talos version (kernel modules are built per release)
    since: Version | None = None  # first Talos version shipping it
    until: Version | None = None  # first Talos version no longer shipping it


# Upstream order, deliberately not sorted.
_EXTENSIONS = (
    _Ext("siderolabs/iscsi-tools", "Sidero Labs", "This system extension provides iscsi-tools.\n", "v0.2.0"),
    _Ext(
        "siderolabs/qemu-guest-agent",
        "Markus Reiter",
        "This system extension provides the QEMU Guest Agent service.\n",
        "10.0.2",
    ),
    _Ext(
        "siderolabs/nvidia-open-gpu-kernel-modules-lts",
        "Sidero Labs",
        "This system extension provides the NVIDIA open GPU kernel modules (LTS branch) built "
        "against a specific Talos version.\n",
        "570.172.08-{talos}",
    ),
    _Ext("siderolabs/util-linux-tools", "Sidero Labs", "This system extension provides util-linux tools.\n", "2.41.1"),
    _Ext("siderolabs/amd-ucode", "Sidero Labs", "This system extension provides AMD microcode binaries.\n", "20250917"),
    _Ext("siderolabs/gvisor", "Sidero Labs", "This system extension provides gVisor.\n", "20250820.0"),
    _Ext(
        "siderolabs/intel-ucode",
        "Sidero Labs",
        "This system extension provides Intel microcode binaries.\n",
        "20250812",
    ),
    _Ext(
        "siderolabs/drbd",
        "Sidero Labs",
        "This system extension provides DRBD built against a specific Talos version.\n",
        "9.2.14-{talos}",
    ),
    _Ext(
        "siderolabs/gasket-driver",
        "Sidero Labs",
        "This system extension provides the gasket driver for Coral TPUs built against a specific "
        "Talos version.\n",
        "97aeba5-{talos}",
    ),
    _Ext(
        "siderolabs/i915-ucode",
        "Sidero Labs",
        "This system extension provides Intel i915 firmware binaries.\n",
        "20240312",
        until=_V1_9,
    ),
    _Ext(
        "siderolabs/i915",
        "Sidero Labs",
        "This system extension provides the Intel i915 driver and firmware built against a "
        "specific Talos version.\n",
        "20250917-{talos}",
        since=_V1_9,
    ),
    _Ext("siderolabs/tailscale", "Sidero Labs", "This system extension provides Tailscale.\n", "1.88.3"),
    _Ext(
        "siderolabs/nvidia-container-toolkit-lts",
        "Sidero Labs",
        "This system extension provides the NVIDIA container toolkit (LTS branch).\n",
        "570.172.08-v1.17.8",
    ),
    _Ext(
        "siderolabs/zfs",
        "Sidero Labs",
        "This system extension provides ZFS built against a specific Talos version.\n",
        "2.3.4-{talos}",
    ),
    _Ext(
        "siderolabs/newt",
        "Sidero Labs",
        "This system extension provides Newt, the Pangolin tunnel client.\n",
        "1.4.2",
        since=_V1_11,
    ),
)

# (name, image, tag, digest or None = derived); overlays exist from Talos v1.7 on.
_OVERLAYS = (
    (
        "rpi_generic",
        "siderolabs/sbc-raspberrypi",
        "v0.1.0",
        "sha256:849ace01b9af514d817b05a9c5963a35202e09a4807d12f8a3ea83657c76c863",
    ),
    ("rock4cplus", "siderolabs/sbc-rockchip", "v0.1.0", None),
    ("jetson_nano", "siderolabs/sbc-jetson", "v0.1.0", None),
)


def _digest(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def extensions_catalog(version: Version) -> list[dict[str, str]]:
    """The official extensions of a Talos version, as ``/version/{v}/extensions/official``."""
    out = []
    for e in _EXTENSIONS:
        if e.since is not None and version < e.since:
            continue
        if e.until is not None and version >= e.until:
            continue
        ref = f"ghcr.io/{e.name}:{e.tag.format(talos=version)}"
        out.append(
            {"name": e.name, "ref": ref, "digest": _digest(ref), "author": e.author, "description": e.description}
        )
    return out


def overlays_catalog(version: Version) -> list[dict[str, str]]:
    """The official overlays of a Talos version (none before v1.7)."""
    if version < _V1_7:
        return []
    out = []
    for name, image, tag, digest in _OVERLAYS:
        ref = f"ghcr.io/{image}:{tag}"
        out.append({"name": name, "image": image, "ref": ref, "digest": digest or _digest(ref)})
    return out


# --------------------------------------------------------------------------------------
# Deterministic pseudo disk images (pure, no reactor)

_BLOCK = 64 * KiB
_GEN_CHUNK = 1 * MiB
_ARCH_ALIASES = {"amd64": "amd64", "x86_64": "amd64", "i386": "amd64", "arm64": "arm64"}
_PATH_RE = re.compile(
    r"^(?P<platform>[a-z0-9][a-z0-9_-]*)-(?P<arch>amd64|x86_64|i386|arm64)\.raw(?:\.(?P<comp>xz|zst|gz))?$"
)


@lru_cache(maxsize=256)
def _block(seed: bytes, index: int) -> bytes:
    """64 KiB of data for block ``index``: 16 KiB incompressible (squashfs-like), then
    4 KiB pieces of 512 pseudo-random bytes repeated (compressible, like filesystem data)."""
    r = random.Random(seed + index.to_bytes(8, "big"))
    head = r.randbytes(16 * KiB)
    return head + b"".join(r.randbytes(512) * 8 for _ in range(12))


def _layout(size: int, fraction: float) -> tuple[tuple[int, int], ...]:
    """Data regions [start, end) of an image: boot region at 0, six regions spread over the
    first 15/16 of the image; the rest is zeros (so images always end in zeros)."""
    if size <= 0:
        return ()
    boot = min(64 * KiB, size)
    regions = [(0, boot)]
    n = 6
    usable_end = size - size // 16
    budget = int(size * fraction) - boot
    if budget >= n * 4 * KiB and usable_end > boot:
        span = (usable_end - boot) // n
        per = min(budget // n, span // 2) // (4 * KiB) * (4 * KiB)
        if per > 0:
            for i in range(n):
                start = (boot + i * span + span // 4) // (4 * KiB) * (4 * KiB)
                regions.append((start, start + per))
    return tuple(regions)


@dataclass(frozen=True)
class ImageSpec:
    """One pseudo image: its seed, size and data regions; reads any byte range."""

    seed: bytes
    size: int
    regions: tuple[tuple[int, int], ...]

    def has_data(self, start: int, end: int) -> bool:
        return any(rs < end and start < re_ for rs, re_ in self.regions)

    def read(self, start: int, length: int) -> bytes:
        end = min(self.size, start + length)
        if end <= start:
            return b""
        buf = bytearray(end - start)
        for rs, re_ in self.regions:
            lo, hi = max(start, rs), min(end, re_)
            if lo < hi:
                buf[lo - start : hi - start] = self._data(lo, hi)
        return bytes(buf)

    def _data(self, lo: int, hi: int) -> bytes:
        parts = []
        for k in range(lo // _BLOCK, (hi - 1) // _BLOCK + 1):
            b = _block(self.seed, k)
            base = k * _BLOCK
            parts.append(b[max(lo, base) - base : min(hi, base + _BLOCK) - base])
        return b"".join(parts)

    def chunks(self, start: int = 0, end: int | None = None, chunk: int = _GEN_CHUNK) -> Iterator[bytes]:
        end = self.size if end is None else min(end, self.size)
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            yield self.read(pos, n)
            pos += n


_zero_streams: dict[tuple[str, int], bytes] = {}


def _compress_stream(spec: ImageSpec, compression: str, start: int, end: int) -> bytes:
    if not spec.has_data(start, end) and (compression, end - start) in _zero_streams:
        return _zero_streams[(compression, end - start)]
    out = []
    if compression == "xz":
        cx = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=0)
        for c in spec.chunks(start, end):
            out.append(cx.compress(c))
        out.append(cx.flush())
    else:
        cz = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
        co = cz.compressobj(size=end - start)
        for c in spec.chunks(start, end):
            out.append(co.compress(c))
        out.append(co.flush())
    data = b"".join(out)
    if not spec.has_data(start, end):
        _zero_streams[(compression, end - start)] = data
    return data


def compress_image(spec: ImageSpec, compression: str, stream_size: int) -> bytes:
    """The body the factory serves for ``compression`` ("xz", "zst", "gz")."""
    if compression == "gz":
        co = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip wrapper, mtime 0: deterministic
        parts = [co.compress(c) for c in spec.chunks()]
        parts.append(co.flush())
        return b"".join(parts)
    if compression not in ("xz", "zst"):
        raise ValueError(f"unknown compression {compression!r}")
    streams = []
    for start in range(0, max(spec.size, 1), stream_size):
        streams.append(_compress_stream(spec, compression, start, min(spec.size, start + stream_size)))
    return b"".join(streams)


# --------------------------------------------------------------------------------------
# Bodies and the producer that sends them


class _Body:
    size: int

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


class _BytesBody(_Body):
    def __init__(self, data: bytes):
        self._data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


class _RawBody(_Body):
    def __init__(self, spec: ImageSpec):
        self._spec = spec
        self.size = spec.size

    def read(self, offset: int, length: int) -> bytes:
        return self._spec.read(offset, length)


@dataclass(frozen=True)
class _Fault:
    kind: str  # "cut" | "short" | "stall"
    after: int


def _unsent(transport: Any) -> int:
    """Bytes a Twisted TCP transport still holds in user space (0 for other transports)."""
    buf = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    try:
        return max(0, len(buf) - offset) + int(getattr(transport, "_tempDataLen", 0))
    except TypeError:
        return 0


@implementer(IPushProducer)
class _BodyProducer:
    """Writes body bytes [start, end) to a request, 64 KiB at a time, honouring the
    transport's pause/resume, the fake's rate limit, and at most one fault."""

    CHUNK = 64 * KiB
    TICK = 0.1

    def __init__(
        self,
        fake: FakeFactory,
        request: server.Request,
        body: _Body,
        start: int,
        end: int,
        fault: _Fault | None,
        corrupt_at: int | None,
    ):
        self._fake = fake
        self._request = request
        self._body = body
        self._pos = start
        self._end = end
        self._limit = end if fault is None else min(end, start + fault.after)
        self._fault = fault
        self._corrupt_at = corrupt_at
        self._paused = False
        self._done = False
        self._lost = False
        self._pumping = False
        self._budget = 0
        self._timer: IDelayedCall | None = None
        self.sent = 0

    def start(self) -> None:
        self._fake._active.add(self)
        self._request.notifyFinish().addBoth(self._finished)
        self._request.registerProducer(self, True)
        if self._fake.rate_limit > 0:
            self._budget = max(1, self._fake.rate_limit // 10)
        self._pump()

    # IPushProducer
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._done or not self._paused:
            return
        self._paused = False
        if self._timer is None:
            self._pump()

    def stopProducing(self) -> None:
        self._stop()

    # internals
    def _finished(self, result: object) -> None:
        if isinstance(result, Failure):
            self._lost = True
        self._stop()
        self._fake._active.discard(self)

    def _stop(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        self._budget = max(1, self._fake.rate_limit // 10)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._paused and not self._done:
                if self._pos >= self._limit:
                    self._at_limit()
                    return
                n = min(self.CHUNK, self._limit - self._pos)
                rate = self._fake.rate_limit
                if rate > 0:
                    if self._budget <= 0:
                        self._timer = self._fake._clock.callLater(self.TICK, self._tick)
                        return
                    n = min(n, self._budget)
                    self._budget -= n
                data = self._body.read(self._pos, n)
                if self._corrupt_at is not None and self._pos <= self._corrupt_at < self._pos + n:
                    flipped = bytearray(data)
                    flipped[self._corrupt_at - self._pos] ^= 0xFF
                    data = bytes(flipped)
                self._pos += n
                self.sent += n
                self._request.write(data)
        finally:
            self._pumping = False

    def _unregister(self) -> None:
        try:
            self._request.unregisterProducer()
        except Exception:  # the channel is gone already
            pass

    def _at_limit(self) -> None:
        self._stop()
        self._unregister()
        fault = self._fault
        if fault is None:
            self._request.finish()
            return
        if not self._request.startedWriting:
            self._request.write(b"")  # the headers go out even when the fault is at byte 0
        transport = self._request.transport
        if fault.kind == "short":
            if transport is not None:
                transport.loseConnection()
        elif fault.kind == "cut":
            self._abort_when_flushed(0)
        # "stall": send nothing more; the connection stays open until the client gives up
        # (or FakeFactory.abort_all()).

    def _abort_when_flushed(self, waited: int) -> None:
        # Let what was written reach the socket first, so the client gets the bytes up to
        # the cut (it then sees a reset), unless the client does not read at all.
        transport = self._request.transport
        if self._lost or transport is None:
            return
        if _unsent(transport) and waited < 200:
            self._timer = self._fake._clock.callLater(0.01, self._abort_when_flushed, waited + 1)
            return
        self._timer = None
        self.abort()

    def abort(self) -> None:
        self._stop()
        transport = self._request.transport
        if self._lost or transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()


# --------------------------------------------------------------------------------------
# The fake


def _error(request: server.Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return (message + "\n").encode("utf-8")


def _content_type(compression: str) -> bytes:
    return b"application/x-xz" if compression == "xz" else b"application/octet-stream"


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range → (start, end exclusive); "unsatisfiable"; None = serve all."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # object stores ignore what they do not support
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return (max(0, size - n), size)
        start = int(first)
        end = size if last == "" else min(size, int(last) + 1)
    except ValueError:
        return None
    if start < 0 or (last != "" and int(last) < start):
        return None
    if start >= size:
        return "unsatisfiable"
    return (start, end)


_INTERESTING = ("range", "if-range", "x-request-id", "user-agent", "content-type", "accept-encoding")

# an image: (schematic ID, version, platform, arch, generation, raw size, data fraction)
_ImageKey: TypeAlias = tuple[str, str, str, str, int, int, float]
# a compressed body of an image: + (compression, raw bytes per stream)
_BodyKey: TypeAlias = tuple[str, str, str, str, int, int, float, str, int]


@dataclass(frozen=True)
class _Blob:
    key: _ImageKey
    compression: str


class FakeFactory:
    """A fake Talos Image Factory. Knobs are plain attributes; change them at any time.

    - ``build_delay``: seconds between a valid GET/HEAD ``/image`` request and its answer
      (200, 302 or HEAD headers); validation errors answer at once. Uses ``clock``; cancelled
      if the client goes away.
    - ``rate_limit``: bytes/s for ``/image`` and ``/blob`` bodies (``rate_limit // 10``
      bytes every 0.1 s on ``clock``); 0 = as fast as the transport takes them. Read live.
    - ``redirect``: GET ``/image`` answers 302 to ``http://<Host>/blob/<token>``; the blob
      keeps serving the bytes of the generation current at redirect time. HEAD is never
      redirected.
    - ``blob_ranges``: ``/blob`` honours one ``Range`` (206, ``Content-Range``, 416) and
      sends ``Accept-Ranges: bytes``; otherwise ``Range`` is ignored. ``/image`` never does.
    - ``generation``: part of the image seed; bump it to simulate a non-reproducible rebuild.
    - ``reproducible``: when False, every image GET after the first bumps ``generation``.
    - ``stream_size``: raw bytes per xz stream / zstd frame (default: size/4, clamped to
      256 KiB..32 MiB).
    - ``fail_next(n, status, route)``: the next ``n`` requests of ``route`` answer ``status``
      with a plain-text line, before any validation or build delay ("image" counts GET and
      HEAD, "schematics" POST and GET, "blob" GET and HEAD).
    - ``cut_next`` / ``short_next`` / ``stall_next`` (one FIFO queue) and ``corrupt_next``
      (its own queue) apply to the next GET bodies of ``/image`` (200) or ``/blob`` (200/206),
      never to HEAD or 302. ``after_bytes`` counts body bytes of that response; headers always
      go out with the full Content-Length. cut: once the bytes have left the transport's
      buffer, ``abortConnection()`` (RST); short: ``loseConnection()`` (FIN); stall: nothing
      more is sent, the connection stays open until the client leaves or ``abort_all()``.
      corrupt: XOR 0xFF of the byte at ``offset`` of the whole body (default ``size // 2``),
      if the response covers it.
    """

    log = Logger()

    build_delay: float = 0.0
    rate_limit: int = 0
    redirect: bool = False
    blob_ranges: bool = True
    generation: int = 0
    reproducible: bool = True  # False: every image GET after the first is a new build (new generation)
    stream_size: int | None = None  # raw bytes per xz stream / zstd frame; None = auto

    def __init__(
        self,
        clock: IReactorTime | None = None,
        versions: list[str] = DEFAULT_VERSIONS,
        image_size: int = 8 * MiB,
        data_fraction: float = 0.03,
    ):
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self._clock: IReactorTime = clock
        self.versions = list(versions)
        self.image_size = image_size
        self.data_fraction = data_fraction
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.schematics: dict[str, str] = {}
        self._failures: dict[str, collections.deque[int]] = {r: collections.deque() for r in ROUTES}
        self._faults: collections.deque[_Fault] = collections.deque()
        self._corrupts: collections.deque[int | None] = collections.deque()
        self._bodies: dict[_BodyKey, bytes] = {}
        self._sha256: dict[_ImageKey, str] = {}
        self._blobs: dict[str, _Blob] = {}
        self._active: set[_BodyProducer] = set()
        self._pending: dict[IDelayedCall, server.Request] = {}

    # -- versions ----------------------------------------------------------------------
    @property
    def versions(self) -> list[str]:
        return self._versions

    @versions.setter
    def versions(self, value: list[str]) -> None:
        parsed = sorted(Version.parse(v) for v in value)
        self._versions = [str(v) for v in parsed]

    # -- knobs ---------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 500, route: str = "image") -> None:
        """The next ``n`` requests of ``route`` answer ``status`` with a one-line error."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {route!r}")
        self._failures[route].extend([status] * n)

    def cut_next(self, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` bodies: abort the connection (RST) after ``after_bytes`` bytes."""
        self._faults.extend([_Fault("cut", after_bytes)] * times)

    def short_next(self, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` bodies: close the connection cleanly after ``after_bytes`` bytes."""
        self._faults.extend([_Fault("short", after_bytes)] * times)

    def stall_next(self, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` bodies: stop sending after ``after_bytes`` bytes, stay connected."""
        self._faults.extend([_Fault("stall", after_bytes)] * times)

    def corrupt_next(self, times: int = 1, offset: int | None = None) -> None:
        """The next ``times`` bodies: flip one byte (at ``offset`` of the whole body, default
        the middle of it)."""
        self._corrupts.extend([offset] * times)

    def abort_all(self) -> None:
        """Abort every body in flight (e.g. stalled ones) and every build still waiting."""
        for call, request in list(self._pending.items()):
            if call.active():
                call.cancel()
            if request.transport is not None and not getattr(request, "_disconnected", False):
                cast(ITCPTransport, request.transport).abortConnection()  # a socket transport: it can abort
        self._pending.clear()
        for p in list(self._active):
            p.abort()

    def add_schematic(self, text: str | bytes) -> str:
        """Store a schematic as POST /schematics would; returns its ID."""
        s = parse_schematic(text)
        self.schematics[s.id] = s.to_yaml()
        return s.id

    # -- ground truth --------------------------------------------------------------------
    def raw_size(self) -> int:
        return self.image_size

    def _key(self, schematic_id: str, version: str, platform: str, arch: str) -> _ImageKey:
        v = str(Version.parse(version))
        a = _ARCH_ALIASES.get(arch, arch)
        return (schematic_id, v, platform, a, self.generation, self.image_size, self.data_fraction)

    def _spec(self, key: _ImageKey) -> ImageSpec:
        schematic_id, v, platform, arch, generation, size, fraction = key
        seed = hashlib.sha256(f"{schematic_id}\0{v}\0{platform}\0{arch}\0{generation}".encode()).digest()
        return ImageSpec(seed, size, _layout(size, fraction))

    def raw_image(self, schematic_id: str, version: str, platform: str, arch: str) -> bytes:
        spec = self._spec(self._key(schematic_id, version, platform, arch))
        return spec.read(0, spec.size)

    def raw_sha256(self, schematic_id: str, version: str, platform: str, arch: str) -> str:
        key = self._key(schematic_id, version, platform, arch)
        if key not in self._sha256:
            h = hashlib.sha256()
            for c in self._spec(key).chunks():
                h.update(c)
            self._sha256[key] = h.hexdigest()
        return self._sha256[key]

    def compressed_image(self, schematic_id: str, version: str, platform: str, arch: str, compression: str) -> bytes:
        key = self._key(schematic_id, version, platform, arch)
        if compression == "none":
            spec = self._spec(key)
            return spec.read(0, spec.size)
        return self._compressed(key, compression)

    def _stream_size(self) -> int:
        if self.stream_size:
            return self.stream_size
        return max(256 * KiB, min(32 * MiB, self.image_size // 4 // (64 * KiB) * (64 * KiB)))

    def _compressed(self, key: _ImageKey, compression: str) -> bytes:
        ckey = key + (compression, self._stream_size())
        body = self._bodies.get(ckey)
        if body is None:
            t0 = time.monotonic()
            body = compress_image(self._spec(key), compression, self._stream_size())
            self._bodies[ckey] = body
            seconds = time.monotonic() - t0
            if seconds > 0.5:
                self.log.info(
                    "built {compression} image of {raw} raw bytes ({size} compressed) in {seconds:.1f}s",
                    compression=compression,
                    raw=key[5],
                    size=len(body),
                    seconds=seconds,
                )
        return body

    def _body(self, key: _ImageKey, compression: str) -> _Body:
        if compression == "none":
            return _RawBody(self._spec(key))
        return _BytesBody(self._compressed(key, compression))

    # -- HTTP ----------------------------------------------------------------------------
    def resource(self) -> IResource:
        return _Root(self)

    def _take_failure(self, route: str) -> int | None:
        q = self._failures[route]
        return q.popleft() if q else None

    def _injected(self, request: server.Request, status: int) -> bytes:
        phrase = RESPONSES.get(status, b"error").decode("ascii", "replace").lower()
        return _error(request, status, f"{phrase} (injected by the fake factory)")

    def _render(self, request: server.Request) -> bytes | int:
        rid = request.getHeader(b"x-request-id") or uuid.uuid4().hex.encode()
        request.setHeader(b"X-Request-ID", rid)
        method = request.method.decode("ascii", "replace")
        raw_path = request.path.decode("latin-1")
        headers = {}
        for name in _INTERESTING:
            value = request.getHeader(name.encode())
            if value is not None:
                headers[name] = value.decode("latin-1")
        self.requests.append((method, raw_path, headers))
        segs = [unquote(s) for s in raw_path.split("/")[1:]]
        head = method == "HEAD"

        def allow(*methods: str) -> bool:
            return method in methods

        n = len(segs)
        if segs == ["versions"]:
            if not allow("GET"):
                return self._not_allowed(request, "GET")
            return self._get_versions(request)
        if n == 4 and segs[0] == "version" and segs[3] == "official" and segs[2] in ("extensions", "overlays"):
            if not allow("GET"):
                return self._not_allowed(request, "GET")
            return self._get_catalog(request, segs[1], segs[2])
        if segs == ["schematics"]:
            if not allow("POST"):
                return self._not_allowed(request, "POST")
            return self._post_schematic(request)
        if n == 2 and segs[0] == "schematics" and segs[1]:
            if not allow("GET"):
                return self._not_allowed(request, "GET")
            return self._get_schematic(request, segs[1])
        if n == 4 and segs[0] == "image" and all(segs[1:]):
            if not allow("GET", "HEAD"):
                return self._not_allowed(request, "GET, HEAD")
            return self._get_image(request, segs[1], segs[2], segs[3], head)
        if n == 2 and segs[0] == "blob" and segs[1]:
            if not allow("GET", "HEAD"):
                return self._not_allowed(request, "GET, HEAD")
            return self._get_blob(request, segs[1], head)
        return _error(request, 404, "404 page not found")

    def _not_allowed(self, request: server.Request, allow: str) -> bytes:
        request.setHeader(b"Allow", allow.encode())
        return _error(request, 405, "Method Not Allowed")

    def _json(
        self, request: server.Request, obj: object, status: int = 200, content_type: bytes = b"application/json"
    ) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type)
        return (json.dumps(obj, separators=(",", ":")) + "\n").encode()

    def _get_versions(self, request: server.Request) -> bytes:
        self.counts["versions"] += 1
        status = self._take_failure("versions")
        if status is not None:
            return self._injected(request, status)
        # Upstream sets no Content-Type and Go sniffs text/plain.
        return self._json(request, self.versions, content_type=b"text/plain; charset=utf-8")

    def _version(self, request: server.Request, text: str) -> Version | bytes:
        """The known version named by ``text`` (leading v optional), or an error body."""
        try:
            v = Version.parse(text if text.startswith("v") else "v" + text)
        except InvalidVersion:
            return _error(request, 500, f"error parsing version {text!r}: not a valid semantic version")
        if str(v) not in self._versions:
            return _error(request, 404, f"version {str(v)[1:]} is not available")
        return v

    def _get_catalog(self, request: server.Request, vtext: str, kind: str) -> bytes:
        self.counts[kind] += 1
        status = self._take_failure(kind)
        if status is not None:
            return self._injected(request, status)
        v = self._version(request, vtext)
        if isinstance(v, bytes):
            return v
        return self._json(request, extensions_catalog(v) if kind == "extensions" else overlays_catalog(v))

    def _post_schematic(self, request: server.Request) -> bytes:
        self.counts["schematics_post"] += 1
        status = self._take_failure("schematics")
        if status is not None:
            return self._injected(request, status)
        body = request.content.read() if request.content is not None else b""
        try:
            s = parse_schematic(body)
        except SchematicError as e:
            return _error(request, 400, str(e).splitlines()[0] if str(e) else "invalid schematic")
        text = s.to_yaml()
        self.schematics[s.id] = text
        return self._json(request, {"id": s.id, "schematic": text}, status=201)

    def _get_schematic(self, request: server.Request, sid: str) -> bytes:
        self.counts["schematics_get"] += 1
        status = self._take_failure("schematics")
        if status is not None:
            return self._injected(request, status)
        text = self.schematics.get(sid)
        if text is None:
            return _error(request, 404, "schematic not found")
        request.setHeader(b"Content-Type", b"application/yaml")
        return text.encode()

    def _get_image(self, request: server.Request, sid: str, vtext: str, path: str, head: bool) -> bytes | int:
        if not head and not self.reproducible and self.counts["image_get"] > 0:
            self.generation += 1  # the real factory's builds are not guaranteed reproducible
        self.counts["image_head" if head else "image_get"] += 1
        status = self._take_failure("image")
        if status is not None:
            return self._injected(request, status)
        text = self.schematics.get(sid)
        if text is None:
            return _error(request, 404, "schematic not found")
        try:
            Version.parse(vtext if vtext.startswith("v") else "v" + vtext)
        except InvalidVersion:
            return _error(request, 500, f"error parsing version {vtext!r}: not a valid semantic version")
        m = _PATH_RE.match(path)
        if m is None:
            return _error(request, 404, f"error parsing profile from path: unsupported path {path!r}")
        v = self._version(request, vtext)
        if isinstance(v, bytes):
            return v
        schematic = parse_schematic(text)
        known = {e["name"] for e in extensions_catalog(v)}
        for name in schematic.extensions:
            if name not in known:
                return _error(request, 400, f'official extension "{name}" is not available for Talos version {v}')
        if schematic.overlay is not None:
            if schematic.overlay.name not in {o["name"] for o in overlays_catalog(v)}:
                return _error(
                    request, 400, f'official overlay "{schematic.overlay.name}" is not available for Talos version {v}'
                )
        key = self._key(sid, str(v), m.group("platform"), m.group("arch"))
        compression = m.group("comp") or "none"
        self._after_build(request, lambda: self._serve_image(request, key, compression, path, head))
        return server.NOT_DONE_YET

    def _after_build(self, request: server.Request, then: Callable[[], None]) -> None:
        state = {"gone": False}

        def run() -> None:
            if call is not None:
                self._pending.pop(call, None)
            if state["gone"]:
                return
            try:
                then()
            except Exception:
                self.log.failure("fake factory failed to serve {path}", path=request.path)
                if not request.startedWriting:
                    request.write(_error(request, 500, "internal error in the fake factory"))
                    request.finish()
                elif request.transport is not None:
                    cast(ITCPTransport, request.transport).abortConnection()  # a socket transport: it can abort

        def gone(f: Failure) -> None:
            state["gone"] = True
            if call is not None and call.active():
                call.cancel()
                self._pending.pop(call, None)

        call: IDelayedCall | None = None
        request.notifyFinish().addErrback(gone)
        if self.build_delay > 0:
            call = self._clock.callLater(self.build_delay, run)
            self._pending[call] = request
        else:
            run()

    def _serve_image(self, request: server.Request, key: _ImageKey, compression: str, filename: str, head: bool) -> None:
        if self.redirect and not head:
            token = uuid.uuid4().hex
            self._blobs[token] = _Blob(key, compression)
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if not host:
                h = request.getHost()
                host = f"{h.host}:{h.port}"
            location = f"http://{host}/blob/{token}"
            request.setResponseCode(302)
            request.setHeader(b"Location", location.encode())
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            page = f'<a href="{location}">Found</a>.\n\n'.encode()
            request.setHeader(b"Content-Length", b"%d" % len(page))
            request.write(page)
            request.finish()
            return
        body = self._body(key, compression)
        request.setHeader(b"Content-Type", _content_type(compression))
        request.setHeader(b"Content-Disposition", f"attachment; filename={filename}".encode())
        request.setHeader(b"Content-Length", b"%d" % body.size)
        if head:
            request.write(b"")
            request.finish()
            return
        self._send(request, body, 0, body.size)

    def _send(self, request: server.Request, body: _Body, start: int, end: int) -> None:
        fault = self._faults.popleft() if self._faults else None
        corrupt_at = None
        if self._corrupts:
            offset = self._corrupts.popleft()
            corrupt_at = body.size // 2 if offset is None else offset
        _BodyProducer(self, request, body, start, end, fault, corrupt_at).start()

    def _get_blob(self, request: server.Request, token: str, head: bool) -> bytes | int:
        self.counts["blob_head" if head else "blob"] += 1
        status = self._take_failure("blob")
        if status is not None:
            return self._injected(request, status)
        blob = self._blobs.get(token)
        if blob is None:
            return _error(request, 404, "blob not found")
        body = self._body(blob.key, blob.compression)
        request.setHeader(b"Content-Type", _content_type(blob.compression))
        start, end = 0, body.size
        if self.blob_ranges:
            request.setHeader(b"Accept-Ranges", b"bytes")
            rng = _parse_range((request.getHeader(b"range") or b"").decode("latin-1"), body.size)
            if rng == "unsatisfiable":
                request.setHeader(b"Content-Range", b"bytes */%d" % body.size)
                return _error(request, 416, "requested range not satisfiable")
            if isinstance(rng, tuple):
                start, end = rng
                request.setResponseCode(206)
                request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (start, end - 1, body.size))
        request.setHeader(b"Content-Length", b"%d" % (end - start))
        if head:
            request.write(b"")
            request.finish()
            return server.NOT_DONE_YET
        self._send(request, body, start, end)
        return server.NOT_DONE_YET


class _Root(Resource):
    isLeaf = True

    def __init__(self, fake: FakeFactory):
        super().__init__()
        self._fake = fake

    def render(self, request: server.Request) -> bytes | int:
        return self._fake._render(request)


# --------------------------------------------------------------------------------------
# twistd plugin: talos-fake-factory


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"{value} is negative")
    return n


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a fake Talos Image Factory serving deterministic pseudo disk images (tests, offline demos)."
    optParameters = [
        ["listen", "l", "tcp:9080", "Endpoint to listen on (Twisted endpoint string)."],
        ["image-size", None, 64 * MiB, "Size of the raw images in bytes.", int],
        ["build-delay", None, 0.0, "Seconds each image request waits before anything is sent.", float],
        ["rate-limit", None, 0, "Image body rate in bytes per second (0 = unlimited).", int],
    ]
    optFlags = [["redirect", None, "Answer GET /image with 302 to /blob/<token>, as with an object store."]]

    def postOptions(self) -> None:
        if self["image-size"] <= 0:
            raise usage.UsageError("--image-size must be a positive number of bytes")
        if self["build-delay"] < 0:
            raise usage.UsageError("--build-delay must not be negative")
        if self["rate-limit"] < 0:
            raise usage.UsageError("--rate-limit must not be negative")


def makeService(options: Options) -> service.MultiService:
    fake = FakeFactory(image_size=options["image-size"])
    fake.build_delay = options["build-delay"]
    fake.rate_limit = options["rate-limit"]
    fake.redirect = bool(options["redirect"])
    top = service.MultiService()
    top.fake = fake  # type: ignore[attr-defined]  # an ad-hoc attribute, for tests and demos
    strports.service(options["listen"], server.Site(fake.resource())).setServiceParent(top)
    return top
