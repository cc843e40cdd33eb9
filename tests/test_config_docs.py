"""The docs say what the schema says: conf/talos-images.yaml and the README's `talos:` table.

Each key is defined once in talos_twisted/config/schema.py (default, converter, doc). These
tests fail when a key is added, renamed or changes its default or doc there and the example
file or the README is not updated, or when the docs describe a key that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from talos_twisted.config import PrefetchImage, load_config
from talos_twisted.config.convert import parse_listen, via
from talos_twisted.config.schema import LISTEN, PREFETCH_SCHEMA, TALOS_SCHEMA, keys_of, key

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "talos-images.yaml"
README = ROOT / "README.md"
ENV = {"HOME": "/home/op", "XDG_CACHE_HOME": "/var/cache/op"}

TALOS = {k.name: k for k in TALOS_SCHEMA}
COMPUTED = {k.name for k in TALOS_SCHEMA if k.shown is not None}  # defaults the environment decides


def plain(doc: str) -> str:
    """A doc as a YAML comment writes it: no Markdown backticks."""
    return doc.replace("`", "")


# ------------------------------------------------------------------ the example YAML file

EXAMPLE_LINES = EXAMPLE.read_text(encoding="utf-8").splitlines()
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<commented># )?(?P<name>[a-z_]+):(?: |$)")


def key_line(name: str, indent: str) -> int:
    """The line of *name* (set, or else commented out) at *indent*."""
    commented = None
    for i, line in enumerate(EXAMPLE_LINES):
        m = KEY_LINE.match(line)
        if m and m["indent"] == indent and m["name"] == name:
            if not m["commented"]:
                return i
            commented = i if commented is None else commented
    assert commented is not None, f"{name} is not in {EXAMPLE.name}"
    return commented


def comment_block_above(index: int, indent: str) -> list[str]:
    """The comment lines directly above a key, up to the previous key (set or commented)."""
    block: list[str] = []
    for line in reversed(EXAMPLE_LINES[:index]):
        if not line.startswith(indent + "# ") or KEY_LINE.match(line):
            break
        block.insert(0, line[len(indent) + 2 :])
    return block


def example_document() -> dict:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def test_example_file_loads_to_the_defaults():
    config = load_config(str(EXAMPLE), environ=ENV)
    for k in TALOS_SCHEMA:
        if k.name not in COMPUTED:
            assert getattr(config.talos, k.name) == k.default, k.name
    assert config.listen == LISTEN.default


def test_example_file_sets_every_key_but_the_computed_ones():
    document = example_document()
    assert list(document) == ["listen", "talos"]
    # Commented out only where the default depends on the environment.
    assert list(document["talos"]) == [k.name for k in TALOS_SCHEMA if k.name not in COMPUTED]


@pytest.mark.parametrize("name", sorted(COMPUTED))
def test_example_file_comments_out_computed_keys_with_a_valid_value(name):
    line = EXAMPLE_LINES[key_line(name, "  ")]
    assert line.startswith(f"  # {name}: ")
    value = yaml.safe_load(line.replace("# ", "", 1))[name]
    TALOS[name].convert(value, name)  # a ConfigError here: the example is wrong
    assert TALOS[name].shown in "\n".join(comment_block_above(key_line(name, "  "), "  "))


def test_example_file_names_no_unknown_key():
    for line in EXAMPLE_LINES:
        m = KEY_LINE.match(line)
        if m and m["indent"] == "  ":
            assert m["name"] in TALOS, line
        elif m and m["indent"] == "":
            assert m["name"] in ("listen", "talos"), line


@pytest.mark.parametrize("key", TALOS_SCHEMA, ids=lambda k: k.name)
def test_example_file_comment_is_the_doc(key):
    block = comment_block_above(key_line(key.name, "  "), "  ")
    assert block and block[0] == plain(key.doc), key.name


def test_example_file_listen_comment_is_the_doc():
    assert comment_block_above(key_line("listen", ""), "") == [plain(LISTEN.doc)]


@pytest.mark.parametrize("key", PREFETCH_SCHEMA, ids=lambda k: k.name)
def test_example_prefetch_item_comments_are_the_docs(key):
    start = EXAMPLE_LINES.index("  # prefetch:")
    [line] = [line for line in EXAMPLE_LINES[start:] if re.match(rf"  #  [ -]+{key.name}:", line)]
    assert line.endswith("# " + plain(key.doc)), line


def test_example_prefetch_item_is_valid_and_shows_the_defaults():
    start = EXAMPLE_LINES.index("  # prefetch:")
    uncommented = "\n".join(line.replace("# ", "", 1) for line in EXAMPLE_LINES[start:])
    [item] = yaml.safe_load(uncommented)["prefetch"]
    assert list(item) == [k.name for k in PREFETCH_SCHEMA]
    config = load_config(environ=ENV, overrides={"prefetch": [item]})
    # Every shown value is the default except the example extension.
    assert config.talos.prefetch == (PrefetchImage(extensions=("siderolabs/qemu-guest-agent",)),)


# ------------------------------------------------------------------ the README's table


def readme_rows() -> list[tuple[str, str, str]]:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("`talos:` keys (environment variable `TALOS_<KEY>`):")
    assert lines[start + 2 : start + 4] == ["| Key | Default | Meaning |", "|---|---|---|"]
    rows = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        m = re.fullmatch(r"\| `([a-z_]+)` \| `([^`]*)` \| (.*) \|", line)
        assert m, f"not a `key` | `default` | meaning row: {line}"
        rows.append((m[1], m[2], m[3]))
    return rows


def test_readme_lists_exactly_the_keys_in_order():
    assert [name for name, _, _ in readme_rows()] == [k.name for k in TALOS_SCHEMA]


@pytest.mark.parametrize("row", readme_rows(), ids=lambda r: r[0])
def test_readme_default_is_the_default(row):
    name, default, _ = row
    k = TALOS[name]
    if k.shown is not None:
        assert default == k.shown
    else:
        # Read as the YAML file would read it: `15m`, `[a, b]`, `true`.
        assert k.convert(yaml.safe_load(default), f"README {name}") == k.default


@pytest.mark.parametrize("row", readme_rows(), ids=lambda r: r[0])
def test_readme_meaning_starts_with_the_doc(row):
    name, _, meaning = row
    # The README may say more after the doc (a link, a detail), never something else first.
    assert meaning.startswith(TALOS[name].doc), name


def test_readme_and_example_show_the_same_defaults():
    document = example_document()["talos"]
    for name, default, _ in readme_rows():
        if name in document:
            k = TALOS[name]
            assert k.convert(document[name], name) == k.convert(yaml.safe_load(default), name)


def test_readme_listen_option_states_the_default():
    [row] = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `--listen ")]
    assert f"default `{LISTEN.default}`" in row


# ------------------------------------------------------------------ the schema itself


def test_every_key_has_a_one_line_doc():
    for k in (LISTEN, *TALOS_SCHEMA, *PREFETCH_SCHEMA):
        assert k.doc and "\n" not in k.doc and k.doc == k.doc.strip(), k.name
        assert "|" not in k.doc, k.name  # it goes into a Markdown table cell


def test_a_field_declared_without_key_is_refused():
    @dataclass(frozen=True)
    class Partial:
        listen: str = key("tcp:1", via(parse_listen), "doc")
        forgotten: int = 0

    with pytest.raises(TypeError, match="Partial.forgotten must be declared with key"):
        keys_of(Partial)
