"""Tests for talos_twisted.names: the names the URL parser and the configuration both accept."""

from __future__ import annotations

import re

import pytest

from talos_twisted import names
from talos_twisted.names import (
    ARCHES,
    COMPRESSIONS,
    MAX_EXTENSIONS,
    is_arch,
    is_compression,
    is_extension_name,
    is_overlay_name,
    is_platform_name,
    is_version_spec,
)
from talos_twisted.versions import Version

ARABIC_ONE = "\u0661"  # "١": str.isdigit() says yes, a name says no
FULLWIDTH_A = "\uff41"  # "ａ"


def test_constants():
    assert ARCHES == ("amd64", "arm64")
    assert COMPRESSIONS == ("zst", "xz", "none")
    assert MAX_EXTENSIONS == 64


@pytest.mark.parametrize(
    "name",
    [
        "qemu-guest-agent",
        "siderolabs/qemu-guest-agent",
        "rpi_generic",
        "a",
        "0",
        "A.b_c-d/e",
        "ext.v1",
        "a" * 128,
    ],
)
def test_extension_names_valid(name):
    assert is_extension_name(name)
    assert is_overlay_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 129,
        "-leading-dash",
        ".hidden",
        "/absolute",
        "_x",
        "a..b",
        "siderolabs/../etc",
        "a b",
        "a,b",
        "a\n",  # `$` would accept this; fullmatch does not
        "a\x00",
        "ext" + ARABIC_ONE,
        FULLWIDTH_A,
        "caf\u00e9",
    ],
)
def test_extension_names_invalid(name):
    assert not is_extension_name(name)
    assert not is_overlay_name(name)


@pytest.mark.parametrize("name", ["openstack", "metal", "nocloud", "aws", "0", "a-b", "a" * 32])
def test_platform_names_valid(name):
    assert is_platform_name(name)


@pytest.mark.parametrize(
    "name", ["", "Metal", "-x", "a_b", "a.b", "a/b", "a" * 33, "metal\n", "metal" + ARABIC_ONE, FULLWIDTH_A]
)
def test_platform_names_invalid(name):
    assert not is_platform_name(name)


@pytest.mark.parametrize(
    "text", ["latest", "v1.11.2", "v0.0.0", "v10.20.30", "v1.12.0-beta.1", "v1.12.0-alpha", "v1.12.0-rc.0.1"]
)
def test_version_specs_valid(text):
    assert is_version_spec(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Latest",
        "latest\n",
        "1.11.2",  # the URL parser may add the v; a configured version is written in full
        "v1.11",
        "v1.11.2.3",
        "v01.11.2",  # semver: no leading zeros
        "v1.011.2",
        "v1.11.2-",
        "v1.11.2-.beta",
        "v1.11.2-beta.",
        "v1.11.2-beta..1",
        "v1.11.2-beta_1",
        "v1.11.2+build",
        "v1.11.2\n",
        "v1." + ARABIC_ONE + ".2",
        "v1.11.2-" + FULLWIDTH_A,
    ],
)
def test_version_specs_invalid(text):
    assert not is_version_spec(text)


@pytest.mark.parametrize("text", ["v1.11.2", "v0.0.0", "v1.12.0-beta.1", "v1.12.0-alpha"])
def test_version_spec_is_what_the_version_parser_prints(text):
    # A configured version must name the image a URL with that version names.
    assert str(Version.parse(text)) == text


def test_arches_and_compressions():
    assert all(is_arch(a) for a in ARCHES) and not is_arch("x86_64") and not is_arch("AMD64")
    assert all(is_compression(c) for c in COMPRESSIONS) and not is_compression("gz")


def test_patterns_are_ascii_only():
    for pattern in (names.NAME_PATTERN, names.PLATFORM_PATTERN, names.VERSION_PATTERN):
        assert pattern.flags & re.ASCII
