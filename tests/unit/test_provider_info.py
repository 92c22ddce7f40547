"""The installed distribution registers the provider: modules, connection types, UI form fields, extra link."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import math
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import BaseHook, BaseOperator, Connection
from airflow.triggers.base import BaseTrigger

from coinstats_provider.exceptions import CoinStatsConfigError
from coinstats_provider.get_provider_info import get_provider_info
from coinstats_provider.hooks.coinstats import CoinStatsHook
from coinstats_provider.hooks.connection import ClientSettings, settings_from_connection
from coinstats_provider.hooks.exchange import CoinStatsExchangeHook


def test_entry_point_package_name_matches_distribution() -> None:
    points = importlib.metadata.entry_points(group="apache_airflow_provider")
    ours = [p for p in points if p.value.startswith("coinstats_provider.")]
    assert len(ours) == 1
    assert ours[0].dist is not None
    assert ours[0].dist.name == get_provider_info()["package-name"] == "airflow-provider-coinstats"


def test_provider_info_is_valid_against_airflow_schema() -> None:
    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_connection_types_match_hooks_and_have_no_deprecated_form_methods() -> None:
    types = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    for hook in (CoinStatsHook, CoinStatsExchangeHook):
        entry = types[hook.conn_type]
        assert entry["hook-class-name"] == f"{hook.__module__}.{hook.__name__}"
        assert entry["hook-name"] == hook.hook_name
        assert "get_connection_form_widgets" not in vars(hook)
        assert "get_ui_field_behaviour" not in vars(hook)
    assert types["coinstats"]["ui-field-behaviour"]["relabeling"]["password"] == "CoinStats API key"
    assert types["coinstats_exchange"]["ui-field-behaviour"]["relabeling"]["login"] == "Exchange API key"
    assert types["coinstats_exchange"]["conn-fields"]["passphrase"]["schema"]["format"] == "password"


def test_airflow_discovers_the_provider() -> None:
    """Ask Airflow's ProvidersManager in a fresh interpreter, as a deployment would."""
    code = (
        "import json; from airflow.providers_manager import ProvidersManager as P; p = P();"
        "print(json.dumps({'hooks': {k: p.hooks[k].hook_class_name for k in ('coinstats', 'coinstats_exchange')},"
        "'widgets': sorted(k for k in p.connection_form_widgets if 'coinstats' in k),"
        "'behaviour': p.field_behaviours.get('coinstats'),"
        "'providers': sorted(p.providers), 'links': sorted(p.extra_links_class_names),"
        "'triggers': sorted(t.trigger_class_name for t in p.trigger if 'coinstats' in t.package_name)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["hooks"] == {
        "coinstats": "coinstats_provider.hooks.coinstats.CoinStatsHook",
        "coinstats_exchange": "coinstats_provider.hooks.exchange.CoinStatsExchangeHook",
    }
    assert "extra__coinstats_exchange__passphrase" in found["widgets"]
    assert "extra__coinstats__timeout" in found["widgets"]
    assert found["behaviour"]["relabeling"]["password"] == "CoinStats API key"
    assert "airflow-provider-coinstats" in found["providers"]
    assert "coinstats_provider.links.portfolio.CoinStatsPortfolioLink" in found["links"]
    assert found["triggers"] == ["coinstats_provider.triggers.sync"]


def coinstats_conn_fields() -> dict[str, Any]:
    """The ``conn-fields`` form of the ``coinstats`` connection type."""
    (entry,) = (c for c in get_provider_info()["connection-types"] if c["connection-type"] == "coinstats")
    fields: dict[str, Any] = entry["conn-fields"]
    return fields


def resolve(extra: dict[str, Any]) -> ClientSettings:
    """Resolve a ``coinstats`` connection with ``extra`` the way the hook does.

    :param extra: The connection extra.
    """
    conn = Connection(conn_id="form_check", conn_type="coinstats", password="key", extra=json.dumps(extra))
    return settings_from_connection(conn)


def test_form_lists_every_extra_the_hook_reads() -> None:
    extras = {f.name for f in dataclasses.fields(ClientSettings)} - {"conn_id", "base_url", "api_key"}
    assert set(coinstats_conn_fields()) == extras


def test_form_defaults_equal_the_hooks_defaults() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ClientSettings)}
    resolved = resolve({})
    for name, field in coinstats_conn_fields().items():
        shown = field["schema"].get("default")
        assert shown == defaults[name] == getattr(resolved, name), name


