import pytest

from talos_twisted.versions import InvalidVersion, Version, newest_stable, parse_version_list


def test_parse_and_str():
    assert str(Version.parse("v1.11.2")) == "v1.11.2"
    assert str(Version.parse("1.12.0-beta.1")) == "v1.12.0-beta.1"


@pytest.mark.parametrize("bad", ["", "latest", "v1.2", "v1.2.3.4", "v01.2.3", "v1.2.3-", "../v1.2.3", "v1.2.3/x"])
def test_rejects_malformed(bad):
    with pytest.raises(InvalidVersion):
        Version.parse(bad)


def test_ordering_follows_semver():
    raw = ["v1.11.0", "v1.11.0-alpha.10", "v1.11.0-alpha.2", "v1.10.7", "v1.11.0-rc.0", "v1.11.0-beta.1"]
    assert [str(v) for v in parse_version_list(raw)] == [
        "v1.10.7", "v1.11.0-alpha.2", "v1.11.0-alpha.10", "v1.11.0-beta.1", "v1.11.0-rc.0", "v1.11.0",
    ]


def test_newest_stable_skips_prereleases_and_junk():
    vs = parse_version_list(["v1.10.7", "v1.11.0", "v1.11.1", "v1.12.0-alpha.1", 5, "garbage"])
    assert str(newest_stable(vs)) == "v1.11.1"
    assert newest_stable(parse_version_list(["v1.12.0-alpha.1"])) is None
