"""Defaults and allowed ranges of the ``coinstats`` connection extras: the one source of both.

The hook validates against them (``hooks/connection.py``) and the connection form shows them
(``get_provider_info``). No Airflow import here: Airflow loads ``get_provider_info`` while it initialises
its own configuration, so anything that module imports must not import Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_BACKOFF_MAX = 60.0
DEFAULT_SUPPORT_CACHE_TTL = 3600.0
#: Allowed (minimum, maximum) of the numeric connection extras.
EXTRA_RANGES: Mapping[str, tuple[float, float]] = {
    "timeout": (0.001, 3600.0),
    "backoff_base": (0.0, 3600.0),
    "backoff_max": (0.0, 86400.0),
    "support_cache_ttl": (0.0, 30 * 86400.0),
    "credit_budget": (0, 1_000_000_000_000),
}
#: Allowed (minimum, maximum) of the ``max_retries`` extra (an integer).
MAX_RETRIES_RANGE = (0, 20)
