"""Shared test helpers (importable as ``helpers`` through pytest's pythonpath)."""

from __future__ import annotations

import importlib
import os

import pytest

REQUIRE_PEERS = os.environ.get("REFQUANT_REQUIRE_PEERS") == "1"


def import_peer(name: str):
    """Import a peer library; skip the test when it is missing, fail in CI.

    CI sets ``REFQUANT_REQUIRE_PEERS=1`` so that a peer test can never pass by
    skipping.
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if REQUIRE_PEERS:
            pytest.fail(f"peer {name!r} is required (REFQUANT_REQUIRE_PEERS=1) but: {e}")
        pytest.skip(f"peer {name!r} is not installed")


def installed_versions():
    """(group, requirement, installed version or None) for every package pyproject names."""
    import tomllib
    from importlib import metadata
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    rows = []
    for group, reqs in [("core", project["dependencies"]),
                        *sorted(project["optional-dependencies"].items())]:
        for text in reqs:
            req = Requirement(text)
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                have = None
            rows.append((group, req, have))
    return rows


def version_header() -> list[str]:
    """pytest's header lines: each core, peer, test and cuda package with its installed version."""
    rows = installed_versions()
    lines = []
    for group in ("core", "peers", "test", "cuda"):
        seen = [f"{r.name} {have or '-'}" for g, r, have in rows if g == group]
        if seen:
            lines.append(f"refquant {group}: " + ", ".join(seen))
    return lines


def run_without_jit(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a child Python with ``NUMBA_DISABLE_JIT=1`` (kernel bodies as Python).

    Numba reads the variable once per process, so the check needs its own
    process; a non-zero exit fails with the child's stderr. Returns its stdout.
    """
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout
