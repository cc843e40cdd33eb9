"""talos-images: serve raw Talos Linux disk images built by the Talos Image Factory."""

from talos_twisted._version import __version__

__all__ = ["__version__"]
