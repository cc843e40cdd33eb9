"""The iPXE script of the PXE front door, and the base URL it points at (pure, no I/O).

The factory's script points at the factory (HTTPS, the internet); ours points at this
daemon's mirror routes over plain HTTP on the provisioning network, so that iPXE builds
without the factory's TLS chain work and nodes boot from the cache while the factory is
down.
"""

from __future__ import annotations

import re

from talos_twisted.assetpath import Profile
from talos_twisted.errors import BadRequest

# host[:port] as a Host header may carry it: a DNS name, an IPv4 address or a bracketed
# IPv6 address; no user info, no path, nothing to inject into a script
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?", re.ASCII)


def base_url(public_url: str, host_header: str | None, secure: bool) -> str:
    """The scheme://host[:port] of the script's URLs: `public_url` when configured, else
    the request's own, accepted only as a valid host[:port]."""
    if public_url:
        return public_url.rstrip("/")
    host = (host_header or "").strip()
    if not host or len(host) > 260 or not _HOST.fullmatch(host) or (":" in host and not _port_ok(host)):
        raise BadRequest("the Host header is not a valid host[:port]; set talos.public_url to this server's URL")
    return f"{'https' if secure else 'http'}://{host.lower()}"


def _port_ok(host: str) -> bool:
    port = host.rpartition("]")[2] if host.startswith("[") else host
    if ":" not in port:
        return True
    digits = port.rpartition(":")[2]
    return 0 < int(digits) < 65536


def boot_assets(profile: Profile) -> tuple[str, ...]:
    """The asset paths the script of a cmdline `profile` makes a node fetch."""
    if profile.secureboot:
        return (f"{profile.platform}-{profile.arch}-secureboot-uki.efi",)
    return (f"kernel-{profile.arch}", f"initramfs-{profile.arch}.xz")


def ipxe_script(base: str, schematic_id: str, version: str, profile: Profile, cmdline: str) -> str:
    """The factory's script (docs/factory-api.md), its URLs on `base`."""
    prefix = f"{base}/image/{schematic_id}/{version}"
    assets = boot_assets(profile)
    lines = ["#!ipxe", "", "imgfree", f"kernel {prefix}/{assets[0]} {cmdline}"]
    if len(assets) > 1:
        lines.append(f"initrd {prefix}/{assets[1]}")
    lines.append("boot")
    return "\n".join(lines) + "\n"
