"""The sandbox for Astro's containers (``docker-compose.override.yml``), checked without Docker.

The Astro CLI merges ``docker-compose.override.yml`` into the Compose project it generates from
``airflow/include/airflow3/composeyml.go.tmpl`` (astro-cli ``airflow/docker.go``,
``composeOverrideFilename``). That template names the services and the network listed below.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import yaml
from airflow.sdk import Connection

from coinstats_provider.exceptions import CoinStatsConfigError
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.connection import PLAIN_HTTP_HOSTS_ENV, settings_from_connection
from include.coinstats_sandbox import SandboxServer
from include.coinstats_sandbox.__main__ import build_parser, config_from_args
from tests.conftest import ROOT, set_connection

#: Services and network of the CLI's Airflow 3 Compose template.
CLI_SERVICES = {"postgres", "db-migration", "scheduler", "dag-processor", "api-server", "triggerer"}
CLI_NETWORK = "airflow"
#: What the sandbox service listens on inside its container.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def override() -> dict[str, Any]:
    """The parsed ``docker-compose.override.yml``."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())
    return data


def sandbox_args() -> list[str]:
    """The sandbox service's command line after ``python -m include.coinstats_sandbox``."""
    command = override()["services"]["coinstats-sandbox"]["command"]
    assert command[:3] == ["python", "-m", "include.coinstats_sandbox"]
    return list(command[3:])


def test_override_adds_the_sandbox_on_the_cli_network_and_extends_only_cli_services() -> None:
    services = override()["services"]
    sandbox = services.pop("coinstats-sandbox")
    assert set(services) <= CLI_SERVICES
    assert sandbox["networks"] == [CLI_NETWORK]
    assert "ports" not in sandbox, "the sandbox must not be published outside the project network"
    assert "./include:/sandbox/include:ro" in sandbox["volumes"]
    # Tasks run in the scheduler (LocalExecutor), waits in the triggerer, the Test button in the api-server.
    for name in ("scheduler", "triggerer", "api-server"):
        assert services[name]["environment"][PLAIN_HTTP_HOSTS_ENV] == "coinstats-sandbox"


def test_the_sandbox_command_is_valid_and_needs_its_opt_in() -> None:
    args = sandbox_args()
    config = config_from_args(build_parser().parse_args(args))
    assert (config.host, config.port, config.container_network) == (ALL_INTERFACES, 8765, True)
    without = [arg for arg in args if arg != "--container-network"]
    with pytest.raises(ValueError, match=r"refusing to listen on '0\.0\.0\.0'"):
        config_from_args(build_parser().parse_args(without))


def test_the_override_connection_reaches_the_sandbox_host_only_with_the_opt_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = override()["services"]["scheduler"]["environment"]
    conn = Connection.from_json(env["AIRFLOW_CONN_COINSTATS_DEFAULT"], conn_id="coinstats_default")
    monkeypatch.delenv(PLAIN_HTTP_HOSTS_ENV, raising=False)
    with pytest.raises(CoinStatsConfigError, match=PLAIN_HTTP_HOSTS_ENV):
        settings_from_connection(conn)
    monkeypatch.setenv(PLAIN_HTTP_HOSTS_ENV, env[PLAIN_HTTP_HOSTS_ENV])
    assert settings_from_connection(conn).base_url == "http://coinstats-sandbox:8765"
    # Listing one host allows that host only.
    other = Connection(conn_id="other", conn_type="coinstats", host="http://example.test", password="k")
    with pytest.raises(CoinStatsConfigError, match="plain http"):
        settings_from_connection(other)


def test_a_sandbox_on_all_interfaces_answers_the_hook_by_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the containers do, on one machine: the sandbox on 0.0.0.0, the hook through a host name."""
    args = [*sandbox_args(), "--quiet"]
    args[args.index("--port") + 1] = "0"
    server = SandboxServer(config_from_args(build_parser().parse_args(args)))
    port = server.start().rsplit(":", 1)[1]
    name = socket.gethostname()
    try:
        url = f"http://{name}:{port}"
        set_connection(monkeypatch, "astro_sandbox", conn_type="coinstats", host=url, password="sandbox-api-key")
        monkeypatch.delenv(PLAIN_HTTP_HOSTS_ENV, raising=False)
        refused, message = CoinStatsHook("astro_sandbox").test_connection()
        assert not refused
        assert PLAIN_HTTP_HOSTS_ENV in message
        monkeypatch.setenv(PLAIN_HTTP_HOSTS_ENV, f"other, {name.upper()}")
        ok, message = CoinStatsHook("astro_sandbox").test_connection()
        assert ok, message
        assert f"http://{name.lower()}:{port}" in message.lower()
    finally:
        server.stop()
