import os
import subprocess
import sys

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection

from talos_twisted.tap import Options, makeService

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def parse(args, env=None, monkeypatch=None):
    opts = Options()
    opts.parseOptions(args)
    return opts


def test_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for k in list(os.environ):
        if k.startswith("TALOS_"):
            monkeypatch.delenv(k)
    opts = parse([])
    assert opts.config.listen == "tcp:8080"
    assert opts.config.talos.base_url == "https://factory.talos.dev"
    assert opts.config.talos.cache_directory == str(tmp_path / "talos-images")
    assert opts.config.talos.max_cache_size == 0


def test_command_line_over_environment_over_file(monkeypatch, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("listen: tcp:7000\ntalos:\n  base_url: http://file:1\n  max_cache_size: 1GiB\n  compression: zst\n")
    monkeypatch.setenv("TALOS_BASE_URL", "http://env:2")
    monkeypatch.setenv("TALOS_MAX_CACHE_SIZE", "2GiB")
    opts = parse(["--config", str(conf), "--max-cache-size", "500MiB", "--cache-dir", str(tmp_path / "c")])
    t = opts.config.talos
    assert (opts.config.listen, t.base_url, t.max_cache_size, t.compression) == (
        "tcp:7000", "http://env:2", 500 * 1024 * 1024, "zst")
    assert t.cache_directory == str(tmp_path / "c")


def test_bad_value_is_one_line_naming_the_key(monkeypatch):
    monkeypatch.delenv("TALOS_MAX_CACHE_SIZE", raising=False)
    with pytest.raises(SystemExit) as e:
        parse(["--max-cache-size", "12XB"])
    msg = str(e.value.code)
    assert "--max-cache-size" in msg and "\n" not in msg


def test_make_service_listens_on_the_endpoint(tmp_path):
    opts = parse(["--cache-dir", str(tmp_path), "--listen", "tcp:0:interface=127.0.0.1"])
    svc = makeService(opts)
    assert IServiceCollection.providedBy(svc)
    listeners = [s for s in svc if isinstance(s, StreamServerEndpointService)]
    assert len(listeners) == 1


def test_twistd_lists_the_plugins_and_rejects_bad_config(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run([TWISTD, "--help"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert "talos-images" in out.stdout and "talos-fake-factory" in out.stdout
    bad = subprocess.run([TWISTD, "talos-images", "--max-cache-size", "lots"],
                         env={**env, "XDG_CACHE_HOME": str(tmp_path)}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "--max-cache-size" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
