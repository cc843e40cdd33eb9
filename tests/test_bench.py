"""bench/run --quick keeps working: every scenario runs on tiny images and its responses are
correct (the verdicts of a quick run mean nothing, so they are not checked). The full run
(1 GiB images, several minutes) stays out of the test suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "bench", "run")


@pytest.mark.timeout(300)
def test_bench_run_quick():
    doc = os.path.join(REPO, "docs", "benchmarks.md")
    with open(doc, "rb") as f:
        before = f.read()
    r = subprocess.run([sys.executable, RUN, "--quick", "--no-write"], capture_output=True, text=True, timeout=280,
                       cwd=REPO, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    for n in range(1, 9):
        assert re.search(rf"^\| B{n} +\|.*\| (PASS|\*\*FAIL\*\*) +\|$", r.stdout, re.M), f"no verdict of B{n}:\n{out[-6000:]}"
        assert f"B{n}: measured" in r.stdout
    assert "all responses correct" in r.stdout
    with open(doc, "rb") as f:
        assert f.read() == before  # --no-write
