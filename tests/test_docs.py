"""The operator docs (docs/*.md) and the systemd unit say what the code does.

- every ``talos.KEY`` / ``TALOS_KEY`` mentioned exists in the schema, every YAML example with a
  ``talos:`` section loads, and every ``| Key | Default |`` table row has the schema's default;
- every route path mentioned exists (or is marked planned), and so does every query
  parameter of an image URL;
- every metric name mentioned is one ``talos_twisted/metrics.py`` defines;
- every message quoted in the tables of docs/operations.md occurs in the package's source
  (matched against the source's own string templates, f-strings and log formats);
- conf/talos-images.service parses, has the hardening directives and runs
  ``twistd --nodaemon --pidfile= talos-images --config /etc/talos-images/config.yaml``, a
  command line twistd itself accepts; ``systemd-analyze`` checks it where it is installed.

Something documented before it is implemented is listed in an HTML comment of its page,
``<!-- planned: talos.profiles, /images/talos/profiles/{name}/..., ?schematic= -->``, next to
a visible "Planned" note; once it exists, `test_planned_items_are_not_implemented_yet`
asks for the note to go.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from talos_twisted.config import ARCHES, PREFETCH_KEYS, TALOS_KEYS, TALOS_SCHEMA, load_config
from talos_twisted.request import QUERY_KEYS
from talos_twisted.web import TalosImages

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"
DOCS = sorted(DOCS_DIR.glob("*.md"))
OPERATIONS = DOCS_DIR / "operations.md"
UNIT = ROOT / "conf" / "talos-images.service"
EXAMPLE_CONFIG = ROOT / "conf" / "talos-images.yaml"
PACKAGE = ROOT / "talos_twisted"
METRICS_SOURCE = PACKAGE / "metrics.py"
ENV = {"HOME": "/home/op", "XDG_CACHE_HOME": "/var/cache/op"}
SCHEMA = {k.name: k for k in TALOS_SCHEMA}

EXEC_START = "twistd --nodaemon --pidfile= talos-images --config /etc/talos-images/config.yaml"


def doc_id(path: Path) -> str:
    return path.name


def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# ------------------------------------------------------------------ planned items


_PLANNED = re.compile(r"<!--\s*planned:\s*(.*?)\s*-->", re.S)


def planned_in(text: str) -> set[str]:
    return {item.strip() for m in _PLANNED.finditer(text) for item in m.group(1).split(",") if item.strip()}


def planned_keys(text: str) -> set[str]:
    return {p[len("talos."):] for p in planned_in(text) if p.startswith("talos.")}


def planned_params(text: str) -> set[str]:
    return {p[1:].rstrip("=") for p in planned_in(text) if p.startswith("?")}


def planned_routes(text: str) -> set[str]:
    return {concrete(p) for p in planned_in(text) if p.startswith("/")}


def test_the_docs_are_there():
    for name in ("metal3.md", "operations.md", "extensions.md"):
        assert (DOCS_DIR / name).is_file(), name


# ------------------------------------------------------------------ talos: keys


# `talos.KEY`, not part of a longer dotted name (factory.talos.dev) or a path
_DOTTED_KEY = re.compile(r"(?<![\w./-])talos\.([a-z_]+)\b")
_ENV_KEY = re.compile(r"\bTALOS_([A-Z][A-Z_]*)\b")


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_talos_key_mentioned_exists(doc):
    text = text_of(doc)
    allowed = set(TALOS_KEYS) | planned_keys(text)
    dotted = set(_DOTTED_KEY.findall(text))
    env = {name.lower() for name in _ENV_KEY.findall(text)}
    assert dotted - allowed == set(), f"{doc.name} mentions talos keys the schema lacks"
    assert env - set(TALOS_KEYS) == set(), f"{doc.name} mentions TALOS_* variables of no key"


def yaml_blocks(text: str) -> Iterator[str]:
    for m in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.S | re.M):
        yield m.group(1)


def talos_sections(doc: Path) -> Iterator[dict]:
    for block in yaml_blocks(text_of(doc)):
        for document in yaml.safe_load_all(block):
            if isinstance(document, dict) and isinstance(document.get("talos"), dict):
                yield document


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_yaml_examples_are_valid_configuration(doc, tmp_path):
    later = planned_keys(text_of(doc))
    for i, document in enumerate(talos_sections(doc)):
        talos = document["talos"]
        assert set(talos) - set(TALOS_KEYS) - later == set(), f"{doc.name}: unknown keys in example {i}"
        for item in talos.get("prefetch") or []:
            assert set(item) <= set(PREFETCH_KEYS), f"{doc.name}: prefetch entry {item}"
        runnable = {**document, "talos": {k: v for k, v in talos.items() if k not in later}}
        path = tmp_path / f"example-{i}.yaml"
        path.write_text(yaml.safe_dump(runnable), encoding="utf-8")
        load_config(str(path), environ=ENV)  # raises ConfigError naming the bad value


def key_tables(text: str) -> Iterator[tuple[str, str]]:
    """(key, default cell) of the rows of tables whose header starts `| Key | Default |`."""
    rows = text.splitlines()
    for i, line in enumerate(rows):
        if re.match(r"^\|\s*Key\s*\|\s*Default\s*\|", line):
            for row in rows[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                yield cells[0].strip("`"), cells[1]


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_key_tables_give_the_schemas_defaults(doc):
    for key, cell in key_tables(text_of(doc)):
        assert key in SCHEMA, f"{doc.name}: {key} is no talos key"
        shown = re.match(r"`([^`]*)`", cell)
        assert shown, f"{doc.name}: the default of {key} is not in backticks: {cell!r}"
        assert SCHEMA[key].convert(shown.group(1), key) == SCHEMA[key].default, f"{doc.name}: default of {key}"


# ------------------------------------------------------------------ routes and query parameters


_OPERATOR_PATHS = r"(?:images/talos/|healthz\b|readyz\b|metrics\b|status\.json)"
# a `{placeholder}` may hold a `|` (`{version|latest}`); elsewhere `|` ends a table cell
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/" + _OPERATOR_PATHS + r"(?:\{[^{}\s`]*\}|[^\s`\"'<>)|{}])*)")
_PATH = re.compile(r"(?<![\w.:/-])(/" + _OPERATOR_PATHS + r"(?:\{[^{}\s`]*\}|[^\s`\"'<>)|,{}])*)")
_SAMPLES = {"version": "v1.11.2", "arch": "amd64", "platform": "openstack", "name": "worker", "NAME": "worker"}


def concrete(path: str) -> str:
    """A documented path with its `{placeholders}` filled in, without query or trailing punctuation."""
    def fill(m: re.Match[str]) -> str:
        name = m.group(1).split("|")[0]  # {version|latest}: the first of the alternatives
        return _SAMPLES.get(name, name.lower())

    path = re.sub(r"\{([\w|]+)\}", fill, path)
    return path.split("?", 1)[0].rstrip(".,;:")


def mentioned_urls(text: str) -> set[str]:
    found = {m.group(1) for m in _URL.finditer(text)} | {m.group(1) for m in _PATH.finditer(text)}
    return {u.rstrip(".,;:") for u in found if "…" not in u and "..." not in u}


_ROUTES = TalosImages.app.url_map.bind("localhost")


def route_exists(path: str) -> bool:
    try:
        _ROUTES.match(path, method="GET")
    except (NotFound, RequestRedirect):
        return False
    except MethodNotAllowed:
        return True
    return True


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_route_mentioned_exists_or_is_planned(doc):
    text = text_of(doc)
    later = planned_routes(text)
    missing = sorted(
        url for url in mentioned_urls(text) if concrete(url) not in later and not route_exists(concrete(url))
    )
    assert missing == [], f"{doc.name} mentions routes that do not exist (and are not marked planned)"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_query_parameter_of_an_image_url_exists_or_is_planned(doc):
    text = text_of(doc)
    allowed = set(QUERY_KEYS) | planned_params(text)
    for url in mentioned_urls(text):
        if "?" in url:
            names = {k for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
            assert names <= allowed, f"{doc.name}: {url}"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_quoted_lists_of_query_parameters_and_arches_are_the_codes(doc):
    text = text_of(doc)
    for quoted in re.findall(r"unknown query parameter '[^']*' \(allowed: ([^)]*)\)", text):
        assert quoted == ", ".join(QUERY_KEYS), f"{doc.name}: (allowed: {quoted})"
    for quoted in re.findall(r"is not one of (amd64[^`|]*)`", text):
        assert quoted == ", ".join(ARCHES), f"{doc.name}: is not one of {quoted}"


def test_planned_items_are_not_implemented_yet():
    for doc in DOCS:
        text = text_of(doc)
        for key in planned_keys(text):
            assert key not in TALOS_KEYS, f"talos.{key} exists now: drop its 'planned' marks in {doc.name}"
        for route in planned_routes(text):
            assert not route_exists(route), f"{route} exists now: drop its 'planned' marks in {doc.name}"
        for param in planned_params(text):
            assert param not in QUERY_KEYS, f"?{param}= exists now: drop its 'planned' marks in {doc.name}"


def test_the_route_check_tells_real_routes_from_others():
    assert route_exists("/images/talos/v1.11.2/amd64/openstack.raw")
    assert route_exists("/images/talos/latest/extensions")
    assert route_exists(concrete("/images/talos/profiles/{name}/{version}/{arch}/{platform}.raw.sha256"))
    assert not route_exists("/images/talos/v1.11.2/amd64/openstack/metal.raw")
    urls = mentioned_urls("see `http://h:8080/images/talos/v1.11.2/amd64/metal.raw?overlay=x`, /readyz.")
    assert urls == {"/images/talos/v1.11.2/amd64/metal.raw?overlay=x", "/readyz"}


# ------------------------------------------------------------------ metric names


_METRIC = re.compile(r"\btalos_(?!twisted\b|images\b|fake_factory\b)[a-z0-9_]+\b")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_metric_mentioned_is_defined(doc):
    source = METRICS_SOURCE.read_text(encoding="utf-8")
    declared = set(re.findall(r"\"(talos_[a-z0-9_]+)\"", source))
    for name in set(_METRIC.findall(text_of(doc))):
        bases = {name} | {name[: -len(s)] for s in _SUFFIXES if name.endswith(s)}
        assert bases & declared, f"{doc.name} mentions metric {name}, which metrics.py does not define"


def test_operations_lists_the_metrics():
    text = text_of(OPERATIONS)
    assert "/metrics" in text and "talos_http_requests_total" in text and "Alert on" in text


# ------------------------------------------------------------------ the message table


class Template:
    """A string of the package's source as a regex: what varies in it is a group."""

    def __init__(self, parts: list[str | None], where: str):
        self.where = where
        self.literal = "".join(p for p in parts if p is not None)
        self.regex = re.compile(
            "".join("(.*?)" if p is None else re.escape(p) for p in parts), re.S
        )


def _plain_parts(value: str) -> list[str | None]:
    # a Twisted log format (or str.format template): {name} and {name:spec} vary
    parts: list[str | None] = []
    for i, piece in enumerate(re.split(r"\{[^{}]*\}", value)):
        if i:
            parts.append(None)
        if piece:
            parts.append(piece)
    return parts


def source_templates() -> list[Template]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue  # the fake factory's messages are not the daemon's
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inside_fstring = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.JoinedStr):
                parts: list[str | None] = []
                for v in node.values:
                    if isinstance(v, ast.Constant):
                        parts.append(str(v.value))
                    elif not parts or parts[-1] is not None:
                        parts.append(None)
                found.append(Template(parts, where))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside_fstring:
                found.append(Template(_plain_parts(node.value), where))
    return found


TEMPLATES = source_templates()
_PLACEHOLDER = re.compile(r"\{[^{}]*\}|…")
_WORD = re.compile(r"[A-Za-z]{2,}")


def sample_of(message: str) -> str:
    """A documented message with each `{placeholder}` replaced by a value, 'X'."""
    return _PLACEHOLDER.sub("X", message)


def _words(text: str) -> int:
    return len([w for w in _WORD.findall(text) if w != "X"])


_LIST = re.compile(r"[\w./'-]+(?:, [\w./'-]+)+")


