"""Import an Astro-format ``airflow_settings.yaml`` (connections, variables, pools) into any Airflow.

Usage: ``python -m include.load_settings [airflow_settings.yaml]``. Upserts, so running it again changes
nothing; a malformed file fails before anything is written. This is an admin command that writes the
metadata database directly; task code never does. Relative SQLite paths are resolved against the
settings file's folder. Values are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONN_FIELDS = {
    "conn_type": "conn_type",
    "conn_host": "host",
    "conn_login": "login",
    "conn_password": "password",
    "conn_schema": "schema",
    "conn_port": "port",
}


class SettingsError(ValueError):
    """The settings file is malformed; the message names the entry and the fix."""


@dataclass
class Settings:
    """Parsed settings: connection fields, variables and pools."""

    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    pools: dict[str, tuple[int, str]] = field(default_factory=dict)


def parse_settings(path: Path) -> Settings:
    """Read and validate a settings file without touching Airflow.

    :param path: The YAML file.
    """
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SettingsError(f"Cannot read {path}: {err.strerror}.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SettingsError(f"{path} is not valid YAML{where}; fix the indentation or quoting.") from None
    root = (document or {}).get("airflow") if isinstance(document, dict) else None
    if not isinstance(root, dict):
        raise SettingsError(f"{path} must have a top-level 'airflow:' mapping (Astro CLI format).")
    settings = Settings()
    for i, entry in enumerate(_list(root, "connections", path)):
        conn_id = _required(entry, "conn_id", f"connections[{i}]", path)
        fields: dict[str, Any] = {
            target: entry.get(source) for source, target in CONN_FIELDS.items() if entry.get(source) not in (None, "")
        }
        if "conn_type" not in fields and not entry.get("conn_uri"):
            raise SettingsError(f"{path}: connection '{conn_id}' needs conn_type (or conn_uri).")
        if entry.get("conn_uri"):
            also = sorted(k for k in (*CONN_FIELDS, "conn_extra") if entry.get(k) not in (None, ""))
            if also:
                raise SettingsError(
                    f"{path}: connection '{conn_id}' sets conn_uri and also {', '.join(also)}; a connection is "
                    "either one conn_uri or separate conn_* fields. Keep one form (put extras in the URI's query)."
                )
            fields["uri"] = entry["conn_uri"]
        extra = entry.get("conn_extra")
        if extra not in (None, ""):
            if isinstance(extra, str):
                try:
                    extra = json.loads(extra)
                except json.JSONDecodeError:
                    raise SettingsError(f"{path}: conn_extra of '{conn_id}' is not a JSON object.") from None
            if not isinstance(extra, dict):
                raise SettingsError(f"{path}: conn_extra of '{conn_id}' must be a mapping.")
            fields["extra"] = json.dumps(extra)
        if fields.get("conn_type") == "sqlite" and fields.get("host") and not Path(fields["host"]).is_absolute():
            fields["host"] = str((path.parent / fields["host"]).resolve())
        if "port" in fields:
            try:
                fields["port"] = int(fields["port"])
            except (TypeError, ValueError):
                raise SettingsError(f"{path}: conn_port of '{conn_id}' must be a number.") from None
        settings.connections[conn_id] = fields
    for i, entry in enumerate(_list(root, "variables", path)):
        name = _required(entry, "variable_name", f"variables[{i}]", path)
        if "variable_value" not in entry:
            raise SettingsError(f"{path}: variable '{name}' needs variable_value.")
        value = entry["variable_value"]
        settings.variables[name] = value if isinstance(value, str) else json.dumps(value)
    for i, entry in enumerate(_list(root, "pools", path)):
        name = _required(entry, "pool_name", f"pools[{i}]", path)
        try:
            slots = int(entry["pool_slot"])
        except (KeyError, TypeError, ValueError):
            raise SettingsError(f"{path}: pool '{name}' needs a whole number pool_slot.") from None
        settings.pools[name] = (slots, str(entry.get("pool_description") or ""))
    return settings


def _list(root: Mapping[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = root.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SettingsError(f"{path}: 'airflow.{key}' must be a list of mappings.")
    return value


def _required(entry: Mapping[str, Any], key: str, where: str, path: Path) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{path}: {where} needs a non-empty '{key}'.")
    return value.strip()


def apply_settings(settings: Settings) -> dict[str, int]:
    """Upsert the settings into the Airflow metadata database; return how many of each were written.

    :param settings: Output of :func:`parse_settings`.
    """
    # An admin command writes the metadata DB through the server-side models (task code never does).
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        for conn_id, fields in settings.connections.items():
            existing = session.scalar(select(Connection).where(Connection.conn_id == conn_id))  # noqa: AIR311
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(Connection(conn_id=conn_id, **fields))  # noqa: AIR311
        for name, (slots, description) in settings.pools.items():
            pool = session.scalar(select(Pool).where(Pool.pool == name))
            if pool is None:
                pool = Pool(pool=name)
                session.add(pool)
            pool.slots, pool.description, pool.include_deferred = slots, description, False
    for name, value in settings.variables.items():
        Variable.set(name, value)  # noqa: AIR311
    return {
        "connections": len(settings.connections),
        "variables": len(settings.variables),
        "pools": len(settings.pools),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("file", nargs="?", default="airflow_settings.yaml", type=Path)
    args = parser.parse_args(argv)
    try:
        counts = apply_settings(parse_settings(args.file))
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(", ".join(f"{n} {kind}" for kind, n in counts.items()) + f" loaded from {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
