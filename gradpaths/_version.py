"""The version of gradpaths, read from the installed package's metadata."""

from __future__ import annotations

import importlib.metadata

UNKNOWN = "0+unknown"
"""The version of a source tree that was never installed (no metadata to read)."""


def version() -> str:
    """``importlib.metadata.version("gradpaths")``, or :data:`UNKNOWN` when gradpaths
    runs from a source tree that is not installed."""
    try:
        return importlib.metadata.version("gradpaths")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN
