import pytest

from talos_twisted.catalog import Catalog, UnknownName
from talos_twisted.request import BadRequest, NotFound, parse_image_request

PLATFORMS = ("openstack", "metal", "nocloud")


def parse(version="v1.11.2", arch="amd64", filename="openstack.raw", query=None):
    return parse_image_request(version, arch, filename, query or {}, PLATFORMS)


def test_plain_request():
    r = parse()
    assert (r.version, r.arch, r.platform, r.extensions, r.overlay, r.checksum) == (
        "v1.11.2", "amd64", "openstack", (), None, False)


def test_latest_checksum_and_lists():
    r = parse("latest", "arm64", "metal.raw.sha256",
              {b"extensions": [b"b,a", b"a"], b"overlays": [b"rpi_generic"]})
    assert r.version == "latest" and r.checksum and r.platform == "metal"
    assert r.extensions == ("b", "a") and r.overlay == "rpi_generic"


def test_version_without_v_is_normalised():
    assert parse("1.11.2").version == "v1.11.2"


@pytest.mark.parametrize("kwargs,fragment", [
    ({"version": "v1.11"}, "not 'latest' or a Talos version"),
    ({"arch": "x86"}, "architecture 'x86'"),
    ({"filename": "openstack.qcow2"}, "'<platform>.raw'"),
    ({"filename": "../x.raw"}, "'<platform>.raw'"),
    ({"query": {b"extension": [b"a"]}}, "unknown query parameter 'extension'"),
    ({"query": {b"overlay": [b"a,b"]}}, "at most one overlay"),
    ({"query": {b"overlay": [b"a"], b"overlays": [b"b"]}}, "at most one overlay"),
    ({"query": {b"extensions": [b"../../etc"]}}, "not a valid extension"),
    ({"query": {b"extensions": [b"\xff"]}}, "not valid UTF-8"),
])
def test_bad_requests_name_the_problem(kwargs, fragment):
    with pytest.raises(BadRequest) as e:
        parse(**kwargs)
    assert fragment in str(e.value)


def test_platform_not_served_is_not_found():
    with pytest.raises(NotFound, match="'aws' is not served"):
        parse(filename="aws.raw")


CAT = Catalog.from_factory(
    "v1.11.2",
    [{"name": "siderolabs/qemu-guest-agent"}, {"name": "siderolabs/iscsi-tools"},
     {"name": "acme/iscsi-tools"}, {"name": "siderolabs/gvisor"}, {"nope": 1}],
    [{"name": "rpi_generic", "image": "siderolabs/sbc-raspberrypi"}, {"name": "rock4cplus", "image": "x"}],
)


def test_extension_short_and_full_names():
    assert CAT.resolve_extension("qemu-guest-agent") == "siderolabs/qemu-guest-agent"
    assert CAT.resolve_extension("acme/iscsi-tools") == "acme/iscsi-tools"


def test_ambiguous_short_name_lists_both():
    with pytest.raises(UnknownName, match="ambiguous.*acme/iscsi-tools, siderolabs/iscsi-tools"):
        CAT.resolve_extension("iscsi-tools")


def test_unknown_extension_suggests():
    with pytest.raises(UnknownName) as e:
        CAT.resolve_extension("qemu-guest-agnt")
    assert "qemu-guest-agent" in e.value.suggestions and "did you mean" in str(e.value)


def test_overlay_dash_alias_and_unknown():
    assert CAT.resolve_overlay("rpi-generic").image == "siderolabs/sbc-raspberrypi"
    with pytest.raises(UnknownName, match="unknown overlay 'rpi'"):
        CAT.resolve_overlay("rpi")


def test_fragment_suggests_names_containing_it():
    with pytest.raises(UnknownName) as e:
        CAT.resolve_extension("qemu")
    assert "qemu-guest-agent" in e.value.suggestions


# --- property tests: any input is a valid request or a 400/404, never an exception -------

from hypothesis import given, settings, strategies as st  # noqa: E402

from talos_twisted.errors import TalosError  # noqa: E402
from talos_twisted.request import ImageKey, parse_image_request as _parse  # noqa: E402

_TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["latest", "v1.11.2", "v1.١.2", "..", "%2e%2e", "openstack.raw", "metal.raw.sha256", "amd64", "arm64", "/etc"]
)


@settings(max_examples=400, deadline=None, database=None)
@given(version=_TEXT, arch=_TEXT, filename=_TEXT,
       query=st.dictionaries(st.sampled_from(["extensions", "overlay", "schematic", "x", "overlays"]),
                             st.lists(_TEXT, max_size=3), max_size=3))
def test_any_input_is_a_request_or_a_clear_error(version, arch, filename, query):
    try:
        req = _parse(version, arch, filename, query, ("openstack", "metal"))
    except TalosError as e:
        assert e.status in (400, 404) and e.message and "\n" not in e.message
        return
    # what parses names a cache path under the root: only validated ASCII components
    key = ImageKey(req.version if req.version != "latest" else "v1.11.2", req.arch, "0" * 64, req.platform)
    parts = key.relpath.split("/")
    assert all(p and p not in (".", "..") and p.isascii() and "\\0" not in p for p in parts)
    assert len(parts) == 4
