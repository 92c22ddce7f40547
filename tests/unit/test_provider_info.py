"""The installed distribution registers the provider: connection types, UI form fields, extra link."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from coinstats_provider.get_provider_info import get_provider_info
from coinstats_provider.hooks.coinstats import CoinStatsHook
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
        "'providers': sorted(p.providers), 'links': sorted(p.extra_links_class_names)}))"
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