@pytest.mark.parametrize("name", sorted(coinstats_conn_fields()))
def test_form_bounds_equal_the_bounds_the_hook_enforces(name: str) -> None:
    """The form's minimum and maximum are accepted by the hook; the nearest values outside are rejected."""
    schema = coinstats_conn_fields()[name]["schema"]
    low, high = schema["minimum"], schema["maximum"]
    integer = "integer" in schema["type"]
    below = low - 1 if integer else math.nextafter(low, -math.inf)
    above = high + 1 if integer else math.nextafter(high, math.inf)

    assert getattr(resolve({name: low}), name) == low
    assert getattr(resolve({name: high}), name) == high
    for outside in (below, above):
        with pytest.raises(CoinStatsConfigError, match=f"'{name}'"):
            resolve({name: outside})


def declared_modules(section: str) -> set[str]:
    """Modules a ``hooks``/``operators``/``triggers`` section of the provider info declares.

    :param section: The section name.
    """
    return {module for item in get_provider_info()[section] for module in item["python-modules"]}


@pytest.mark.parametrize(
    ("section", "package", "base"),
    [
        ("hooks", "coinstats_provider.hooks", BaseHook),
        ("operators", "coinstats_provider.operators", BaseOperator),
        ("triggers", "coinstats_provider.triggers", BaseTrigger),
    ],
)
def test_declared_modules_are_exactly_those_defining_the_classes(section: str, package: str, base: type) -> None:
    defining: set[str] = set()
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__, f"{package}."):
        module = importlib.import_module(info.name)
        if any(
            isinstance(value, type) and issubclass(value, base) and value.__module__ == module.__name__
            for value in vars(module).values()
        ):
            defining.add(module.__name__)
    assert defining
    assert declared_modules(section) == defining


def test_triggers_name_a_declared_integration() -> None:
    info = get_provider_info()
    integrations = {i["integration-name"] for i in info["integrations"]}
    assert info["triggers"] == [
        {"integration-name": "CoinStats", "python-modules": ["coinstats_provider.triggers.sync"]}
    ]
    for section in ("hooks", "operators", "triggers"):
        assert {item["integration-name"] for item in info[section]} <= integrations


def test_readme_documents_every_extra_of_the_form() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (row,) = (line for line in readme.splitlines() if line.startswith("| `coinstats_default` |"))
    assert [name for name in coinstats_conn_fields() if f"`{name}`" not in row] == []


def test_get_provider_info_imports_no_airflow() -> None:
    """Airflow calls the entry point while it initialises its configuration: an Airflow import would recurse."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from coinstats_provider.get_provider_info import get_provider_info; get_provider_info(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'requests', 'httpx'}))"
    )
    plugins = str(Path(__file__).resolve().parents[2] / "plugins")
    done = subprocess.run([sys.executable, "-c", code, plugins], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_extra_the_readme_documents_is_in_the_form() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (row,) = (line for line in readme.splitlines() if line.startswith("| `coinstats_default` |"))
    documented = set(re.findall(r"`([a-z_]+)`", row.split("Extras", 1)[1]))
    assert documented == set(coinstats_conn_fields())


def test_sensors_section_lists_exactly_the_modules_defining_sensors() -> None:
    """Empty while the package has no sensors; then one entry naming each sensor module."""
    from airflow.sdk import BaseSensorOperator

    defining: set[str] = set()
    try:
        package = importlib.import_module("coinstats_provider.sensors")
    except ModuleNotFoundError:
        package = None
    for info in pkgutil.iter_modules(package.__path__ if package else [], "coinstats_provider.sensors."):
        module = importlib.import_module(info.name)
        if any(
            isinstance(value, type) and issubclass(value, BaseSensorOperator) and value.__module__ == module.__name__
            for value in vars(module).values()
        ):
            defining.add(module.__name__)
    assert {module for item in get_provider_info()["sensors"] for module in item["python-modules"]} == defining
    assert all(item["integration-name"] == "CoinStats" for item in get_provider_info()["sensors"])


def test_portfolio_link_opens_a_documented_coinstats_page() -> None:
    """No per-portfolio web URL is documented for API-created portfolios: the link opens the tracker page."""
    from coinstats_provider.links.portfolio import PORTFOLIO_URL, portfolio_url

    assert PORTFOLIO_URL == "https://coinstats.app/portfolio"
    assert portfolio_url("pf 1/2") == PORTFOLIO_URL
    assert portfolio_url("pf 1/2", "https://example.test/p/{portfolio_id}") == "https://example.test/p/pf%201%2F2"
