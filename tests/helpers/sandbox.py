"""Start in-process sandboxes for a test and point a ``coinstats`` connection at each one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from include.coinstats_sandbox import SandboxConfig, SandboxServer
from tests.conftest import CANARIES, set_connection

StartSandbox = Callable[..., SandboxServer]


@contextmanager
def sandboxes(
    monkeypatch: pytest.MonkeyPatch, conn_id: str, *, max_retries: int, **defaults: Any
) -> Iterator[StartSandbox]:
    """Yield ``start(password=<canary key>, **config)``: a running sandbox that accepts the canary API key.

    Each call also (re)defines ``conn_id`` to reach it with fast retries; every sandbox stops on exit.

    :param monkeypatch: Sets the ``AIRFLOW_CONN_*`` variable.
    :param conn_id: The ``coinstats`` connection to point at the newest sandbox.
    :param max_retries: The connection's ``max_retries`` extra.
    :param defaults: Sandbox config used unless a call overrides it.
    """
    servers: list[SandboxServer] = []

    def start(password: str = CANARIES["api_key"], **config: Any) -> SandboxServer:
        server = SandboxServer(SandboxConfig(api_keys=(CANARIES["api_key"],), quiet=True, **{**defaults, **config}))
        servers.append(server)
        set_connection(
            monkeypatch,
            conn_id,
            conn_type="coinstats",
            host=server.start(),
            password=password,
            extra={"backoff_base": 0, "backoff_max": 0, "max_retries": max_retries, "timeout": 5},
        )
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
