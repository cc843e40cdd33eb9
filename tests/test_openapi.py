"""The OpenAPI document (`talos_twisted/openapi.py`, served at `/openapi.json`) is kept true.

- it is a valid OpenAPI 3.1 document;
- every Klein route has its operations (the same methods) and every operation its route;
  a route family documented ahead of its routes (the factory mirror) is left out of the
  served document until it is routed, never one of our own;
- its parameter patterns accept exactly what the parsers accept;
- schemathesis, run against a daemon in front of the fake factory (both child processes, on
  127.0.0.1), finds no 5xx on our routes (the mirror may answer the factory's 500, nothing
  else of 5xx) and no answer the document does not describe: its status, Content-Type,
  headers and body. A second, doctored run shows the check can fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import given, settings, strategies as st
from openapi_spec_validator import validate
from werkzeug.exceptions import MethodNotAllowed, NotFound

from talos_twisted import openapi, openapi_parts
from talos_twisted.names import is_extension_name, is_platform_name
from talos_twisted.versions import InvalidVersion, Version
from talos_twisted.web import TalosImages

from .childproc import Child

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
URL_MAP = TalosImages.app.url_map


def is_mirror(item):
    return all(openapi_parts.MIRROR in op["tags"] for _, op in ops_of(item))


def ops_of(item):
    return [(m.upper(), op) for m, op in item.items() if m in openapi.METHODS]


def rule_shape(rule):
    """A rule's path as a regex over document paths: each `<converter:name>` is one segment
    or part of one (a document may name a part of it: `{platform}.raw` for `<filename>`)."""
    parts = re.split(r"<[^>]+>", rule.rule)
    return re.compile("[^/]+".join(re.escape(p) for p in parts))


# ------------------------------------------------------------------ the document


def test_the_document_is_valid_openapi_3_1():
    full = openapi.document()
    validate(full)
    served = openapi.document(openapi.served_by(URL_MAP))
    validate(served)
    assert full["openapi"] == "3.1.0"
    ids = [op["operationId"] for _, _, op in openapi.operations(full)]
    assert len(ids) == len(set(ids)), "operationIds are unique"


def test_every_route_has_its_operations_and_every_operation_its_route():
    doc = openapi.document()
    adapter = URL_MAP.bind("localhost")
    documented: dict[str, set[str]] = {}  # rule -> the methods documented
    ahead = []
    for path, item in doc["paths"].items():
        sample = openapi.sample_path(path, item, doc["components"])
        for method, _ in ops_of(item):
            try:
                rule, _ = adapter.match(sample, method=method, return_rule=True)
            except (NotFound, MethodNotAllowed):
                assert is_mirror(item), f"{method} {path} is documented, and no route serves {sample}"
                ahead.append((method, path))
                continue
            assert rule_shape(rule).fullmatch(path), f"{path} is documented, {sample} is served by {rule.rule}"
            documented.setdefault(rule.rule, set()).add(method)
    for rule in URL_MAP.iter_rules():
        methods = set(rule.methods)
        if rule.rule.split("/")[1] in ("versions", "version", "schematics", "pxe"):
            methods.discard("HEAD")  # werkzeug adds it; these answer 405 to it, as the factory's router
        assert documented.get(rule.rule) == methods, f"{rule.rule}: {sorted(methods)} are served"
    served = openapi.document(openapi.served_by(URL_MAP))
    left_out = {(m, p) for p, item in doc["paths"].items() for m, _ in ops_of(item)} - {
        (m, p) for p, item in served["paths"].items() for m, _ in ops_of(item)}
    assert left_out == set(ahead), "the served document is the routed part of the whole"


def test_the_route_check_sees_a_route_the_document_lacks_and_an_operation_without_a_route():
    doc = openapi.document()
    routed = openapi.served_by(URL_MAP)
    assert routed("/images/talos/v1.11.2/amd64/openstack.raw", "HEAD")
    assert not routed("/images/talos/v1.11.2/amd64/openstack.raw", "POST")
    assert not routed("/images/talos/v1.11.2/amd64", "GET")
    item = doc["paths"]["/images/talos/{version}/{arch}/{platform}.raw"]
    assert openapi.sample_path("/images/talos/{version}/{arch}/{platform}.raw", item, doc["components"]) == (
        "/images/talos/v1.11.2/amd64/openstack.raw")
    only_ours = openapi.document(lambda path, method: not path.startswith(("/version", "/schematics", "/image/",
                                                                           "/pxe")))
    assert "/versions" not in only_ours["paths"] and "/healthz" in only_ours["paths"]


def test_every_operation_documents_its_errors():
    doc = openapi.document()
    for path, method, op in openapi.operations(doc):
        statuses = set(op["responses"])
        assert {"400", "408", "413", "414", "431", "503"} <= statuses, f"{method} {path}: the server layer's"
        if "{" in path:
            assert "404" in statuses, f"{method} {path}: an empty segment is a 404"
        assert "default" not in statuses, "a default response would document any status"
        if openapi_parts.MIRROR not in op["tags"]:
            assert "500" not in statuses, f"{method} {path}: a 500 of ours is a bug, not an answer"
        else:
            assert "500" in statuses, f"{method} {path}: the factory's 500"
        if method == "HEAD":
            assert all("content" not in r for r in op["responses"].values()), f"HEAD {path} has no body"


def _fullmatch(pattern, text):
    # the document's patterns are ECMA-262 with ^...$; Python reads them the same for text
    # without a newline
    return re.search(pattern, text) is not None


_TEXT = st.text(alphabet="abcsuretvz019.-_/A\u0663 ", max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_TEXT, st.sampled_from([
    "latest", "v1.11.2", "1.11.2", "v1.12.0-beta.1", "v1.2.3-a.b.c.d", "v1.2.3-a.b.c.d.e", "v01.2.3", "v1.2",
    "v1234567.0.0", "v1.11.2-", "v\u0661.1.1",
])))
def test_the_version_pattern_is_the_parser(text):
    def parses(t):
        try:
            Version.parse(t)
        except InvalidVersion:
            return False
        return True

    assert _fullmatch(openapi_parts.VERSION, text) == (text == "latest" or parses(text)), text
    assert _fullmatch(openapi_parts.MIRROR_VERSION, text) == parses(text), text


@settings(max_examples=300, deadline=None)
@given(st.one_of(_TEXT, st.sampled_from([
    "openstack", "metal-secureboot", "secureboot", "secureboot-metal", "metal-secureboot-secureboot",
    "asecureboot-x", "a--b", "-a", "Metal", "x" * 32, "x" * 33,
])))
def test_the_platform_pattern_is_the_parser(text):
    assert _fullmatch(openapi_parts.PLATFORM, text) == is_platform_name(text), text


@settings(max_examples=300, deadline=None)
@given(st.one_of(_TEXT, st.sampled_from(["qemu-guest-agent", "siderolabs/gvisor", "a..b", ".a", "a" * 128,
                                         "a" * 129, "rpi_generic"])))
def test_the_name_pattern_is_the_parser(text):
    assert _fullmatch(openapi_parts.NAME, text) == (text == "" or is_extension_name(text)), text


@pytest_twisted.ensureDeferred
async def test_the_route_serves_the_routed_document(memory):
    resp, body = await memory.get("/openapi.json")
    assert resp.code == 200
    assert resp.headers.getRawHeaders("Content-Type") == ["application/json"]
    assert resp.headers.getRawHeaders("Cache-Control") == ["max-age=60"]
    assert json.loads(body) == openapi.document(openapi.served_by(URL_MAP))
    head, empty = await memory.request("HEAD", "/openapi.json")
    assert head.code == 200 and empty == b""


# ------------------------------------------------------------------ what schemathesis found


UNBUILDABLE = """overlay:
    image: siderolabs/iscsi-tools
    name: iscsi
