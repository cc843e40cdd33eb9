"""The README's two Quick start commands work on a fresh copy of the source, in either order.

The run command (`python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/twistd -n
talos-images`) and the test command (`bash .ci/run`, whose last line makes `.venv-test`) share
one source tree: each leaves files in it (`build/`, `*.egg-info`, twistd's plugin cache), and
the second must still work, and must not break the first. A copy of the working tree's files
(tracked and new, not ignored: what a clone of the next commit holds) goes to a temporary
directory; there both commands run in each order, as the README writes them, except that the
test command's whole suite is replaced by collecting it and running tests/test_tap.py (the
whole suite would run this test again), and the daemon gets a free port, a temporary cache
and an unreachable factory (no call leaves the machine; `/healthz` needs none).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .childproc import Child

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI_RUN = (ROOT / ".ci" / "run").read_text(encoding="utf-8")

RUN_TAIL = " && .venv/bin/twistd -n talos-images"
SUITE_TAIL = " && .venv-test/bin/python -m pytest"


def quick_start() -> str:
    m = re.search(r"^## Quick start\n(.*?)^## ", README, re.S | re.M)
    assert m, "README has no Quick start section"
    return m.group(1)


def run_command() -> str:
    """The README's run command, as it stands in Quick start (an indented code line)."""
    lines = [line.strip() for line in quick_start().splitlines() if line.startswith("    ")]
    found = [line for line in lines if line.endswith(RUN_TAIL)]
    assert len(found) == 1, f"Quick start has no single command ending in {RUN_TAIL!r}: {lines}"
    return found[0]


def suite_command() -> str:
    """The test command that `bash .ci/run` ends with, quoted in the README as it is there."""
    last = [line for line in CI_RUN.splitlines() if line.strip() and not line.startswith("#")][-1].strip()
    assert last.startswith("python3 -m venv .venv-test") and last.endswith(SUITE_TAIL), last
    section = quick_start()
    assert "    bash .ci/run\n" in section, "Quick start does not give `bash .ci/run`"
    assert f"`{last}`" in section, "the README quotes another test command than .ci/run's"
    return last


def test_the_readme_says_both_commands_work_in_either_order():
    run_command(), suite_command()
    assert "work in either order" in re.sub(r"\s+", " ", quick_start())


# what a tree without git (an exported copy) holds that is no source: never copied
_NOT_SOURCE = {".git", ".venv", ".venv-test", "build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache",
               ".hypothesis"}


def source_files() -> list[str]:
    """The files `git` tracks or would add (not ignored); in a tree without git, every file
    outside the build and cache directories."""
    if shutil.which("git") is not None and (ROOT / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout
        return out.decode().split("\0")
    names = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _NOT_SOURCE and not d.endswith(".egg-info")]
        names += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames]
    return names


def copy_working_tree(dest: Path) -> None:
    """The source files, as they are now in the working tree."""
    for name in source_files():
        if not name:
            continue
        src = ROOT / name
        if not src.is_file():
            continue  # deleted in the working tree (or a submodule)
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(src, target)
        except FileNotFoundError:
            pass  # removed while copying


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(tmp: Path) -> dict[str, str]:
    """The environment of a shell in the copy: nothing of this test run's venv or settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TALOS_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTEST_ADDOPTS")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["XDG_CACHE_HOME"] = str(tmp / "xdg-cache")  # the daemon's default cache, never the user's
    return env


def sh(command: str, cwd: Path, env: dict[str, str], timeout: float) -> float:
    """Run `command` with bash in `cwd`; its duration. Fails with its output when it fails."""
    start = time.monotonic()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command!r} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return time.monotonic() - start


def check_run_venv(copy: Path, env: dict[str, str], tmp: Path) -> None:
    """`.venv/bin/twistd` lists both plugins, starts `talos-images`, answers /healthz and stops."""
    listed = subprocess.run([".venv/bin/twistd", "--help"], cwd=copy, env=env, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "talos-images" in listed.stdout and "talos-fake-factory" in listed.stdout, listed.stdout
    port = free_port()
    # the README's command, plus a port, a cache and a factory of this test's own
    args = [".venv/bin/twistd", "-n", "talos-images", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--cache-dir", str(tmp / "cache"), "--base-url", "http://127.0.0.1:9"]
    daemon = Child(args, cwd=copy, env=env)
    try:
        daemon.wait_for(r"Site starting on \d+", 60)  # listening from then on
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200
        out = daemon.stop(signal.SIGTERM, 30)
        # twistd ends by re-raising the SIGTERM once its shutdown is done
        assert daemon.proc.returncode in (0, -signal.SIGTERM), out[-3000:]
        assert "Server Shut Down." in out and "Traceback" not in out, out[-3000:]
    finally:
        daemon.stop(signal.SIGKILL, 10)


def check_test_venv(copy: Path, env: dict[str, str]) -> None:
    """`.venv-test` collects the whole suite and runs one small file of it."""
    inner = env  # only collected and test_tap.py run there: this test never recurses
    collect = subprocess.run([".venv-test/bin/python", "-m", "pytest", "--collect-only", "-q"], cwd=copy, env=inner,
                             capture_output=True, text=True, timeout=120)
    assert collect.returncode == 0 and re.search(r"\d+ tests collected", collect.stdout), collect.stdout[-3000:]
    run = subprocess.run([".venv-test/bin/python", "-m", "pytest", "-q", "tests/test_tap.py"], cwd=copy, env=inner,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("order", ["run first", "tests first"])
def test_both_quick_start_commands_on_a_fresh_copy(tmp_path, order):
    copy = tmp_path / "talos-images"
    copy_working_tree(copy)
    env = clean_env(tmp_path)
    run_install = run_command()[: -len(RUN_TAIL)]  # python3 -m venv .venv && .venv/bin/pip install .
    test_install = suite_command()[: -len(SUITE_TAIL)]  # python3 -m venv .venv-test && …pip install -e '.[test]'
    timings = {}
    steps = [("run", run_install), ("test", test_install)]
    if order == "tests first":
        steps.reverse()
    for name, command in steps:
        timings[name] = sh(command, copy, env, timeout=240)
        # what each command gave stays usable after the other one ran too
        if name == "run" or (copy / ".venv").exists():
            check_run_venv(copy, env, tmp_path)
        if name == "test" or (copy / ".venv-test").exists():
            check_test_venv(copy, env)
    print(f"{order}: install times {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")
