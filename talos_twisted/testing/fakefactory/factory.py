"""FakeFactory: the fake's state, its knobs, and the ground truth tests compare against."""

from __future__ import annotations

import collections
import hashlib
import time
from dataclasses import dataclass, replace
from typing import cast

import yaml
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import IResource

from talos_twisted.schematic import parse_schematic
from talos_twisted.versions import Version

from .boot import asset_size, kernel_cmdline
from .catalog import DEFAULT_VERSIONS
from .faults import Body, BodyProducer, BytesBody, Fault, RawBody
from .images import BODY_SHAPES, KiB, MiB, ImageSpec, blob_spec, compress_image, layout, tar_gz_image
from talos_twisted.assetpath import Profile, parse_profile

ROUTES = ("versions", "extensions", "overlays", "schematics", "image", "blob", "pxe")


@dataclass(frozen=True)
class AssetKey:
    """One asset of one build: what the bytes derive from (a new generation = a rebuild)."""

    schematic_id: str
    version: str  # canonical, "v1.11.2"
    profile: Profile
    generation: int
    image_size: int
    data_fraction: float


@dataclass(frozen=True)
class SchematicFacts:
    """What a stored schematic asks of a build, read from its canonical YAML."""

    extensions: tuple[str, ...] = ()
    overlay: str | None = None
    extra_kernel_args: tuple[str, ...] = ()


def schematic_facts(canonical_yaml: str) -> SchematicFacts:
    # Read the stored text rather than Schematic attributes: only .id and .to_yaml() are
    # the fake's contract with talos_twisted.schematic. BaseLoader keeps every scalar the
    # string it is (``yes``, ``010`` stay text, as in go-yaml).
    doc = yaml.load(canonical_yaml, Loader=yaml.BaseLoader) or {}
    custom = doc.get("customization") or {}
    overlay = doc.get("overlay") or {}
    exts = (custom.get("systemExtensions") or {}).get("officialExtensions") or []
    return SchematicFacts(
        extensions=tuple(str(e) for e in exts),
        overlay=str(overlay["name"]) if overlay.get("name") else None,
        extra_kernel_args=tuple(str(a) for a in custom.get("extraKernelArgs") or []),
    )


class FakeFactory:
    """A fake Talos Image Factory. Knobs are plain attributes; change them at any time.

    - ``build_delay``: seconds between a valid GET/HEAD ``/image`` request and its answer
      (200, 302 or HEAD headers); validation errors answer at once. Uses ``clock``; cancelled
      if the client goes away.
    - ``rate_limit``: bytes/s for ``/image`` and ``/blob`` bodies (``rate_limit // 10``
      bytes every 0.1 s on ``clock``); 0 = as fast as the transport takes them. Read live.
    - ``redirect``: GET ``/image`` answers 302 to ``http://<Host>/blob/<token>``; the blob
      keeps serving the bytes of the generation current at redirect time. HEAD is never
      redirected, nor is a request to the PXE host (``pxe_url``).
    - ``blob_ranges``: ``/blob`` honours one ``Range`` (206, ``Content-Range``, 416) and
      sends ``Accept-Ranges: bytes``; otherwise ``Range`` is ignored. ``/image`` never does.
    - ``pxe_url``: the factory's external PXE URL, the ``<base>`` of ``/pxe`` scripts;
      None = ``http://<Host of the request>``.
    - ``ready``: False makes ``/readyz`` answer 503 ``not ready``.
    - ``generation``: part of the image seed; bump it to simulate a non-reproducible rebuild.
    - ``reproducible``: when False, every image GET after the first bumps ``generation``.
    - ``body_shape``: how ``.xz`` / ``.zst`` disk images are compressed (``BODY_SHAPES``):
      ``"factory"`` (default) as the Talos imager does, one xz stream of 1 MiB blocks with
      both sizes in their headers / one zstd frame with the content size; ``"multi"``
      several streams / frames (``stream_size``); ``"no-sizes"`` xz without block sizes
      (one block, like ``xz -T1``) / zstd without the content size. Boot assets keep their
      one stream whatever the shape.
    - ``stream_size``: raw bytes per xz stream / zstd frame of ``body_shape = "multi"``
      (default: size/4, clamped to 256 KiB..32 MiB).
    - ``fail_next(n, status, route)``: the next ``n`` requests of ``route`` answer ``status``
      with a plain-text line, before any validation or build delay ("image" counts GET and
      HEAD, "schematics" POST and GET, "blob" GET and HEAD).
    - ``outage_status``: while set (e.g. 503), every request of every route but
      ``/healthz`` and ``/readyz`` answers it with a plain-text line, as ``fail_next`` does
      (counted as usual): the factory down behind a load balancer that still answers. Set
      it back to None to end the outage.
    - ``expire_next_blob(times)``: the ``/blob`` URL of each of the next ``times`` redirects
      answers one GET, then ``404 blob not found`` (a presigned URL that expired).
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
    pxe_url: str | None = None
    ready: bool = True
    generation: int = 0
    reproducible: bool = True  # False: every image GET after the first is a new build (new generation)
    body_shape: str = "factory"  # one of BODY_SHAPES
    stream_size: int | None = None  # raw bytes per xz stream / zstd frame of "multi"; None = auto
    outage_status: int | None = None  # every route answers this status while set (an outage)

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
        self._faults: collections.deque[Fault] = collections.deque()
        self._corrupts: collections.deque[int | None] = collections.deque()
        # compressed bodies (a 1 GiB image with data_fraction 0.03 is about 11 MB of xz or zst);
        # raw images are never held: they are read from the seed as they are sent
        self._bodies: dict[tuple[AssetKey, str, int | None], bytes] = {}
        self._sha256: dict[AssetKey, str] = {}
        self._blobs: dict[str, tuple[AssetKey, str]] = {}  # token -> (asset, filename)
        self._expire_next = 0  # redirects whose blob URL expires after one GET (expire_next_blob)
        self._expiring: dict[str, int] = {}  # token -> GETs left before it answers 404
        self._active: set[BodyProducer] = set()
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
        self._faults.extend([Fault("cut", after_bytes)] * times)

    def expire_next_blob(self, times: int = 1) -> None:
        """The next ``times`` redirects: their ``/blob`` URL answers one GET, then ``404``, as
        a presigned object-store URL that expired."""
        self._expire_next += times

    def short_next(self, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` bodies: close the connection cleanly after ``after_bytes`` bytes."""
        self._faults.extend([Fault("short", after_bytes)] * times)

    def stall_next(self, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` bodies: stop sending after ``after_bytes`` bytes, stay connected."""
        self._faults.extend([Fault("stall", after_bytes)] * times)

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

    # -- HTTP ----------------------------------------------------------------------------
    def resource(self) -> IResource:
        from .app import FactoryApp  # app.py needs this module's types: import it late

        return FactoryApp(self).resource()

    def _take_failure(self, route: str) -> int | None:
        if self.outage_status is not None:
            return self.outage_status
        q = self._failures[route]
        return q.popleft() if q else None

    def _take_faults(self, body_size: int) -> tuple[Fault | None, int | None]:
        fault = self._faults.popleft() if self._faults else None
        corrupt_at = None
        if self._corrupts:
            offset = self._corrupts.popleft()
            corrupt_at = body_size // 2 if offset is None else offset
        return fault, corrupt_at

    # -- ground truth --------------------------------------------------------------------
    def raw_size(self) -> int:
        return self.image_size

    def _key(self, schematic_id: str, version: str, profile: Profile) -> AssetKey:
        return AssetKey(
            schematic_id, str(Version.parse(version)), profile, self.generation, self.image_size, self.data_fraction
        )

    def _image_key(self, schematic_id: str, version: str, platform: str, arch: str, secureboot: bool) -> AssetKey:
        suffix = "-secureboot" if secureboot else ""
        return self._key(schematic_id, version, parse_profile(f"{platform}-{arch}{suffix}.raw"))

    def _spec(self, key: AssetKey) -> ImageSpec:
        """The raw bytes of an asset (before any compression)."""
        p = key.profile
        seed_text = f"{key.schematic_id}\0{key.version}\0{p.platform}\0{p.arch}\0{key.generation}"
        if (p.kind, p.disk_format, p.secureboot) != ("image", "raw", False):
            # the plain raw image keeps the seed it always had; every other asset differs
            seed_text += f"\0{p.kind}\0{p.disk_format}\0{'secureboot' if p.secureboot else ''}"
        seed = hashlib.sha256(seed_text.encode()).digest()
        if p.kind == "image":
            return ImageSpec(seed, key.image_size, layout(key.image_size, key.data_fraction))
        return blob_spec(seed, asset_size(p.kind, key.image_size))

    def raw_image(self, schematic_id: str, version: str, platform: str, arch: str, secureboot: bool = False) -> bytes:
        spec = self._spec(self._image_key(schematic_id, version, platform, arch, secureboot))
        return spec.read(0, spec.size)

    def raw_sha256(self, schematic_id: str, version: str, platform: str, arch: str, secureboot: bool = False) -> str:
        key = self._image_key(schematic_id, version, platform, arch, secureboot)
        if key not in self._sha256:
            h = hashlib.sha256()
            for c in self._spec(key).chunks():
                h.update(c)
            self._sha256[key] = h.hexdigest()
        return self._sha256[key]

    def compressed_image(
        self, schematic_id: str, version: str, platform: str, arch: str, compression: str, secureboot: bool = False
    ) -> bytes:
        key = self._image_key(schematic_id, version, platform, arch, secureboot)
        if compression == "none":
            return self.raw_image(schematic_id, version, platform, arch, secureboot)
        return self._compressed(replace(key, profile=replace(key.profile, out_format=compression)))

    def cmdline(self, schematic_id: str, version: str, platform: str, arch: str, secureboot: bool = False) -> str:
        """The kernel command line of a stored schematic (``cmdline-<platform>-<arch>``)."""
        suffix = "-secureboot" if secureboot else ""
        profile = parse_profile(f"cmdline-{platform}-{arch}{suffix}")
        return kernel_cmdline(profile, schematic_facts(self.schematics[schematic_id]).extra_kernel_args)

    def asset(self, schematic_id: str, version: str, path: str) -> bytes:
        """The exact body ``/image/{schematic_id}/{version}/{path}`` answers (200)."""
        body = self._body(self._key(schematic_id, version, parse_profile(path)))
        return body.read(0, body.size)

    def _stream_size(self) -> int:
        if self.stream_size:
            return self.stream_size
        return max(256 * KiB, min(32 * MiB, self.image_size // 4 // (64 * KiB) * (64 * KiB)))

    def _compressed(self, key: AssetKey) -> bytes:
        if self.body_shape not in BODY_SHAPES:
            raise ValueError(f"body_shape must be one of {', '.join(BODY_SHAPES)}, not {self.body_shape!r}")
        fmt = key.profile.out_format
        # boot assets (the initramfs) are one stream, as Talos writes them, whatever the shape
        shaped = key.profile.kind == "image" and fmt in ("xz", "zst")
        shape = self.body_shape if shaped else "one stream"
        ckey = (key, shape, self._stream_size() if shape == "multi" else None)
        body = self._bodies.get(ckey)
        if body is None:
            t0 = time.monotonic()
            spec = self._spec(replace(key, profile=replace(key.profile, out_format="none")))
            if fmt == "tar.gz":
                body = tar_gz_image(spec)
            elif shaped:
                body = compress_image(spec, fmt, self._stream_size(), shape)
            else:
                body = compress_image(spec, fmt, max(1, spec.size), "multi")
            self._bodies[ckey] = body
            seconds = time.monotonic() - t0
            if seconds > 0.5:
                self.log.info(
                    "built {compression} image ({shape}) of {raw} raw bytes ({size} compressed) in {seconds:.1f}s",
                    compression=fmt,
                    shape=shape,
                    raw=spec.size,
                    size=len(body),
                    seconds=seconds,
                )
        return body

    def _body(self, key: AssetKey) -> Body:
        p = key.profile
        if p.kind == "cmdline":
            return BytesBody(self.cmdline(key.schematic_id, key.version, p.platform, p.arch, p.secureboot).encode())
        if p.out_format == "none":
            return RawBody(self._spec(key))
        return BytesBody(self._compressed(key))