customization: {}
"""


@pytest.mark.parametrize("suffix", ["", ".sha256"])
@pytest_twisted.ensureDeferred
async def test_a_schematic_made_elsewhere_that_the_factory_cannot_build_is_a_400_not_a_502(memory, suffix):
    """Its overlay is in no catalog: the factory answers 400 when it builds it (POST accepts it).
    The client's schematic is wrong, not the factory's answer."""
    sid = memory.fake.add_schematic(UNBUILDABLE)
    resp, body = await memory.get(f"/images/talos/v1.11.2/amd64/openstack.raw{suffix}?schematic={sid}")
    doc = json.loads(body)
    assert resp.code == 400 and doc["status"] == 400, doc
    assert doc["error"].startswith(f"the image factory cannot build schematic {sid} for Talos v1.11.2: "), doc
    assert 'official overlay "iscsi" is not available' in doc["error"], doc


# ------------------------------------------------------------------ schemathesis against a daemon


def twistd(args, log: Path, cwd: Path) -> Child:
    """A twistd child process, its output also in `log`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cwd / "xdg")}
    return Child([str(BIN / "twistd"), "--nodaemon", "--pidfile=", *args], cwd=cwd, env=env, log=log)


def port_of(child: Child, timeout: float = 30.0) -> int:
    return int(child.wait_for(r"Site starting on (\d+)", timeout).group(1))


