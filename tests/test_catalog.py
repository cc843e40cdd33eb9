"""Extension names through the factory's alias table (tests/vectors/extension-aliases.json)."""

import json
import pathlib

import pytest

from talos_twisted.aliases import EXTENSION_ALIASES
from talos_twisted.catalog import Catalog, UnknownName
from talos_twisted.schematic import Schematic

VECTORS = pathlib.Path(__file__).parent / "vectors"

CAT = Catalog.from_factory(
    "v1.11.2",
    [
        {"name": "siderolabs/gasket-driver"},
        {"name": "siderolabs/nvidia-container-toolkit-lts"},
        {"name": "siderolabs/nvidia-fabricmanager-lts"},
        {"name": "siderolabs/i915-ucode"},  # an old name still published: no alias needed
        {"name": "siderolabs/i915"},
        {"name": "siderolabs/qemu-guest-agent"},
    ],
    [],
)


def test_alias_module_is_the_vector_table():
    vector = json.loads((VECTORS / "extension-aliases.json").read_text(encoding="utf-8"))
    assert dict(EXTENSION_ALIASES) == vector["aliases"]


def test_current_names_resolve_as_before():
    assert CAT.resolve_extension("gasket-driver") == "siderolabs/gasket-driver"
    assert CAT.resolve_extension("siderolabs/qemu-guest-agent") == "siderolabs/qemu-guest-agent"


@pytest.mark.parametrize("written", ["siderolabs/gasket", "gasket"])
def test_an_old_name_is_kept_as_written_in_full(written):
    # the factory keeps the name as written in the schematic (and so in its ID), and
    # resolves the alias only at build
    assert CAT.resolve_extension(written) == "siderolabs/gasket"
    assert CAT.resolve_extension("nvidia-container-toolkit") == "siderolabs/nvidia-container-toolkit"


def test_old_name_and_new_name_are_different_schematics():
    old = Schematic(extensions=(CAT.resolve_extension("gasket"),))
    new = Schematic(extensions=(CAT.resolve_extension("gasket-driver"),))
    assert old.id != new.id


def test_the_name_as_written_wins_over_its_alias():
    assert CAT.resolve_extension("i915-ucode") == "siderolabs/i915-ucode"


def test_an_alias_whose_target_is_not_in_the_catalog_is_unknown():
    # nvidia-fabricmanager's upstream target (nvidia-fabric-manager-lts) is not a published name
    with pytest.raises(UnknownName):
        CAT.resolve_extension("siderolabs/nvidia-fabricmanager")
    with pytest.raises(UnknownName):
        CAT.resolve_extension("v4l-uvc")  # target siderolabs/v4l-uvc-drivers is not in this catalog


def test_an_alias_needs_its_own_vendor():
    with pytest.raises(UnknownName):
        CAT.resolve_extension("acme/gasket")
