"""Tests for talos_twisted.config: parsers, sources, precedence, messages."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from talos_twisted.config import (
    TALOS_KEYS,
    Config,
    ConfigError,
    PrefetchImage,
    TalosConfig,
    load_config,
    parse_bool,
    parse_duration,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "talos-images.yaml"
ENV = {"HOME": "/home/op", "XDG_CACHE_HOME": "/var/cache/op"}
CACHE = "/var/cache/op/talos-images"

GIB = 1024**3


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "talos-images.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def defaults(**talos) -> Config:
    return Config(talos=TalosConfig(**{"cache_directory": CACHE, **talos}))


# ------------------------------------------------------------------ parsers


@pytest.mark.parametrize(
    "value,expected",
    [
        (0, 0),
        (123, 123),
        ("123", 123),
        (" 123 ", 123),
        ("123B", 123),
        ("123b", 123),
        ("1K", 1024),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("1KB", 1000),
        ("500MiB", 500 * 1024**2),
        ("500mib", 500 * 1024**2),
        ("500M", 500 * 1024**2),
        ("10MB", 10_000_000),
        ("20GiB", 20 * GIB),
        ("20Gi", 20 * GIB),
        ("20 GiB", 20 * GIB),
        ("10GB", 10 * 1000**3),
        ("1.5GiB", 3 * GIB // 2),
        ("1.1GB", 1_100_000_000),
        ("2T", 2 * 1024**4),
        ("2TB", 2 * 1000**4),
        ("3TiB", 3 * 1024**4),
        (1e9, 1_000_000_000),
    ],
)
def test_parse_size_valid(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", ["", "12XB", "GiB", "1.5", "1.5B", "-1", "-5GiB", -1, "1 2", "1e9", "ten", True, None, [1], 1.5]
)
def test_parse_size_invalid(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_size_negative_message():
    with pytest.raises(ValueError, match="negative"):
        parse_size("-5GiB")


@pytest.mark.parametrize(
    "value,expected",
    [
        (45, 45.0),
        (1.5, 1.5),
        (0, 0.0),
        ("45", 45.0),
        ("2.5", 2.5),
        ("45s", 45.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("250ms", 0.25),
        ("1m250ms", 60.25),
        ("2d", 172800.0),
        (" 5M ", 300.0),
    ],
)
def test_parse_duration_valid(value, expected):
    assert parse_duration(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", ["", "s", "-5", "-5s", -1, "5x", "5 minutes", "h1", "inf", "nan", float("inf"), "1h30", True, None, [5]]
)
def test_parse_duration_invalid(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    "value,expected",
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("No", False),
        (" off ", False),
        ("0", False),
        (1, True),
        (0, False),
    ],
)
def test_parse_bool_valid(value, expected):
    assert parse_bool(value) is expected


@pytest.mark.parametrize("value", ["", "maybe", "2", 2, "t", None])
def test_parse_bool_invalid(value):
    with pytest.raises(ValueError):
        parse_bool(value)


# ------------------------------------------------------------------ defaults


def test_defaults():
    config = load_config(environ=ENV)
    assert config == defaults()
    talos = config.talos
    assert config.listen == "tcp:8080"
    assert talos.enabled is True
    assert talos.base_url == "https://factory.talos.dev"
    assert talos.cache_directory == CACHE
    assert talos.max_cache_size == 0 and talos.min_free_space == 0
    assert talos.default_extensions == ()
    assert talos.platforms == ("openstack", "metal", "nocloud")
    assert talos.compression == "zst"
    assert (talos.metadata_ttl, talos.connect_timeout, talos.metadata_timeout) == (900.0, 10.0, 30.0)
    assert (talos.first_byte_timeout, talos.build_timeout, talos.idle_timeout) == (45.0, 1260.0, 120.0)
    assert (talos.client_stall_timeout, talos.checksum_wait) == (300.0, 45.0)
    assert talos.max_downloads == 4
    assert talos.prefetch == ()


def test_talos_keys_are_the_fields_in_order():
    assert TALOS_KEYS == tuple(f.name for f in dataclasses.fields(TalosConfig))
    assert TALOS_KEYS[0] == "enabled" and TALOS_KEYS[-1] == "prefetch"


def test_frozen():
    config = load_config(environ=ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = "tcp:1"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.talos.enabled = False  # type: ignore[misc]


def test_prefetch_image_defaults():
    assert PrefetchImage() == PrefetchImage("latest", "amd64", "openstack", (), None)


# ------------------------------------------------------------------ cache directory


def test_cache_directory_from_xdg_cache_home():
    assert load_config(environ={"HOME": "/h", "XDG_CACHE_HOME": "/x/cache"}).talos.cache_directory == (
        "/x/cache/talos-images"
    )


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"])
def test_cache_directory_falls_back_to_home(xdg):
    environ = {"HOME": "/home/op"}
    if xdg is not None:
        environ["XDG_CACHE_HOME"] = xdg  # empty or relative is ignored, as the XDG spec says
    assert load_config(environ=environ).talos.cache_directory == "/home/op/.cache/talos-images"


def test_cache_directory_tilde_expanded_against_given_environ(tmp_path):
    path = write(tmp_path, "talos:\n  cache_directory: ~/images\n")
    assert load_config(path, environ=ENV).talos.cache_directory == "/home/op/images"
    env = {**ENV, "TALOS_CACHE_DIRECTORY": "~/from-env/"}
    assert load_config(path, environ=env).talos.cache_directory == "/home/op/from-env"


def test_cache_directory_relative_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(environ=ENV, overrides={"cache_directory": "cache"})
    assert config.talos.cache_directory == str(tmp_path / "cache")


# ------------------------------------------------------------------ file


def test_file_values(tmp_path):
    path = write(
        tmp_path,
        """\
        listen: "tcp:9090:interface=127.0.0.1"
        talos:
          enabled: no
          base_url: "http://factory.local:8080/talos/"
          cache_directory: /srv/talos
          max_cache_size: 20GiB
          min_free_space: 10GB
          default_extensions: [siderolabs/qemu-guest-agent, " iscsi-tools ", ""]
          platforms: "openstack, metal"
          compression: zst
          metadata_ttl: 1h
          connect_timeout: 5
          metadata_timeout: 1.5s
          first_byte_timeout: 50s
          build_timeout: 1h30m
          idle_timeout: 90
          client_stall_timeout: 10m
          checksum_wait: 0
          max_downloads: 2
          prefetch:
            - {}
            - version: v1.11.2
              arch: arm64
              platform: metal
              extensions: siderolabs/qemu-guest-agent,iscsi-tools
              overlay: rpi_generic
        """,
    )
    config = load_config(path, environ=ENV)
    assert config == Config(
        listen="tcp:9090:interface=127.0.0.1",
        talos=TalosConfig(
            enabled=False,
            base_url="http://factory.local:8080/talos",
            cache_directory="/srv/talos",
            max_cache_size=20 * GIB,
            min_free_space=10 * 1000**3,
            default_extensions=("siderolabs/qemu-guest-agent", "iscsi-tools"),
            platforms=("openstack", "metal"),
            compression="zst",
            metadata_ttl=3600.0,
            connect_timeout=5.0,
            metadata_timeout=1.5,
            first_byte_timeout=50.0,
            build_timeout=5400.0,
            idle_timeout=90.0,
            client_stall_timeout=600.0,
            checksum_wait=0.0,
            max_downloads=2,
            prefetch=(
                PrefetchImage(),
                PrefetchImage("v1.11.2", "arm64", "metal", ("siderolabs/qemu-guest-agent", "iscsi-tools"), "rpi_generic"),
            ),
        ),
    )


@pytest.mark.parametrize("text", ["", "# only comments\n", "talos:\n", "talos:\n  # enabled: false\n"])
def test_empty_file_or_section_gives_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text), environ=ENV) == defaults()


def test_list_with_every_item_commented_out_is_empty(tmp_path):
    path = write(tmp_path, "talos:\n  default_extensions:\n    # - siderolabs/gvisor\n")
    assert load_config(path, environ=ENV).talos.default_extensions == ()


def test_lists_deduplicated_in_order(tmp_path):
    path = write(tmp_path, "talos:\n  platforms: [metal, openstack, metal]\n")
    assert load_config(path, environ=ENV).talos.platforms == ("metal", "openstack")


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    message = error_of(missing, environ=ENV)
    assert message.startswith(missing + ": ")
    assert "No such file" in message


def test_directory_as_file(tmp_path):
    assert error_of(str(tmp_path), environ=ENV).startswith(str(tmp_path) + ": ")


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "talos:\n  enabled: [true\n  platforms: x\n")
    message = error_of(path, environ=ENV)
    assert message.startswith(path + ": invalid YAML at line ")


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "talos:\n  enabled: true\n  enabled: false\n")
    message = error_of(path, environ=ENV)
    assert message.startswith(path + ": invalid YAML at line 3")
    assert "duplicate key 'enabled'" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"listen: \xff\xfe\n")
    assert error_of(str(path), environ=ENV).startswith(str(path) + ": ")


@pytest.mark.parametrize("text", ["- listen\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    message = error_of(path, environ=ENV)
    assert message.startswith(path + ": the top level must be a mapping")


def test_talos_not_a_mapping(tmp_path):
    assert error_of(write(tmp_path, "talos: [a]\n"), environ=ENV).startswith("talos: expected a mapping")


# ------------------------------------------------------------------ unknown keys


def test_unknown_top_level_key(tmp_path):
    message = error_of(write(tmp_path, "lisen: tcp:80\n"), environ=ENV)
    assert message == "lisen: unknown key (did you mean listen?)"


def test_unknown_talos_key_with_suggestion(tmp_path):
    message = error_of(write(tmp_path, "talos:\n  cache_dir: /x\n"), environ=ENV)
    assert message == "talos.cache_dir: unknown key (did you mean cache_directory?)"


def test_unknown_talos_key_without_suggestion_lists_keys(tmp_path):
    message = error_of(write(tmp_path, "talos:\n  zzzz: 1\n"), environ=ENV)
    assert message.startswith("talos.zzzz: unknown key (known keys: enabled, base_url,")


def test_unknown_prefetch_key(tmp_path):
    path = write(tmp_path, "talos:\n  prefetch:\n    - {}\n    - arc: arm64\n")
    assert error_of(path, environ=ENV) == "talos.prefetch[1].arc: unknown key (did you mean arch?)"


def test_unknown_override():
    assert error_of(environ=ENV, overrides={"max_cache": "1"}) == "--max-cache: unknown option (did you mean --max-cache-size?)"


def test_unknown_talos_env_variables_are_ignored():
    env = {**ENV, "TALOS_FOO": "x", "TALOS_PREFETCH": "garbage", "TALOSCONFIG": "/x"}
    assert load_config(environ=env) == defaults()


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        (
            "talos:\n  max_cache_size: 12XB\n",
            "talos.max_cache_size: '12XB' is not a size (use bytes or a unit like 500MiB, 20GiB, 10GB)",
        ),
        ("talos:\n  min_free_space: -1\n", "talos.min_free_space: -1 is negative; a size must be 0 or more"),
        ("talos:\n  enabled: maybe\n", "talos.enabled: 'maybe' is not a boolean (use true/false, yes/no, on/off, 1/0)"),
        ("talos:\n  first_byte_timeout: 5 minutes\n", "talos.first_byte_timeout: '5 minutes' is not a duration"),
        ("talos:\n  connect_timeout: 0\n", "talos.connect_timeout: 0 must be more than 0 seconds"),
        ("talos:\n  idle_timeout: -5s\n", "talos.idle_timeout: '-5s' is negative"),
        ("talos:\n  metadata_ttl: 1h30\n", "talos.metadata_ttl: '1h30' is not a duration"),
        ("talos:\n  compression: gzip\n", "talos.compression: 'gzip' is not one of zst, xz, none"),
        ("talos:\n  max_downloads: 0\n", "talos.max_downloads: 0 is not a whole number of 1 or more"),
        ("talos:\n  max_downloads: 2.5\n", "talos.max_downloads: 2.5 is not a whole number"),
        ("talos:\n  max_downloads: true\n", "talos.max_downloads: True is not a whole number"),
        ("talos:\n  base_url: ftp://factory.talos.dev\n", "talos.base_url: 'ftp://factory.talos.dev' is not an http(s) URL"),
        ("talos:\n  base_url: https://\n", "talos.base_url: 'https://' is not an http(s) URL"),
        ("talos:\n  base_url: factory.talos.dev\n", "talos.base_url: 'factory.talos.dev' is not an http(s) URL"),
        ("talos:\n  base_url: https://host:99999\n", "talos.base_url: 'https://host:99999' is not an http(s) URL"),
        ("talos:\n  base_url: https://h/x?y=1\n", "talos.base_url: 'https://h/x?y=1' must be scheme://host"),
        ("talos:\n  base_url: 5\n", "talos.base_url: expected a string, not a number"),
        ("talos:\n  cache_directory: ''\n", "talos.cache_directory: must not be empty"),
        ("talos:\n  max_cache_size:\n", "talos.max_cache_size: no value given"),
        ("talos:\n  platforms: []\n", "talos.platforms: must name at least one item"),
        ("talos:\n  platforms: [Metal]\n", "talos.platforms: 'Metal' is not a platform name"),
        ("talos:\n  platforms: {a: 1}\n", "talos.platforms: expected a list or a comma-separated string, not a mapping"),
        ("talos:\n  default_extensions: [1]\n", "talos.default_extensions: expected a string, not a number"),
        ("talos:\n  default_extensions: 'a b'\n", "talos.default_extensions: 'a b' is not an extension name"),
        ("listen: ''\n", "listen: '' is not a server endpoint description like tcp:8080"),
        ("listen: 8080\n", "listen: 8080 is not a server endpoint description"),
        ("talos:\n  prefetch: openstack\n", "talos.prefetch: expected a list of images"),
        ("talos:\n  prefetch: [openstack]\n", "talos.prefetch[0]: expected a mapping with keys version, arch,"),
        ("talos:\n  prefetch:\n    - arch: x86\n", "talos.prefetch[0].arch: 'x86' is not one of amd64, arm64"),
        ("talos:\n  prefetch:\n    - version: 1.11.2\n", "talos.prefetch[0].version: '1.11.2' is not 'latest' or a Talos version"),
        ("talos:\n  prefetch:\n    - version: 1.9\n", "talos.prefetch[0].version: 1.9 is not 'latest'"),
        ("talos:\n  prefetch:\n    - overlay: ''\n", "talos.prefetch[0].overlay: must not be empty"),
        ("talos:\n  prefetch:\n    - platform: aws\n", "talos.prefetch[0].platform: 'aws' is not one of the served platforms"),
    ],
)
def test_bad_value_messages(tmp_path, yaml_text, expected):
    message = error_of(write(tmp_path, yaml_text), environ=ENV)
    assert message.startswith(expected)


def test_prefetch_versions_accepted(tmp_path):
    path = write(
        tmp_path,
        "talos:\n  prefetch:\n    - version: v1.12.0-beta.1\n    - version: latest\n      platform: nocloud\n",
    )
    images = load_config(path, environ=ENV).talos.prefetch
    assert [(i.version, i.platform) for i in images] == [("v1.12.0-beta.1", "openstack"), ("latest", "nocloud")]


def test_prefetch_platform_checked_against_final_platforms(tmp_path):
    path = write(tmp_path, "talos:\n  platforms: [metal]\n  prefetch:\n    - platform: metal\n")
    assert load_config(path, environ=ENV).talos.prefetch == (PrefetchImage(platform="metal"),)
    message = error_of(path, environ={**ENV, "TALOS_PLATFORMS": "openstack"})
    assert message == "talos.prefetch[0].platform: 'metal' is not one of the served platforms (openstack)"


def test_env_error_names_variable():
    message = error_of(environ={**ENV, "TALOS_MAX_CACHE_SIZE": "12XB"})
    assert message == "TALOS_MAX_CACHE_SIZE: '12XB' is not a size (use bytes or a unit like 500MiB, 20GiB, 10GB)"


def test_env_bool_error_names_variable():
    assert error_of(environ={**ENV, "TALOS_ENABLED": "nope"}).startswith("TALOS_ENABLED: 'nope' is not a boolean")


def test_override_error_names_option():
    message = error_of(environ=ENV, overrides={"max_cache_size": "12XB"})
    assert message.startswith("--max-cache-size: '12XB' is not a size")
    assert error_of(environ=ENV, overrides={"listen": ""}).startswith("--listen: ")
    assert error_of(environ=ENV, overrides={"first_byte_timeout": "0"}).startswith("--first-byte-timeout: ")


def test_bad_file_value_is_reported_even_when_overridden(tmp_path):
    path = write(tmp_path, "talos:\n  max_downloads: zero\n")
    assert error_of(path, environ={**ENV, "TALOS_MAX_DOWNLOADS": "3"}).startswith("talos.max_downloads: ")


def test_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_multiline_value_message_is_one_line(tmp_path):
    path = write(tmp_path, 'talos:\n  compression: "x\\ny"\n')
    assert error_of(path, environ=ENV).startswith("talos.compression: 'x\\ny'")


# ------------------------------------------------------------------ environment


def test_env_values():
    env = {
        **ENV,
        "TALOS_ENABLED": "false",
        "TALOS_BASE_URL": "https://factory.example.com/",
        "TALOS_CACHE_DIRECTORY": "/data/cache",
        "TALOS_MAX_CACHE_SIZE": "100GiB",
        "TALOS_MIN_FREE_SPACE": "5GB",
        "TALOS_DEFAULT_EXTENSIONS": " siderolabs/qemu-guest-agent , ,iscsi-tools,",
        "TALOS_PLATFORMS": "openstack,metal",
        "TALOS_COMPRESSION": "none",
        "TALOS_METADATA_TTL": "5m",
        "TALOS_CONNECT_TIMEOUT": "3",
        "TALOS_METADATA_TIMEOUT": "20s",
        "TALOS_FIRST_BYTE_TIMEOUT": "55s",
        "TALOS_BUILD_TIMEOUT": "30m",
        "TALOS_IDLE_TIMEOUT": "1m",
        "TALOS_CLIENT_STALL_TIMEOUT": "2m",
        "TALOS_CHECKSUM_WAIT": "10s",
        "TALOS_MAX_DOWNLOADS": "8",
    }
    talos = load_config(environ=env).talos
    assert talos == TalosConfig(
        enabled=False,
        base_url="https://factory.example.com",
        cache_directory="/data/cache",
        max_cache_size=100 * GIB,
        min_free_space=5 * 1000**3,
        default_extensions=("siderolabs/qemu-guest-agent", "iscsi-tools"),
        platforms=("openstack", "metal"),
        compression="none",
        metadata_ttl=300.0,
        connect_timeout=3.0,
        metadata_timeout=20.0,
        first_byte_timeout=55.0,
        build_timeout=1800.0,
        idle_timeout=60.0,
        client_stall_timeout=120.0,
        checksum_wait=10.0,
        max_downloads=8,
    )


@pytest.mark.parametrize("value", ["false", "0", "no", "OFF"])
def test_enabled_false_via_env(value):
    assert load_config(environ={**ENV, "TALOS_ENABLED": value}).talos.enabled is False


def test_env_empty_list_clears_file_list(tmp_path):
    path = write(tmp_path, "talos:\n  default_extensions: [siderolabs/gvisor]\n")
    assert load_config(path, environ={**ENV, "TALOS_DEFAULT_EXTENSIONS": ""}).talos.default_extensions == ()


def test_env_platforms_must_not_be_empty():
    assert error_of(environ={**ENV, "TALOS_PLATFORMS": " , "}).startswith("TALOS_PLATFORMS: must name at least one")


# ------------------------------------------------------------------ precedence


def test_precedence_file_env_override(tmp_path):
    path = write(
        tmp_path,
        """\
        listen: tcp:1111
        talos:
          max_cache_size: 1GiB
          first_byte_timeout: 10s
          compression: zst
          enabled: false
          platforms: [metal]
        """,
    )
    env = {
        **ENV,
        "TALOS_FIRST_BYTE_TIMEOUT": "20s",
        "TALOS_COMPRESSION": "none",
        "TALOS_ENABLED": "true",
    }
    overrides = {
        "listen": "tcp:2222",
        "compression": "xz",
        "enabled": None,  # not given on the command line: ignored
        "max_downloads": 7,  # already typed
        "platforms": ("openstack", "nocloud"),
    }

    only_file = load_config(path, environ=ENV).talos
    assert (only_file.max_cache_size, only_file.first_byte_timeout, only_file.compression) == (GIB, 10.0, "zst")
    assert only_file.enabled is False

    config = load_config(path, environ=env, overrides=overrides)
    assert config.listen == "tcp:2222"  # override over file
    assert config.talos.max_cache_size == GIB  # file only
    assert config.talos.first_byte_timeout == 20.0  # env over file
    assert config.talos.compression == "xz"  # override over env over file
    assert config.talos.enabled is True  # env over file; None override ignored
    assert config.talos.max_downloads == 7  # override over default
    assert config.talos.platforms == ("openstack", "nocloud")


def test_overrides_as_command_line_strings():
    overrides = {
        "enabled": "no",
        "max_cache_size": "2GiB",
        "default_extensions": "a/b,c",
        "build_timeout": "1h",
        "max_downloads": "2",
        "base_url": "http://localhost:8081/",
    }
    talos = load_config(environ=ENV, overrides=overrides).talos
    assert talos.enabled is False
    assert talos.max_cache_size == 2 * GIB
    assert talos.default_extensions == ("a/b", "c")
    assert talos.build_timeout == 3600.0
    assert talos.max_downloads == 2
    assert talos.base_url == "http://localhost:8081"


def test_typed_prefetch_override_is_validated():
    ok = load_config(environ=ENV, overrides={"prefetch": (PrefetchImage(version="v1.10.0"),)})
    assert ok.talos.prefetch == (PrefetchImage(version="v1.10.0"),)
    message = error_of(environ=ENV, overrides={"prefetch": [PrefetchImage(arch="s390x")]})
    assert message.startswith("--prefetch[0].arch: 's390x' is not one of amd64, arm64")


# ------------------------------------------------------------------ example file


def test_example_file_loads_to_the_defaults():
    assert load_config(str(EXAMPLE), environ=ENV) == defaults()


def test_example_file_names_every_key():
    text = EXAMPLE.read_text()
    for key in ("listen", *TALOS_KEYS):
        assert f"{key}:" in text, key
    # The commented-out prefetch example must itself be valid once uncommented.
    lines = text.splitlines()
    start = lines.index("  # prefetch:")
    example = "\n".join(line.replace("# ", "", 1) for line in lines[start:])
    config = load_config(environ=ENV, overrides={"prefetch": __import__("yaml").safe_load(example)["prefetch"]})
    assert config.talos.prefetch == (PrefetchImage(extensions=("siderolabs/qemu-guest-agent",)),)


# ------------------------------------------------------------------ names shared with URLs (talos_twisted.names)


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("talos:\n  default_extensions: [a..b]\n", "talos.default_extensions: 'a..b' is not an extension name"),
        ("talos:\n  prefetch:\n    - overlay: x/../y\n", "talos.prefetch[0].overlay: 'x/../y' is not an overlay name"),
        ("talos:\n  prefetch:\n    - version: v01.2.3\n", "talos.prefetch[0].version: 'v01.2.3' is not 'latest'"),
        ("talos:\n  prefetch:\n    - version: v1.2.3-a..b\n", "talos.prefetch[0].version: 'v1.2.3-a..b' is not"),
        ("talos:\n  prefetch:\n    - version: v1.\u0661.2\n", "talos.prefetch[0].version: 'v1.\u0661.2' is not"),
        ("talos:\n  platforms: [metal\u0661]\n", "talos.platforms: 'metal\u0661' is not a platform name"),
        ("talos:\n  max_downloads: '\u0661'\n", "talos.max_downloads: '\u0661' is not a whole number"),
        ("talos:\n  max_cache_size: \u0661GiB\n", "talos.max_cache_size: '\u0661GiB' is not a size"),
        ("talos:\n  idle_timeout: \u0661m\n", "talos.idle_timeout: '\u0661m' is not a duration"),
    ],
)
def test_names_and_numbers_are_ascii_and_url_valid(tmp_path, yaml_text, expected):
    path = tmp_path / "talos-images.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    assert error_of(str(path), environ=ENV).startswith(expected)


def test_extension_lists_are_bounded_like_urls():
    names = [f"ext{i}" for i in range(64)]
    assert load_config(environ=ENV, overrides={"default_extensions": names}).talos.default_extensions == tuple(names)
    message = error_of(environ=ENV, overrides={"default_extensions": names + ["one-more"]})
    assert message == "--default-extensions: too many items (65; at most 64)"
    image = {"extensions": names + ["one-more"]}
    assert error_of(environ=ENV, overrides={"prefetch": [image]}).startswith("--prefetch[0].extensions: too many items")
