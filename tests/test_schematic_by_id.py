"""?schematic=<id>: images of schematics made elsewhere (the factory's UI, talosctl, Omni)."""

import json

import pytest
import pytest_twisted

from talos_twisted.schematic import parse_schematic

from .rawhttp import exchange
from .test_readiness import closed_url

MADE_ELSEWHERE = """customization:
    extraKernelArgs:
        - console=ttyS0
    systemExtensions:
        officialExtensions:
            - siderolabs/iscsi-tools
"""
PATH = "/images/talos/v1.11.2/amd64/openstack.raw"


@pytest.mark.stack(image_size=2 * 1024 * 1024, default_extensions=("qemu-guest-agent",))
@pytest_twisted.ensureDeferred
async def test_an_image_by_schematic_id_as_it_is_then_hits_with_the_factory_down(stack):
    sid = stack.fake.add_schematic(MADE_ELSEWHERE)
    assert sid == parse_schematic(MADE_ELSEWHERE).id
    status, headers, body = await exchange(stack.url, f"{PATH}?schematic={sid}")
    # as it is: no default extension merged
    assert status == 200 and headers["x-talos-schematic"] == sid
    assert body == stack.fake.raw_image(sid, "v1.11.2", "openstack", "amd64")
    assert stack.fake.counts["schematics_get"] == 1
    status, headers, _ = await exchange(stack.url, f"{PATH}.sha256?schematic={sid}")
    assert status == 200
    # a restart with the factory unreachable: the schematic is kept on disk, the image cached
    await stack.stop_daemon()
    await stack.start_daemon(base_url=await closed_url())
    status, headers, again = await exchange(stack.url, f"{PATH}?schematic={sid}")
    assert status == 200 and headers["x-talos-cache"] == "HIT" and again == body


@pytest_twisted.ensureDeferred
async def test_an_unknown_schematic_is_404_and_bad_combinations_are_400(stack):
    status, _, body = await exchange(stack.url, f"{PATH}?schematic={'ab' * 32}")
    assert status == 404 and "does not know schematic" in json.loads(body)["error"]
    for query, fragment in (
        ("?schematic=ABC", "64 lowercase hexadecimal"),
        (f"?schematic={'ab' * 32}&extensions=qemu-guest-agent", "cannot be combined"),
        (f"?schematic={'ab' * 32}&schematic={'cd' * 32}", "one schematic ID"),
    ):
        status, _, body = await exchange(stack.url, PATH + query)
        assert status == 400 and fragment in json.loads(body)["error"], query
