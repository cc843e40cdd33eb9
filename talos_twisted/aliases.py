"""The factory's extension name aliases (old name -> current name).

Upstream: siderolabs/image-factory ``internal/profile/profile.go`` ``ExtensionNameAlias`` @ 26b95cac
(copied from the project's ``extension-aliases.json`` vector; tests hold the two equal). The factory
tries an alias only when the name as written is not in the Talos version's catalog, and only at
image build: a schematic, and so its ID, keeps the name as written. The table has no version
condition. One target, ``siderolabs/nvidia-fabric-manager-lts``, is not a published name (the
extension is ``nvidia-fabricmanager-lts``), so that alias never resolves.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

EXTENSION_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "siderolabs/v4l-uvc": "siderolabs/v4l-uvc-drivers",  # wrong name in the extension manifest
        "siderolabs/usb-modem": "siderolabs/usb-modem-drivers",  # wrong name in the extension manifest
        "siderolabs/gasket": "siderolabs/gasket-driver",  # wrong name in the extension manifest
        "siderolabs/talos-vmtoolsd": "siderolabs/vmtoolsd-guest-agent",  # wrong name in the extension manifest
        "siderolabs/xe-guest-utilities": "siderolabs/xen-guest-agent",  # extension got renamed
        "siderolabs/nvidia-container-toolkit": "siderolabs/nvidia-container-toolkit-lts",  # extension got renamed
        "siderolabs/nvidia-open-gpu-kernel-modules": "siderolabs/nvidia-open-gpu-kernel-modules-lts",  # extension got renamed
        "siderolabs/nonfree-kmod-nvidia": "siderolabs/nonfree-kmod-nvidia-lts",  # extension got renamed
        "siderolabs/nvidia-fabricmanager": "siderolabs/nvidia-fabric-manager-lts",  # extension got renamed
        "siderolabs/i915-ucode": "siderolabs/i915",  # extension got renamed
        "siderolabs/amdgpu-firmware": "siderolabs/amdgpu",  # extension got renamed
    }
)
