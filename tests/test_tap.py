import os
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection

from talos_twisted.graceful import Listener
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


@pytest_twisted.ensureDeferred
async def test_make_service_listens_on_the_endpoint(tmp_path):
    opts = parse(["--cache-dir", str(tmp_path / "c"), "--listen", "tcp:0:interface=127.0.0.1"])
    svc = makeService(opts)
    assert IServiceCollection.providedBy(svc)
    def walk(node):
        yield node
        if IServiceCollection.providedBy(node):
            for child in node:
                yield from walk(child)

    listeners = [s for s in walk(svc) if isinstance(s, Listener)]
    assert len(listeners) == 1 and listeners[0].description == "tcp:0:interface=127.0.0.1"
    assert listeners[0].port is not None, "bound before twistd starts the services"
    await listeners[0].stopService()


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


def _twistd(args, tmp_path, timeout=60):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    return subprocess.run([TWISTD, "--nodaemon", "--pidfile=", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def _one_line_failure(result, *fragments):
    out = (result.stderr + result.stdout).strip()
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    assert out.count("\n") == 0, out
    for fragment in fragments:
        assert fragment in out, out


@pytest.mark.parametrize("cache_dir,fragment", [
    ("/proc/talos-nope", "/proc/talos-nope"),
    ("FILE", "not a directory"),
])
def test_a_cache_directory_that_cannot_work_stops_start_up_with_one_line(tmp_path, cache_dir, fragment):
    if cache_dir == "FILE":
        cache_dir = str(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("x")
    result = _twistd(["talos-images", "--cache-dir", cache_dir, "--listen", "tcp:0:interface=127.0.0.1"], tmp_path)
    _one_line_failure(result, "cache directory", fragment)


def test_a_cache_directory_writable_by_others_is_refused(tmp_path):
    cache = tmp_path / "open"
    cache.mkdir()
    cache.chmod(0o777)
    result = _twistd(["talos-images", "--cache-dir", str(cache), "--listen", "tcp:0:interface=127.0.0.1"], tmp_path)
    _one_line_failure(result, "writable by others")


def test_a_port_in_use_stops_start_up_with_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _twistd(["talos-images", "--cache-dir", str(tmp_path / "c"),
                          "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    _one_line_failure(result, "cannot listen on", str(port))


def test_a_bad_endpoint_stops_start_up_with_one_line(tmp_path):
    result = _twistd(["talos-images", "--cache-dir", str(tmp_path / "c"), "--listen", "carrier-pigeon:1"], tmp_path)
    _one_line_failure(result, "listen", "carrier-pigeon:1")


def test_version_shows_the_daemons_version(tmp_path):
    from talos_twisted import __version__

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([TWISTD, "talos-images", "--version"], env={**os.environ, "PYTHONPATH": root},
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(f"talos-images {__version__.public()} (Twisted ")