def _reads_like_a_sentence(text: str) -> bool:
    """Two words or more: text of the source's, to be checked too; a value is not (a name,
    a number, a list "a, b, c", a placeholder 'X')."""
    return _words(text) >= 2 and _LIST.fullmatch(text.strip()) is None


def covered(text: str, whole: bool, depth: int = 0) -> str | None:
    """Where in the source `text` comes from: a template matching it (all of it when
    `whole`, else with only placeholder-like residue around), whose variable parts are
    themselves either placeholders or, when they read like a sentence, other templates."""
    if depth > 4:
        return None
    for t in TEMPLATES:
        if whole:
            if len(t.literal) < 10:
                continue  # "{label}: {problem}" matches anything with a colon
            m = t.regex.fullmatch(text)
            if m is None:
                continue
        else:
            if len(t.literal) < 4:
                continue
            m = t.regex.search(text)
            if m is None or _words(text[: m.start()] + text[m.end():]) > 0:
                continue
        if all(not _reads_like_a_sentence(g) or covered(g, False, depth + 1) for g in m.groups()):
            return t.where
    return None


def message_tables(text: str) -> Iterator[tuple[str, str]]:
    """(status cell, message) of every row of the `| Status | Message | Meaning | Action |` tables."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\|\s*Status\s*\|\s*Message\s*\|\s*Meaning\s*\|\s*Action\s*\|", line):
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                quoted = re.match(r"`([^`]+)`", cells[1])
                assert quoted, f"no message in backticks in row {row!r}"
                yield cells[0], quoted.group(1)


MESSAGES = list(message_tables(text_of(OPERATIONS)))


def test_operations_has_a_message_table():
    assert len(MESSAGES) >= 100
    statuses = {re.match(r"\S+", s).group(0) for s, _ in MESSAGES}
    for status in ("400", "404", "502", "503", "504", "507", "exit", "log"):
        assert status in statuses, status


@pytest.mark.parametrize("status, message", MESSAGES, ids=[m[:60] for _, m in MESSAGES])
def test_each_documented_message_occurs_in_the_source(status, message):
    assert re.match(r"^(\d{3}\b|exit 1$|log (info|warn|error|failure)$|— )", status), status
    assert covered(sample_of(message), True), f"no string in talos_twisted/ makes {message!r}"


def test_the_message_check_refuses_what_the_source_does_not_say():
    assert covered(sample_of("unknown extension '{name}' for Talos {version} (did you mean {s}?)"), True)
    assert covered(sample_of("talos-images: cache directory: cache directory {root} is writable by others (mode {m}); chmod o-w {root}"), True)
    assert not covered(sample_of("unknown extension '{name}' in Talos {version}"), True)
    assert not covered(sample_of("talos-images: cache directory: cache directory {root} is haunted"), True)
    assert not covered("the image factory exploded", True)


def test_every_error_kind_has_a_row():
    """Each message of an HTTP error the routes raise is in the table (a spot check by kind)."""
    quoted = "\n".join(m for _, m in MESSAGES)
    for fragment in (
        "is still building this image", "waiting for a download slot", "is still being downloaded",
        "is unreachable: {cause}", "has not answered within", "did not start sending", "is larger than the cache",
        "is corrupt", "sent a different image", "declared a raw size", "gave up after",
        "cannot write to the cache", "not enough free space", "too many connections",
        "configuration error", "cannot listen on", "no longer matches sha256",
    ):
        assert fragment in quoted, fragment


# ------------------------------------------------------------------ the systemd unit


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """`[Section]` -> [(key, value)], in order, repeated keys kept (systemd's syntax: `#`/`;`
    comments, `\\` continuations, `Key=Value` with the value possibly empty)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"line {number}: {raw!r}"
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"line {number}: a setting before any [Section]"
        key, eq, value = line.partition("=")
        assert eq and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"line {number}: {raw!r}"
        current.append((key.strip(), value.strip()))
    assert not pending, "the file ends in a continuation"
    return sections


