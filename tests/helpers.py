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
