"""The schematic's canonical YAML and ID, held to the factory's own vectors (tests/vectors/)."""

import json
import pathlib

import pytest

from talos_twisted.schematic import (
    MetaValue,
    Overlay,
    Schematic,
    SchematicError,
    SecureBoot,
    canonical_yaml_of,
    parse_schematic,
    schematic_id,
)

VECTORS = pathlib.Path(__file__).parent / "vectors"
SHARED = pathlib.Path("/work/shared/vectors")
FILES = ("README.md", "extension-aliases.json", "schematic-accepts.jsonl", "schematic-ids.jsonl", "schematic-rejects.jsonl")


def lines(name):
    return [json.loads(line) for line in (VECTORS / name).read_text(encoding="utf-8").splitlines() if line.strip()]


IDS = lines("schematic-ids.jsonl")
REJECTS = lines("schematic-rejects.jsonl")
ACCEPTS = lines("schematic-accepts.jsonl")


def test_vector_files_are_all_there():
    # the parametrized tables below would silently shrink if a copy were truncated
    assert (len(IDS), len(REJECTS), len(ACCEPTS)) == (316, 54, 36)


def test_vector_copies_match_the_shared_ones():
    if not SHARED.is_dir():  # a fresh clone has only the copies; nothing to compare with
        return
    for name in FILES:
        assert (VECTORS / name).read_bytes() == (SHARED / name).read_bytes(), name


@pytest.mark.parametrize("v", IDS, ids=[f"ids{i}" for i in range(len(IDS))])
def test_canonical_yaml_of_doc(v):
    text = canonical_yaml_of(v["doc"])
    assert text == v["yaml"]
    assert schematic_id(text) == v["id"]


@pytest.mark.parametrize("v", IDS, ids=[f"ids{i}" for i in range(len(IDS))])
def test_doc_posted_as_json(v):
    s = parse_schematic(json.dumps(v["doc"]))
    assert (s.to_yaml(), s.id) == (v["yaml"], v["id"])


@pytest.mark.parametrize("v", IDS, ids=[f"ids{i}" for i in range(len(IDS))])
def test_canonical_yaml_reads_back_to_itself(v):
    s = parse_schematic(v["yaml"])
    assert (s.to_yaml(), s.id) == (v["yaml"], v["id"])


@pytest.mark.parametrize("v", REJECTS, ids=[f"reject{i}" for i in range(len(REJECTS))])
def test_factory_rejects(v):
    with pytest.raises(SchematicError):
        parse_schematic(v["body"])


@pytest.mark.parametrize("v", REJECTS, ids=[f"reject{i}" for i in range(len(REJECTS))])
def test_rejects_as_bytes(v):
    with pytest.raises(SchematicError):
        parse_schematic(v["body"].encode("utf-8"))


# our messages follow go-yaml's; those about the struct are word for word
@pytest.mark.parametrize("v", [v for v in REJECTS if not v["error"].startswith("go-yaml load error")])
def test_reject_messages_are_the_factorys(v):
    with pytest.raises(SchematicError) as e:
        parse_schematic(v["body"])
    assert str(e.value) == v["error"]


@pytest.mark.parametrize("v", ACCEPTS, ids=[f"accept{i}" for i in range(len(ACCEPTS))])
def test_factory_accepts(v):
    s = parse_schematic(v["body"])
    assert (s.to_yaml(), s.id) == (v["yaml"], v["id"])
    assert parse_schematic(v["yaml"]).id == v["id"]


def test_the_documented_ids():
    # the table of docs/factory-api.md, by construction as other modules build schematics
    cases = [
        (Schematic(), "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"),
        (Schematic(extensions=("siderolabs/qemu-guest-agent",)), "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"),
        (
            Schematic(extensions=("siderolabs/amd-ucode", "siderolabs/gvisor", "siderolabs/gasket-driver")),
            "51ff3e49313773332729a5c04e57af0dbe2e6d3f65ff638e6d4c3a05065fefff",
        ),
        (
            Schematic(overlay=Overlay("rpi_generic", "siderolabs/sbc-raspberrypi")),
            "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9",
        ),
        (Schematic(extra_kernel_args=("noapic", "nolapic")), "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c"),
        (Schematic(meta=(MetaValue(10, "foo"),)), "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f"),
    ]
    for schematic, expected in cases:
        assert schematic.id == expected
        assert parse_schematic(schematic.to_yaml()) == schematic


def test_full_struct_in_the_factorys_field_order():
    s = Schematic(
        extensions=("siderolabs/gvisor",),
        overlay=Overlay("rpi_5", "siderolabs/sbc-raspberrypi", {"b": 1, "a": [True, None]}),
        extra_kernel_args=("on",),
        meta=(MetaValue(0, "x"),),
        embedded_machine_configuration="a: b\n",
        bootloader="sd-boot",
        secureboot=SecureBoot("off", True),
        disk_image_sector_size=4096,
    )
    assert s.to_yaml() == (
        "overlay:\n    image: siderolabs/sbc-raspberrypi\n    name: rpi_5\n    options:\n"
        "        a:\n            - true\n            - null\n        b: 1\n"
        "customization:\n    embeddedMachineConfiguration: |\n        a: b\n"
        "    extraKernelArgs:\n        - 'on'\n    meta:\n        - key: 0\n          value: x\n"
        "    systemExtensions:\n        officialExtensions:\n            - siderolabs/gvisor\n"
        "    bootloader: sd-boot\n    secureboot:\n        enrollKeys: 'off'\n        includeWellKnownCertificates: true\n"
        "    diskImage:\n        sectorSize: 4096\n"
    )
    assert parse_schematic(s.to_yaml()) == s


