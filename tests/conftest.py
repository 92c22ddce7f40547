"""Shared fixtures. Airflow settings are set before Airflow is imported anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = ROOT / ".airflow" / "pytest"
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{AIRFLOW_HOME}/airflow.db"
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
# Operator-level tests wait in the triggerer unless they say otherwise ([operators] default_deferrable
# is false in Airflow's shipped config; tests/unit/operators/test_sync.py covers that default too).
os.environ["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] = "True"
AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)

import logging  # noqa: E402

import pytest  # noqa: E402
import structlog  # noqa: E402

BASE_URL = "https://openapiv1.coinstats.app"

#: Test packages of requirements-dev.in that neither Airflow nor this project depends on. An Astro Runtime
#: image (where `astro dev pytest` runs `pytest tests/`) has none of them.
DEV_ONLY_MODULES = ("responses", "pytest_asyncio")
#: The tests that need nothing beyond the image: the Astro template's DAG tests.
IMAGE_TESTS = ROOT / "tests" / "dags"


def missing_dev_modules() -> list[str]:
    """The dev-only test packages this interpreter cannot import (empty in ``.venv``)."""
    import importlib

    missing = []
    for name in DEV_ONLY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


MISSING_DEV_MODULES = missing_dev_modules()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without the dev-only packages (inside the runtime image), collect only :data:`IMAGE_TESTS`.

    :param collection_path: A path pytest is about to collect.
    :param config: The pytest config.
    """
    if not MISSING_DEV_MODULES or not collection_path.is_relative_to(IMAGE_TESTS.parent):
        return None
    inside = collection_path == IMAGE_TESTS.parent or collection_path.is_relative_to(IMAGE_TESTS)
    return None if inside else True


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say when the run is limited to the image's tests, and why.

    :param config: The pytest config.
    """
    if not MISSING_DEV_MODULES:
        return None
    return (
        f"dev-only test packages missing ({', '.join(MISSING_DEV_MODULES)}): collecting only "
        f"{IMAGE_TESTS.relative_to(ROOT)}/, the tests that run inside the Astro Runtime image; "
        "`make test` runs the whole suite"
    )


#: Unique canary values: if 8 consecutive characters of one of them show up in a log, XCom, exception or
#: table, a secret leaked (tests/helpers/canary.py). Non-hex letters and no dictionary word, so that no
#: legitimate text (an id, a hash, a header name) contains a fragment.
CANARIES = {
    "api_key": "CNRY-APIK-qTwXmZvRtLpKsN",
    "exchange_key": "CNRY-EXK-hJuWnYgKsVrPxQ",
    "exchange_secret": "CNRY-EXS-rPzQmTxWkHvNjG",
    "passphrase": "CNRY-PP-uNvGyRjZqMtXhK",
}

SUPPORT = [
    {
        "connectionId": "binance",
        "name": "Binance",
        "icon": "https://static.coinstats.app/portfolio_images/binance_dark.png",
        "connectionFields": [{"name": "API Key", "key": "apiKey"}, {"name": "API Secret", "key": "apiSecret"}],
    },
    {
        "connectionId": "okx",
        "name": "OKX",
        "icon": "https://static.coinstats.app/portfolio_images/okx_dark.png",
        "connectionFields": [
            {"name": "API Key", "key": "apiKey"},
            {"name": "API Secret", "key": "apiSecret"},
            {"name": "Passphrase", "key": "passphrase"},
        ],
    },
    {
        "connectionId": "kraken",
        "name": "Kraken",
        "icon": "https://static.coinstats.app/portfolio_images/kraken_dark.png",
        "connectionFields": [{"name": "API Key", "key": "apiKey"}, {"name": "API Secret", "key": "apiSecret"}],
    },
]


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    """Define an Airflow connection through its ``AIRFLOW_CONN_<ID>`` JSON environment variable."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


@pytest.fixture(autouse=True)
def _isolated_support_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from coinstats_provider.hooks import support_cache

    monkeypatch.setenv("COINSTATS_CACHE_DIR", str(tmp_path / "cache"))
    support_cache.clear()
    yield
    support_cache.clear()


@pytest.fixture
def coinstats_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Factory for the ``coinstats_default`` connection (fast retries, canary API key)."""

    def make(conn_id: str = "coinstats_default", **overrides: Any) -> None:
        fields: dict[str, Any] = {
            "conn_type": "coinstats",
            "password": CANARIES["api_key"],
            "extra": {"backoff_base": 0, "backoff_max": 0, "max_retries": 3, "timeout": 5},
        }
        fields.update(overrides)
        set_connection(monkeypatch, conn_id, **fields)

    make()
    return make


@pytest.fixture
def exchange_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Factory for ``coinstats_exchange`` connections carrying canary credentials."""

    def make(conn_id: str, connection_id: str = "binance", **extra: Any) -> None:
        set_connection(
            monkeypatch,
            conn_id,
            conn_type="coinstats_exchange",
            login=CANARIES["exchange_key"],
            password=CANARIES["exchange_secret"],
            extra={"connection_id": connection_id, **extra},
        )

    return make


@pytest.fixture(scope="session")
def _migrated_airflow_db() -> Path:
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture
def airflow_db(_migrated_airflow_db: Path) -> Path:
    """An initialised Airflow metadata DB (SQLite) for ``dag.test()`` runs, checked through this process's engine."""
    import sqlalchemy
    from airflow import settings

    if "task_instance" not in sqlalchemy.inspect(settings.engine).get_table_names():
        from airflow.utils.db import initdb

        initdb()
    return _migrated_airflow_db


def assert_no_canary(*texts: object) -> None:
    """Fail if any 8 consecutive characters of any canary secret appear in any of ``texts``."""
    from tests.helpers.canary import assert_no_fragment

    assert_no_fragment(CANARIES, *texts)


def _render(_logger: Any, _method: str, event_dict: dict[str, Any]) -> str:
    event = str(event_dict.pop("event", ""))
    rest = " ".join(f"{key}={value!r}" for key, value in sorted(event_dict.items()))
    return f"{event} {rest}".strip()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Route Airflow's structlog output into stdlib logging at DEBUG, unmasked, so caplog sees every line.

    Airflow's secret masker is left out on purpose: the code itself must not log a secret.
    """
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.format_exc_info, _render],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    # Airflow's logging config pins some loggers (e.g. airflow.task) at INFO; lower them for this test.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG:
            caplog.set_level(logging.DEBUG, logger=name)
    try:
        yield caplog
    finally:
        structlog.configure(**old)