def _get(url, timeout=30.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """The fake factory and a daemon in front of it (a profile configured), as twistd runs them;
    yields the daemon's base URL, the working directory and the daemon's Child."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    children = []
    try:
        fake = twistd(["talos-fake-factory", "--listen", "tcp:0:interface=127.0.0.1", "--image-size", "1048576"],
                     tmp / "fake.log", tmp)
        children.append(fake)
        config = tmp / "config.yaml"
        config.write_text(
            "listen: tcp:0:interface=127.0.0.1\n"
            "talos:\n"
            f"  base_url: http://127.0.0.1:{port_of(fake)}\n"
            f"  cache_directory: {tmp / 'cache'}\n"
            "  first_byte_timeout: 10s\n"
            "  checksum_wait: 10s\n"
            "  profiles:\n"
            "    worker:\n"
            "      extensions: [qemu-guest-agent]\n"
        )
        talos = twistd(["talos-images", "--config", str(config)], tmp / "daemon.log", tmp)
        children.append(talos)
        url = f"http://127.0.0.1:{port_of(talos)}"
        # a factory call that worked: /readyz says ready for the next 60 s (the run takes ~15 s)
        assert _get(url + "/images/talos/versions")[0] == 200
        assert _get(url + "/readyz")[0] == 200
        yield url, tmp, talos
    finally:
        for child in reversed(children):
            child.stop(signal.SIGTERM, 15)


SCHEMATHESIS_CONFIG = """\
# a bounded, reproducible run: one worker, at most 25 examples per operation and phase
workers = 1

[generation]
max-examples = 25
deterministic = true
database = "none"

[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_headers_conformance.enabled = true
response_schema_conformance.enabled = true
unsupported_method.enabled = true
allow_header_conformance.enabled = true

# the mirror answers as the factory does, 500 included (a malformed version); no other 5xx
[[operations]]
include-tag = "factory mirror"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "500"]

# the server layer refuses a body on anything but POST (413) before routing, so an
# undeclared method sent with the POST's body gets that, not the route's 405
[[operations]]
include-operation-id = "factoryCreateSchematic"
checks.unsupported_method.enabled = false
"""


def schemathesis(tmp: Path, location: str, *args: str, timeout: float = 90.0) -> tuple[int, str]:
    config = tmp / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    run = subprocess.run(
        [str(BIN / "st"), "--config-file", str(config), "run", location, "--no-color", *args],
        cwd=tmp, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )
    (tmp / "schemathesis.log").write_text(run.stdout + run.stderr)  # for a look after a failure
    return run.returncode, run.stdout + run.stderr


def test_schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_describe(daemon):
    url, tmp, talos = daemon
    served = json.loads(_get(url + "/openapi.json")[1])
    code, out = schemathesis(tmp, url + "/openapi.json")
    assert code == 0, out[-20000:]
    # every operation was tested (schemathesis leaves out the GET of the document it loaded)
    count = len(list(openapi.operations(served)))
    selected = re.search(r"Selected: (\d+)/(\d+)\b", out)
    tested = re.search(r"Tested: (\d+)\b", out)
    assert selected and tested, out[-3000:]
    assert int(selected[1]) == int(selected[2]) == int(tested[1]) >= count - 1, out[-3000:]
    assert "Traceback" not in talos.output(), talos.output()[-5000:]


def test_schemathesis_fails_on_an_undocumented_status_and_on_a_5xx(daemon):
    """The same checks against a doctored document: the image route's 400 left out, and the
    mirror's catalog tagged as one of ours (its 500 for a malformed version is then ours)."""
    url, tmp, _ = daemon
    doc = json.loads(_get(url + "/openapi.json")[1])
    del doc["paths"]["/images/talos/{version}/{arch}/{platform}.raw"]["get"]["responses"]["400"]
    doc["paths"]["/version/{version}/extensions/official"]["get"]["tags"] = ["discovery"]
    doctored = tmp / "doctored.json"
    doctored.write_text(json.dumps(doc))
    code, out = schemathesis(tmp, str(doctored), "--url", url, "--include-operation-id", "getImage",
                             "--include-operation-id", "factoryGetExtensions", "--phases", "examples,coverage")
    assert code != 0, out[-5000:]
    assert "ST103 Undocumented status code" in out and "[400]" in out, out[-5000:]
    assert "ST101 Server error" in out and "[500]" in out, out[-5000:]
