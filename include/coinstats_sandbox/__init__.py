"""A local, CoinStats-compatible sandbox server for trying the DAGs without an API key.

Use it in-process::

    with SandboxServer(SandboxConfig(sync_seconds=0.5)) as sandbox:
        requests.get(f"{sandbox.base_url}/usage/credits", headers={"X-API-KEY": DEFAULT_API_KEY})

or from the command line: ``python -m include.coinstats_sandbox --port 8765``.
"""

from .server import (
    DEFAULT_API_KEY,
    FAULT_KINDS,
    SandboxApp,
    SandboxConfig,
    SandboxServer,
    spread_fault_rate,
)

__all__ = [
    "DEFAULT_API_KEY",
    "FAULT_KINDS",
    "SandboxApp",
    "SandboxConfig",
    "SandboxServer",
    "spread_fault_rate",
]
