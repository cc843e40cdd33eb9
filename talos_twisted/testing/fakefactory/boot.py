"""Boot assets of the fake factory: sizes, the kernel command line, the iPXE script (pure).

The iPXE templates are the factory's (``docs/factory-api.md``, "The iPXE script"). The
command line is shaped like the one Talos builds (``talos.platform=``, its default hardening
arguments, then the schematic's ``extraKernelArgs``); the exact per-platform console
arguments of each Talos release are not reproduced.
"""

from __future__ import annotations

from .images import KiB, MiB
from talos_twisted.assetpath import Profile

# Raw sizes of the blob assets (kernel, UKI) and of the initramfs before xz; ISO and
# installer scale with the fake's image size so big-image tests stay proportionate.
FIXED_SIZES = {"kernel": 512 * KiB, "initramfs": 1 * MiB, "uki": 1536 * KiB}


def asset_size(kind: str, image_size: int) -> int:
    """Raw bytes of an asset of ``kind`` when the fake's disk images have ``image_size``."""
    if kind in FIXED_SIZES:
        return FIXED_SIZES[kind]
    if kind in ("iso", "installer"):
        return max(256 * KiB, image_size // 4 // (4 * KiB) * (4 * KiB))
    return image_size


def kernel_cmdline(profile: Profile, extra_kernel_args: tuple[str, ...]) -> str:
    """The ``cmdline-<platform>-<arch>`` asset: one line, no trailing newline (the iPXE
    script embeds it after the kernel URL)."""
    args = [f"talos.platform={profile.platform}", "console=tty0", "init_on_alloc=1", "slab_nomerge"]
    if profile.arch == "amd64":
        args.append("pti=on")  # x86-only
    args += [
        "consoleblank=0",
        "nvme_core.io_timeout=4294967295",
        "printk.devkmsg=on",
        "ima_template=ima-ng",
        "ima_appraise=fix",
        "ima_hash=sha512",
    ]
    args += extra_kernel_args
    return " ".join(args)


def ipxe_script(base: str, schematic_id: str, version_tag: str, profile: Profile, cmdline: str) -> str:
    """The answer of ``/pxe/{schematic}/{version}/{platform}-{arch}[-secureboot]``."""
    prefix = f"{base.rstrip('/')}/image/{schematic_id}/{version_tag}"
    if profile.secureboot:
        uki = f"{prefix}/{profile.platform}-{profile.arch}-secureboot-uki.efi"
        return f"#!ipxe\n\nimgfree\nkernel {uki} {cmdline}\nboot\n"
    return (
        "#!ipxe\n\nimgfree\n"
        f"kernel {prefix}/kernel-{profile.arch} {cmdline}\n"
        f"initrd {prefix}/initramfs-{profile.arch}.xz\n"
        "boot\n"
    )
