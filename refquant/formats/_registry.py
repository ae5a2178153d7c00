"""The registry of number formats, keyed by exact format names.

Every family module registers its formats at import time. Tests parametrize over
:func:`list_formats`, so a format is exercised by the existing tests the moment it
is registered.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._errors import RefquantError

__all__ = ["NumberFormat", "register", "get_format", "list_formats"]


@runtime_checkable
class NumberFormat(Protocol):
    """What every registered format exposes.

    ``family`` is one of ``"integer"``, ``"float"``, ``"codebook"``, ``"block"``;
    ``bits`` is the storage width of one element (for block formats: bits per
    weight including the shared scales).
    """

    name: str
    family: str

    @property
    def bits(self) -> float: ...


_REGISTRY: dict[str, NumberFormat] = {}


def register(fmt: NumberFormat) -> NumberFormat:
    """Add ``fmt`` under ``fmt.name``; a second format under the same name is an error."""
    name = fmt.name
    if name in _REGISTRY and _REGISTRY[name] is not fmt:
        raise RefquantError(f"format name {name!r} is already registered")
    _REGISTRY[name] = fmt
    return fmt


def get_format(name: str | NumberFormat) -> NumberFormat:
    """Look a format up by its exact name; a format object is returned unchanged."""
    if not isinstance(name, str):
        if isinstance(name, NumberFormat):
            return name
        raise RefquantError(f"format must be a name or a format object, got {name!r}")
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RefquantError(_unknown(name)) from None


def _unknown(name: str) -> str:
    """'unknown format' with the nearest registered names first, then every name."""
    import difflib

    names = sorted(_REGISTRY)
    folded = {n.replace("_", "").lower(): n for n in names}
    near = [folded[k] for k in difflib.get_close_matches(
        name.replace("_", "").lower(), list(folded), n=3, cutoff=0.75)]
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown format {name!r}{hint} (known formats: {', '.join(names)})"


def list_formats(family: str | None = None) -> list[str]:
    """Names of the registered formats, sorted, optionally of one family."""
    _load_families()
    return sorted(n for n, f in _REGISTRY.items() if family is None or f.family == family)


def _load_families() -> None:
    # Importing the package imports every family module, which registers its formats.
    from .. import formats  # noqa: F401
