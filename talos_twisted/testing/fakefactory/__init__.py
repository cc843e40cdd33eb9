"""A faithful fake of the Talos Image Factory, for tests and offline demos.

It follows ``docs/factory-api.md`` (routes, status codes, one-line plain-text errors,
``X-Request-ID``, synchronous builds, optional 302 to an object-store-like ``/blob``), serves
deterministic pseudo disk images and boot assets, and has knobs to inject the faults a real
factory and network produce: error statuses, slow builds, slow links, connections cut,
closed early or stalled mid-body, corrupted bytes, non-reproducible rebuilds.

Use it in-process (``Site(FakeFactory().resource())`` on ``tcp:0:interface=127.0.0.1``, or
``StubTreq(FakeFactory().resource())`` in memory) or stand-alone with
``twistd -n talos-fake-factory --listen tcp:9080``.

Modules: ``catalog`` (versions, extensions, overlays), ``talos_twisted.assetpath`` (asset path grammar),
``images`` (deterministic images and compressed bodies), ``boot`` (kernel command line,
iPXE script), ``faults`` (the body producer and its faults), ``factory`` (``FakeFactory``:
state, knobs, ground truth), ``app`` (the Klein routes), ``plugin`` (twistd).
"""

from .app import FactoryApp, FactoryError
from .catalog import DEFAULT_VERSIONS, EXTENSION_ALIASES, extensions_catalog, overlays_catalog
from .factory import ROUTES, AssetKey, FakeFactory, schematic_facts
from .images import COMPRESSIONS, KiB, MiB, ImageSpec, blob_spec, compress_image, layout, tar_gz_image
from .plugin import Options, makeService
from talos_twisted.assetpath import Profile, ProfileError, content_type, parse_profile

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_VERSIONS",
    "EXTENSION_ALIASES",
    "ROUTES",
    "AssetKey",
    "FactoryApp",
    "FactoryError",
    "FakeFactory",
    "ImageSpec",
    "KiB",
    "MiB",
    "Options",
    "Profile",
    "ProfileError",
    "blob_spec",
    "compress_image",
    "content_type",
    "extensions_catalog",
    "layout",
    "makeService",
    "overlays_catalog",
    "parse_profile",
    "schematic_facts",
    "tar_gz_image",
]
