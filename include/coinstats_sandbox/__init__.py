"""A local, CoinStats-compatible sandbox server for trying the DAGs without an API key.

Use it in-process::

    with SandboxServer(SandboxConfig(sync_seconds=0.5)) as sandbox:
        requests.get(f"{sandbox.base_url}/usage/credits", headers={"X-API-KEY": DEFAULT_API_KEY})

or from the command line: ``python -m include.coinstats_sandbox --port 8765``.

Misbehaviour switches (redirects, a transaction list that shifts between page reads, edits between
runs, a capped ``limit``, stalls mid-stream, 2xx answers cut on the wire, transaction ids) are
:class:`SandboxConfig` fields, documented in :mod:`include.coinstats_sandbox.server`.
"""

from .server import (
    CUT_FIELD,
    CUT_MODES,
    DEFAULT_API_KEY,
    FAULT_KINDS,
    REDIRECT_STATUSES,
    SWITCH_EVENTS,
    SandboxApp,
    SandboxConfig,
    SandboxServer,
    spread_fault_rate,
)

__all__ = [
    "CUT_FIELD",
    "CUT_MODES",
    "DEFAULT_API_KEY",
    "FAULT_KINDS",
    "REDIRECT_STATUSES",
    "SWITCH_EVENTS",
    "SandboxApp",
    "SandboxConfig",
    "SandboxServer",
    "spread_fault_rate",
]
