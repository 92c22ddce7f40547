"""The settings loader imports airflow_settings.yaml into Airflow: upsert, idempotent, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.load_settings import SettingsError, apply_settings, main, parse_settings
from tests.conftest import ROOT


def test_project_settings_parse() -> None:
    settings = parse_settings(ROOT / "airflow_settings.yaml")
    assert settings.connections["coinstats_default"]["conn_type"] == "coinstats"
    assert settings.connections["coinstats_default"]["host"] == "http://127.0.0.1:8765"
    assert json.loads(settings.connections["coinstats_exchange_okx"]["extra"])["passphrase"]
    warehouse = Path(settings.connections["coinstats_warehouse"]["host"])
    assert warehouse.is_absolute()
    assert warehouse.parent == ROOT / "include"
    assert settings.pools == {
        "coinstats_api": (4, "Concurrent CoinStats API calls (one API key); deferred waits hold no slot")
    }
    ids = json.loads(settings.variables["coinstats_account_conn_ids"])
    assert set(ids) <= set(settings.connections)
    assert {settings.connections[i]["conn_type"] for i in ids} == {"coinstats_exchange", "coinstats_wallet"}


@pytest.mark.slow
def test_apply_is_an_idempotent_upsert(airflow_db: Path, tmp_path: Path) -> None:
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    settings = parse_settings(ROOT / "airflow_settings.yaml")
    assert apply_settings(settings) == {"connections": 6, "variables": 1, "pools": 1}
    settings.connections["coinstats_default"]["password"] = "rotated-key"
    settings.pools["coinstats_api"] = (2, "smaller")
    apply_settings(settings)
    apply_settings(settings)
    with create_session() as session:
        rows = session.scalars(select(Connection).where(Connection.conn_id == "coinstats_default")).all()  # noqa: AIR311
        assert len(rows) == 1
        assert rows[0].password == "rotated-key"
        pool = session.scalar(select(Pool).where(Pool.pool == "coinstats_api"))
        assert pool is not None
        assert (pool.slots, pool.include_deferred) == (2, False)
        assert session.scalar(select(func.count()).select_from(Pool).where(Pool.pool == "coinstats_api")) == 1
    assert json.loads(Variable.get("coinstats_account_conn_ids"))[0] == "coinstats_exchange_binance"  # noqa: AIR311


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("airflow: [unclosed", "is not valid YAML"),
        ("connections: []", "top-level 'airflow:'"),
        ("airflow:\n  connections:\n    - conn_type: coinstats\n", "needs a non-empty 'conn_id'"),
        ("airflow:\n  connections:\n    - conn_id: x\n", "needs conn_type"),
        ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: http\n      conn_port: abc\n", "conn_port"),
        ("airflow:\n  connections:\n    - conn_id: x\n      conn_type: http\n      conn_extra: '{bad'\n", "JSON"),
        ("airflow:\n  pools:\n    - pool_name: p\n", "whole number pool_slot"),
        ("airflow:\n  variables:\n    - variable_name: v\n", "needs variable_value"),
        ("airflow:\n  variables: {}\n", "must be a list"),
        (
            "airflow:\n  connections:\n    - conn_id: x\n      conn_uri: 'coinstats://:k@h'\n      conn_host: h\n",
            "sets conn_uri and also conn_host",
        ),
        (
            "airflow:\n  connections:\n    - conn_id: x\n      conn_uri: 'coinstats://:k@h'\n"
            "      conn_type: coinstats\n      conn_extra: {timeout: 5}\n",
            "sets conn_uri and also conn_extra, conn_type",
        ),
    ],
)
def test_malformed_files_fail_before_writing(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=needle):
        parse_settings(path)
    assert main([str(path)]) == 2
    assert needle.split("'")[0] in capsys.readouterr().err


def test_cli_never_prints_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(
        "airflow:\n  connections:\n    - conn_id: x\n      conn_type: coinstats\n      conn_password: s3cr3t-VALUE\n"
    )
    assert parse_settings(path).connections["x"]["password"] == "s3cr3t-VALUE"
    path.write_text(path.read_text() + "  pools:\n    - pool_name: p\n")  # malformed: the error must not echo values
    assert main([str(path)]) == 2
    assert "s3cr3t-VALUE" not in capsys.readouterr().err
