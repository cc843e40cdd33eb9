"""The fake factory's catalog data: Talos versions, official extensions and overlays.

Values follow the shapes of ``docs/factory-api.md`` ("List entries"); the names and order
are those of the real catalog (deliberately not sorted), the digests are derived.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from talos_twisted.versions import Version

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

# The factory's alias table (old name -> new name; ../vectors/extension-aliases.json): tried
# only at image build, when the name as written is not in the version's catalog.
EXTENSION_ALIASES: dict[str, str] = {
    "siderolabs/v4l-uvc": "siderolabs/v4l-uvc-drivers",
    "siderolabs/usb-modem": "siderolabs/usb-modem-drivers",
    "siderolabs/gasket": "siderolabs/gasket-driver",
    "siderolabs/talos-vmtoolsd": "siderolabs/vmtoolsd-guest-agent",
    "siderolabs/xe-guest-utilities": "siderolabs/xen-guest-agent",
    "siderolabs/nvidia-container-toolkit": "siderolabs/nvidia-container-toolkit-lts",
    "siderolabs/nvidia-open-gpu-kernel-modules": "siderolabs/nvidia-open-gpu-kernel-modules-lts",
    "siderolabs/nonfree-kmod-nvidia": "siderolabs/nonfree-kmod-nvidia-lts",
    "siderolabs/nvidia-fabricmanager": "siderolabs/nvidia-fabric-manager-lts",
    "siderolabs/i915-ucode": "siderolabs/i915",
    "siderolabs/amdgpu-firmware": "siderolabs/amdgpu",
}

_V1_7 = Version(1, 7, 0)
_V1_9 = Version(1, 9, 0)
_V1_11 = Version(1, 11, 0)


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


def find_extension(version: Version, name: str) -> str | None:
    """The catalog name a schematic's extension ``name`` stands for in ``version`` (the
    name itself, or its alias), or None when the build would fail."""
    names = {e["name"] for e in extensions_catalog(version)}
    if name in names:
        return name
    alias = EXTENSION_ALIASES.get(name)
    return alias if alias in names else None


def overlays_supported(version: Version) -> bool:
    return version >= _V1_7