@pytest.mark.parametrize(
    "value,written",
    [
        # the emitter rules the factory's notes name, beyond the vectors
        ("\U0001f680", '"\\U0001F680"'),
        ("\ufeffbom", '"\\uFEFF\\x62\\x6F\\x6D"'),  # a leading BOM escapes the whole string
        ("a\ufeffb", '"a\\uFEFFb"'),
        ("x\r\ny", '"x\\r\\ny"'),
        ("a\x85b", '"a\\Nb"'),
        ("e\x1bz", '"e\\ez"'),
        ("a\n\n", "|+\n          a\n\n"),
        ("0b101", '"0b101"'),
        ("a b", "a b"),
        ("é", "é"),
        ("1e999", "1e999"),  # overflows a float, so it is a string to go-yaml
        ("08", '"08"'),  # not octal, but a float
    ],
)
def test_scalar_styles(value, written):
    text = canonical_yaml_of({"customization": {"extraKernelArgs": [value]}})
    assert text == f"customization:\n    extraKernelArgs:\n        - {written}" + ("" if written.endswith("\n") else "\n")
    assert parse_schematic(text).extra_kernel_args == (value,)


def test_options_keys_sort_as_go_yaml_sorts_them():
    doc = {"overlay": {"name": "n", "image": "i", "options": {"a10": 0, "a9": 0, "b": 0, "B": 0, "_": 0, "2": 0}}}
    text = canonical_yaml_of(doc)
    keys = [line.split(":")[0].strip() for line in text.splitlines()[4:10]]
    # keyList.Less: a non-letter before a letter, digit runs by value ("_" counts as 0 against "2")
    assert keys == ["_", '"2"', "B", "a9", "a10", "b"]


def test_plain_option_values_take_go_types():
    body = "overlay:\n  name: n\n  image: i\n  options: {t: 2001-12-14 21:59:43.10, f: 1e6, z: -0, m: {1: a, x: b}}\n"
    text = parse_schematic(body).to_yaml()
    assert "        f: 1e+06\n" in text and "        z: -0\n" in text
    assert "        t: 2001-12-14T21:59:43.1Z\n" in text
    assert "        m:\n            1: a\n            x: b\n" in text  # an int key stays an int


def test_multiline_text_that_go_yaml_could_not_read_back_is_refused():
    # go-yaml's indentation indicator points at the wrong column inside a sequence
    with pytest.raises(SchematicError, match="cannot read back"):
        canonical_yaml_of({"customization": {"extraKernelArgs": [" lead\nx"]}})
    with pytest.raises(SchematicError, match="cannot read back"):
        parse_schematic('{"customization": {"meta": [{"key": 1, "value": " a\\nb"}]}}')
    # and with no indicator, libyaml refuses a leading tab
    with pytest.raises(SchematicError, match="cannot read back"):
        canonical_yaml_of({"customization": {"embeddedMachineConfiguration": "\tx\ny"}})


def test_multiline_text_with_a_leading_space_reads_back_where_the_indicator_fits():
    s = parse_schematic('{"customization": {"embeddedMachineConfiguration": " lead\\nx"}}')
    assert s.to_yaml() == "customization:\n    embeddedMachineConfiguration: |4-\n         lead\n        x\n"
    assert parse_schematic(s.to_yaml()) == s


def test_binary_that_is_not_utf8_is_written_as_binary():
    s = parse_schematic("customization:\n  extraKernelArgs: [!!binary /w==]\n")
    assert s.to_yaml() == "customization:\n    extraKernelArgs:\n        - !!binary /w==\n"
    assert parse_schematic(s.to_yaml()) == s


@pytest.mark.parametrize(
    "body",
    [
        "a: &a [*a]\n",
        "customization: {extraKernelArgs: [*nope]}\n",
        "customization:\n  <<: [a]\n",
        "customization: {extraKernelArgs: [!!binary '@@']}\n",
        "customization: {extraKernelArgs: [!!int abc]}\n",
        "{\"customization\": {\"extraKernelArgs\": [\"\\'\"]}}\x00",
    ],
)
def test_other_bodies_go_yaml_refuses(body):
    with pytest.raises(SchematicError):
        parse_schematic(body)


def test_billion_laughs_is_refused():
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    body = "overlay:\n  name: n\n  options:\n" + "".join(f"    {r}\n" for r in rows)
    with pytest.raises(SchematicError, match="excessive aliasing"):
        parse_schematic(body)


def test_documents_the_factory_would_refuse():
    with pytest.raises(SchematicError, match="Enterprise"):
        canonical_yaml_of({"owner": "me"})
    with pytest.raises(SchematicError):
        canonical_yaml_of({"customization": {"meta": [{"key": 300, "value": "x"}]}})
    with pytest.raises(SchematicError):
        canonical_yaml_of({"customization": {"extraKernelArgs": [object()]}})
    with pytest.raises(SchematicError):
        canonical_yaml_of({"customization": {"extraKernelArgs": ["\ud83d"]}})


def test_constructed_schematics_are_checked_too():
    with pytest.raises(SchematicError):
        Schematic(meta=(MetaValue(256, "x"),)).to_yaml()
    with pytest.raises(SchematicError):
        Schematic(bootloader="lilo").to_yaml()
    assert Schematic(bootloader="none").to_yaml() == "customization: {}\n"
    assert Schematic(overlay=Overlay("", "")).to_yaml() == "customization: {}\n"


def test_schematics_stay_hashable_and_comparable():
    a = Schematic(overlay=Overlay("rpi_5", "siderolabs/sbc-raspberrypi", {"k": [1]}))
    b = Schematic(overlay=Overlay("rpi_5", "siderolabs/sbc-raspberrypi", {"k": [1]}))
    assert a == b and hash(a) == hash(b) and a.id == b.id
