"""The packages the suite ran against are the ones pyproject.toml says it was checked with.

Peer behaviour moves between releases (ml_dtypes 0.7.0 changed three casts that
peer tests pinned), so the ``peers`` extra pins exact versions and the core
dependencies are bounded to the releases whose behaviour the suite checks. The
versions are printed in pytest's header (tests/conftest.py); this test fails
when an installed package is outside its requirement, so CI can never pass
against an unpinned peer release without saying so.
"""

import os

import pytest
from helpers import installed_versions, version_header

ROWS = installed_versions()


def test_every_peer_is_pinned_to_one_exact_version():
    for group, req, _ in ROWS:
        if group == "peers":
            pins = [s for s in req.specifier if s.operator == "=="]
            assert pins, f"peer {req.name} is not pinned to an exact version in pyproject.toml"


def test_core_dependencies_have_an_upper_bound():
    for group, req, _ in ROWS:
        if group == "core":
            assert any(s.operator in ("<", "<=", "==") for s in req.specifier), req


@pytest.mark.parametrize("group", ["core", "peers", "test"])
def test_installed_versions_satisfy_pyproject(group):
    if group == "peers" and os.environ.get("REFQUANT_REQUIRE_PEERS") != "1":
        pytest.skip("peers are checked where they are required (REFQUANT_REQUIRE_PEERS=1)")
    wrong = [f"{req.name} {have} (wants {req.specifier})" for g, req, have in ROWS
             if g == group and (have is None or not req.specifier.contains(have,
                                                                           prereleases=True))]
    assert not wrong, f"installed {group} packages outside pyproject.toml: {wrong}"


def test_pytest_header_names_every_core_and_peer_package_with_its_version():
    header = "\n".join(version_header())
    for group, req, have in ROWS:
        if group in ("core", "peers"):
            assert f"{req.name} {have or '-'}" in header
