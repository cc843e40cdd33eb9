"""The package type-checks: mypy with the repository's mypy.ini (strict, exceptions listed there)."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def test_package_passes_mypy(tmp_path, monkeypatch):
    # exactly what `mypy` run by hand in the repository does (files come from mypy.ini), but
    # with a fresh cache: a cold run, unaffected by a stale .mypy_cache (about 5 s)
    monkeypatch.chdir(ROOT)
    report, errors, status = api.run(["--config-file", "mypy.ini", "--cache-dir", str(tmp_path / "mypy_cache")])
    assert status == 0, f"mypy failed (exit {status}):\n{report}{errors}"
