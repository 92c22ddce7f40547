"""Apache Airflow provider for the CoinStats portfolio API."""

from __future__ import annotations

import importlib.metadata

#: Name of the distribution that ships this package (``[project] name`` in ``pyproject.toml``).
DISTRIBUTION_NAME = "airflow-provider-coinstats"
#: Version reported when the package is imported from a plugins folder without the distribution installed.
UNKNOWN_VERSION = "0+unknown"


def _installed_version() -> str:
    """Return the installed distribution's version (``pyproject.toml`` is its only source)."""
    try:
        return importlib.metadata.version(DISTRIBUTION_NAME)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


__version__ = _installed_version()

__all__ = ["DISTRIBUTION_NAME", "UNKNOWN_VERSION", "__version__"]
