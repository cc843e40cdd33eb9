"""The ``twistd talos-fake-factory`` plugin: command-line options and the service."""

from __future__ import annotations

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.web import server

from .factory import FakeFactory
from .images import BODY_SHAPES, MiB


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a fake Talos Image Factory serving deterministic pseudo disk images (tests, offline demos)."
    optParameters = [
        ["listen", "l", "tcp:9080", "Endpoint to listen on (Twisted endpoint string)."],
        ["image-size", None, 64 * MiB, "Size of the raw images in bytes.", int],
        ["build-delay", None, 0.0, "Seconds each image request waits before anything is sent.", float],
        ["rate-limit", None, 0, "Image body rate in bytes per second (0 = unlimited).", int],
        [
            "body-shape",
            None,
            "factory",
            "How .xz/.zst images are compressed: factory (one xz stream of 1 MiB blocks with sizes, "
            "one zstd frame with its content size), multi (several streams/frames) or no-sizes "
            "(xz without block sizes, zstd without content size).",
        ],
        ["pxe-url", None, None, "External PXE URL: the base of the URLs in /pxe scripts (default: http://<Host>)."],
    ]
    optFlags = [["redirect", None, "Answer GET /image with 302 to /blob/<token>, as with an object store."]]

    def postOptions(self) -> None:
        if self["image-size"] <= 0:
            raise usage.UsageError("--image-size must be a positive number of bytes")
        if self["build-delay"] < 0:
            raise usage.UsageError("--build-delay must not be negative")
        if self["rate-limit"] < 0:
            raise usage.UsageError("--rate-limit must not be negative")
        if self["body-shape"] not in BODY_SHAPES:
            raise usage.UsageError(f"--body-shape must be one of {', '.join(BODY_SHAPES)}")
        pxe = self["pxe-url"]
        if pxe is not None and not pxe.startswith(("http://", "https://")):
            raise usage.UsageError("--pxe-url must be an http:// or https:// URL")


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    fake = FakeFactory(image_size=options["image-size"])
    fake.build_delay = options["build-delay"]
    fake.rate_limit = options["rate-limit"]
    fake.redirect = bool(options["redirect"])
    fake.pxe_url = options["pxe-url"]
    fake.body_shape = options["body-shape"]
    top = service.MultiService()
    top.fake = fake  # type: ignore[attr-defined]  # an ad-hoc attribute, for tests and demos
    endpoint = serverFromString(reactor, options["listen"])
    StreamServerEndpointService(endpoint, server.Site(fake.resource())).setServiceParent(top)
    return top
