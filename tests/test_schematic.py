import pytest

from talos_twisted.schematic import (
    MetaValue,
    Overlay,
    Schematic,
    SchematicError,
    parse_schematic,
    schematic_id,
)

VECTORS = [
    ("customization: {}\n", "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"),
    (
        "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/qemu-guest-agent\n",
        "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515",
    ),
    (
        "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/amd-ucode\n"
        "            - siderolabs/gvisor\n            - siderolabs/gasket-driver\n",
        "51ff3e49313773332729a5c04e57af0dbe2e6d3f65ff638e6d4c3a05065fefff",
    ),
    (
        "overlay:\n    image: siderolabs/sbc-raspberrypi\n    name: rpi_generic\ncustomization: {}\n",
        "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9",
    ),
    (
        "customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n",
        "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c",
    ),
    (
        "customization:\n    meta:\n        - key: 10\n          value: foo\n",
        "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f",
    ),
]

SCHEMATICS = [
    Schematic(),
    Schematic(extensions=("siderolabs/qemu-guest-agent",)),
    Schematic(extensions=("siderolabs/amd-ucode", "siderolabs/gvisor", "siderolabs/gasket-driver")),
    Schematic(overlay=Overlay(name="rpi_generic", image="siderolabs/sbc-raspberrypi")),
    Schematic(extra_kernel_args=("noapic", "nolapic")),
    Schematic(meta=(MetaValue(10, "foo"),)),
]


@pytest.mark.parametrize("text,expected", VECTORS)
def test_vector_ids(text, expected):
    assert schematic_id(text) == expected


@pytest.mark.parametrize("schematic,vector", list(zip(SCHEMATICS, VECTORS)))
def test_canonical_yaml_matches_factory(schematic, vector):
    text, expected = vector
    assert schematic.to_yaml() == text
    assert schematic.id == expected


@pytest.mark.parametrize("text,_", VECTORS)
def test_parse_round_trips(text, _):
    assert parse_schematic(text).to_yaml() == text


def test_parse_accepts_json():
    doc = '{"customization": {"systemExtensions": {"officialExtensions": ["siderolabs/qemu-guest-agent"]}}}'
    assert parse_schematic(doc).id == VECTORS[1][1]


@pytest.mark.parametrize(
    "doc",
    ["customisation: {}\n", "customization:\n    systemExtension: {}\n", "- a\n", "customization: [1]\n"],
)
def test_parse_rejects_unknown_or_malformed(doc):
    with pytest.raises(SchematicError):
        parse_schematic(doc)


def test_scalars_that_would_not_read_back_are_quoted():
    text = Schematic(extra_kernel_args=("true", "a: b", "console=ttyS0")).to_yaml()
    assert '- "true"' in text and '- "a: b"' in text and "- console=ttyS0" in text