UNIT_TEXT = text_of(UNIT)
SERVICE = parse_unit(UNIT_TEXT).get("Service", [])


def values(key: str) -> list[str]:
    return [v for k, v in SERVICE if k == key]


def last(key: str) -> str | None:
    found = values(key)
    return found[-1] if found else None


def test_the_unit_has_its_sections():
    assert set(parse_unit(UNIT_TEXT)) == {"Unit", "Service", "Install"}
    assert ("WantedBy", "multi-user.target") in parse_unit(UNIT_TEXT)["Install"]


@pytest.mark.parametrize("key, value", [
    ("DynamicUser", "yes"),
    ("CacheDirectory", "talos-images"),
    ("ConfigurationDirectory", "talos-images"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("NoNewPrivileges", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("UMask", "0027"),
    ("KillSignal", "SIGTERM"),
    ("Restart", "on-failure"),
    ("CapabilityBoundingSet", ""),
])
def test_the_unit_hardens(key, value):
    assert last(key) == value, f"{key}={last(key)!r}, expected {value!r}"


def test_the_unit_restricts_address_families_and_system_calls():
    assert set((last("RestrictAddressFamilies") or "").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in values("SystemCallFilter")
    assert last("AmbientCapabilities") in (None, ""), "no capability unless the operator adds one"
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in UNIT_TEXT, "the comment on binding port 80"


def test_the_unit_puts_the_cache_in_its_cache_directory():
    assert "TALOS_CACHE_DIRECTORY=%C/talos-images" in values("Environment")


def test_the_unit_runs_twistd_in_the_foreground_with_the_config():
    [exec_start] = values("ExecStart")
    assert exec_start == "/opt/talos-images/bin/" + EXEC_START
    assert "/opt/talos-images" in UNIT_TEXT.split("[Unit]")[0], "the header says where it is installed"


def test_twistd_accepts_the_command_line():
    from twisted.scripts.twistd import ServerOptions

    [exec_start] = values("ExecStart")
    args = exec_start.split()[1:]
    args[args.index("/etc/talos-images/config.yaml")] = str(EXAMPLE_CONFIG)
    options = ServerOptions()
    options.parseOptions(args)
    assert options["nodaemon"] and options["pidfile"] == ""
    assert options.subCommand == "talos-images"
    assert options.subOptions.config.talos.platforms  # the plugin read the configuration file


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_the_unit_bounds_the_stop():
    assert 5 <= _seconds(last("TimeoutStopSec") or "0") <= 120


def test_reload_is_only_offered_when_the_daemon_handles_sighup():
    handles = any("SIGHUP" in p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    reload = last("ExecReload") or ""
    if "HUP" in reload:
        assert handles, "SIGHUP ends a daemon that installs no handler: ExecReload would stop it"
    elif not handles:
        assert "#ExecReload=/bin/kill -HUP $MAINPID" in UNIT_TEXT, "say why there is no ExecReload"


def test_memory_deny_write_execute_stays_off():
    # pyOpenSSL's callbacks (cffi ffi.callback, set up by Twisted for ALPN on every TLS
    # connection) need write+execute memory: with it, no https:// factory and no ssl: listener
    assert last("MemoryDenyWriteExecute") != "yes"


_MDWE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3+)
    sys.exit(3)
from OpenSSL import SSL
try:
    SSL.Context(SSL.TLS_METHOD).set_alpn_select_callback(lambda conn, protocols: protocols[0])
except MemoryError:
    sys.exit(4)
"""


def test_why_memory_deny_write_execute_is_off():
    """With the kernel's memory-deny-write-execute, TLS set-up fails as it would under the unit.

    3: the kernel has no PR_SET_MDWE (this machine's has); 0: TLS works under it, and the
    unit could say MemoryDenyWriteExecute=yes again."""
    code = subprocess.run([sys.executable, "-c", _MDWE_PROBE], timeout=60).returncode
    assert code == 4, {3: "this kernel has no PR_SET_MDWE", 0: "TLS works under MDWE: turn it on in the unit"}.get(code)


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is needed (.ci/run installs systemd)"
    return exe


def _unit_for_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's twistd (verify checks it exists)."""
    twistd = Path(sys.executable).with_name("twistd")
    assert twistd.exists(), f"no twistd next to {sys.executable}"
    copy = tmp_path / "talos-images.service"
    copy.write_text(UNIT_TEXT.replace("/opt/talos-images/bin/twistd", str(twistd)), encoding="utf-8")
    return copy


def test_systemd_analyze_verify(tmp_path):
    exe = _systemd_analyze()
    run = subprocess.run([exe, "verify", str(_unit_for_here(tmp_path))], capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "talos-images.service" not in out, out


def test_systemd_analyze_security_exposure(tmp_path):
    exe = _systemd_analyze()
    run = subprocess.run(
        [exe, "security", "--offline=true", "--no-pager", str(_unit_for_here(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    assert m is not None, run.stderr[-500:]
    assert float(m.group(1)) <= 2.0, run.stdout[-2000:]
