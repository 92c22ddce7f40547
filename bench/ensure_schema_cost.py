"""What ``ensure_schema()`` costs a load task on a warehouse that is already current: before and after.

Before: every call ran the DDL and the migration probes (``create_and_migrate``) in a locked transaction.
After: one catalogue query (``schema_is_current``), and the full path only when it answers no. Both run
interleaved in one process, on SQLite and on a throw-away PostgreSQL, so they share the machine's load.

``python -m bench.ensure_schema_cost --tries 30``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT / "plugins"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def _full_path(warehouse: object) -> None:
    """The pre-change ``ensure_schema``: DDL and migration probes in a locked transaction, every time."""
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse
    from coinstats_provider.warehouse.migrations import create_and_migrate

    assert isinstance(warehouse, CoinStatsWarehouse)
    with warehouse._transaction("coinstats_warehouse_schema") as cur:
        create_and_migrate(cur, warehouse.dialect, warehouse.batch_size)


def _time(call: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def measure(conn_json: str, tries: int) -> dict[str, float]:
    """Median milliseconds of the full path and of ``ensure_schema`` on a current warehouse.

    :param conn_json: The warehouse connection (``AIRFLOW_CONN_...`` JSON).
    :param tries: Calls of each, interleaved.
    """
    from coinstats_provider.warehouse.loader import CoinStatsWarehouse

    os.environ["AIRFLOW_CONN_COINSTATS_WAREHOUSE"] = conn_json
    warehouse = CoinStatsWarehouse()
    warehouse.ensure_schema()  # creates the tables and resolves the hook once
    before: list[float] = []
    after: list[float] = []
    for _ in range(tries):
        before.append(_time(lambda: _full_path(warehouse)))
        after.append(_time(warehouse.ensure_schema))
    return {"before_ms": statistics.median(before), "after_ms": statistics.median(after)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tries", type=int, default=30, help="calls of each path per backend")
    args = parser.parse_args(argv)

    from bench._common import machine_info, print_machine
    from tests.helpers.postgres_server import PostgresServer

    info = machine_info()
    print_machine(info)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "warehouse.db"
        results["sqlite"] = measure(json.dumps({"conn_type": "sqlite", "host": str(path)}), args.tries)
    with PostgresServer() as pg:
        results["postgres"] = measure(pg.conn_json(pg.create_database("schema_cost")), args.tries)
    print(f"median ms over {args.tries} calls each, interleaved (load average now {os.getloadavg()})")
    print("| warehouse | before: DDL + probes every call | after: catalogue check | ratio |")
    print("|---|---|---|---|")
    for backend, r in results.items():
        print(f"| {backend} | {r['before_ms']:.1f} | {r['after_ms']:.1f} | {r['before_ms'] / r['after_ms']:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
