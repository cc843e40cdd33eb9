"""Named profiles: images for machines whose tooling cannot send a query string (some BMCs)."""

import hashlib
import json

import pytest
import pytest_twisted

from talos_twisted.config import ConfigError, Profile, load_config
from talos_twisted.schematic import parse_schematic

from .rawhttp import exchange
from .test_readiness import closed_url

BMC = Profile("bmc-rpi", ("qemu-guest-agent",), "rpi_generic", json.dumps({"extraKernelArgs": ["console=ttyS0"]}))
DOC = {
    "overlay": {"image": "siderolabs/sbc-raspberrypi", "name": "rpi_generic"},
    "customization": {
        "extraKernelArgs": ["console=ttyS0"],
        "systemExtensions": {"officialExtensions": ["siderolabs/iscsi-tools", "siderolabs/qemu-guest-agent"]},
    },
}
PATH = "/images/talos/profiles/bmc-rpi/v1.11.2/arm64/metal.raw"


@pytest.mark.stack(image_size=2 * 1024 * 1024, profiles=(BMC,), default_extensions=("iscsi-tools",))
@pytest_twisted.ensureDeferred
async def test_a_profile_serves_its_image_with_defaults_merged_and_a_local_id(stack):
    expected_id = parse_schematic(json.dumps(DOC)).id
    status, headers, body = await exchange(stack.url, PATH)
    assert status == 200 and headers["x-talos-schematic"] == expected_id
    assert body == stack.fake.raw_image(expected_id, "v1.11.2", "metal", "arm64")
    assert stack.fake.counts["schematics_post"] == 1  # POSTed before its first download
    status, _, checksum = await exchange(stack.url, PATH + ".sha256")
    assert status == 200 and checksum == f"{hashlib.sha256(body).hexdigest()}  metal.raw\n".encode()
    # the ID is computed locally: a hit, even with the factory gone
    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url())
    status, headers, again = await exchange(stack.url, PATH)
    assert status == 200 and headers["x-talos-cache"] == "HIT" and again == body


@pytest.mark.stack(profiles=(BMC,))
@pytest_twisted.ensureDeferred
async def test_unknown_profiles_and_query_strings_are_refused(stack):
    status, _, body = await exchange(stack.url, "/images/talos/profiles/nope/v1.11.2/arm64/metal.raw")
    assert status == 404 and "no profile named 'nope' (profiles: bmc-rpi)" in json.loads(body)["error"]
    status, _, body = await exchange(stack.url, PATH + "?extensions=x")
    assert status == 400


@pytest.mark.parametrize("text,fragment", [
    ("talos:\n  profiles:\n    Bad_Name: {}\n", "talos.profiles.Bad_Name: a profile name"),
    ("talos:\n  profiles:\n    x:\n      customization:\n        bootloader: grubby\n", "the image factory would refuse it"),
    ("talos:\n  profiles:\n    x:\n      customization:\n        systemExtensions: {}\n", "come from the profile's extensions"),
    ("talos:\n  profiles:\n    x:\n      colour: blue\n", "talos.profiles.x.colour: unknown key"),
])
def test_bad_profiles_stop_start_up_with_one_line(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path), environ={})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_good_profile_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("talos:\n  profiles:\n    bmc-rpi:\n      extensions: [qemu-guest-agent]\n      overlay: rpi_generic\n"
                    "      customization:\n        extraKernelArgs: [console=ttyS0]\n")
    [profile] = load_config(str(path), environ={}).talos.profiles
    assert profile == BMC
