"""Helpers shared by the benchmarks: Airflow settings, server subprocesses, memory and machine facts.

Nothing here imports Airflow: :func:`prepare_airflow_env` must run before the first Airflow import.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
API_KEY = "sandbox-api-key"
RESULT_PREFIX = "BENCH-RESULT "
#: ``connectionFields`` accepted by the sandbox for ``binance``.
BINANCE_FIELDS = {"apiKey": "bench-exchange-key", "apiSecret": "bench-exchange-secret"}


def prepare_airflow_env(home: Path) -> None:
    """Point Airflow at a throw-away home and the repo's DAGs/plugins; call before importing Airflow.

    :param home: Temporary ``AIRFLOW_HOME`` (also holds the exchange-support cache).
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "COINSTATS_CACHE_DIR": str(home / "coinstats-cache"),
    }
    os.environ.update(env)
    for path in (str(ROOT / "plugins"), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory outside the repository, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def allow_direct_execute() -> None:
    """Let ``operator.execute()`` run outside the Task Runner without a warning (as ``dag.test`` does)."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    ExecutorSafeguard.test_mode = True


class FakeTI:
    """The part of a TaskInstance the operators use outside a real run."""

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def task_context() -> dict[str, Any]:
    """A minimal task context for calling an operator's ``execute`` directly."""
    return {"ti": FakeTI(), "logical_date": dt.datetime.now(dt.UTC)}


def set_connection(conn_id: str, **fields: Any) -> None:
    """Define an Airflow connection through its ``AIRFLOW_CONN_<ID>`` JSON environment variable."""
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(fields)


class ServerProcess:
    """A loopback HTTP server in its own process (so it does not share the client's GIL).

    The server writes its base URL to a ready file; :meth:`stop` ends exactly this process.

    :param module: ``python -m`` module to run (``include.coinstats_sandbox`` or ``bench._fastserver``).
    :param args: Extra command-line arguments.
    """

    def __init__(self, module: str, args: Sequence[str] = ()) -> None:
        self.module = module
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self._dir: Path | None = None

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and return its base URL."""
        self._dir = Path(tempfile.mkdtemp(prefix="coinstats-bench-server-"))
        ready = self._dir / "ready"
        cmd = [PYTHON, "-m", self.module, "--port", "0", "--ready-file", str(ready), *self.args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.module} was not ready within {timeout} s")
            time.sleep(0.02)
        self.base_url = ready.read_text().strip()
        return self.base_url

    def stop(self) -> None:
        """Terminate the server process (SIGTERM, then SIGKILL after 10 s) and remove its files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def sandbox(
    *, transactions: int = 2500, sync_seconds: float = 0.0, coins: int | None = None, credits: int = 100_000_000
) -> ServerProcess:
    """A CoinStats sandbox server process (not started yet).

    :param transactions: Transactions per portfolio.
    :param sync_seconds: Duration of a sync (0: transactions are readable at once after connecting).
    :param coins: Coins per portfolio (``None``: the sandbox picks 3..40 per portfolio).
    :param credits: Credits of the API key.
    """
    args = [
        "--quiet",
        "--transactions",
        str(transactions),
        "--sync-seconds",
        str(sync_seconds),
        "--credits",
        str(credits),
    ]
    if coins is not None:
        args += ["--coins", str(coins)]
    return ServerProcess("include.coinstats_sandbox", args)


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One plain HTTP call with the sandbox API key (setup and stats only; not measured)."""
    import requests

    response = requests.request(method, url, json=body, headers={"X-API-KEY": API_KEY}, timeout=timeout)
    response.raise_for_status()
    return response.json()


def connect_portfolio(base_url: str, fields: dict[str, str] | None = None) -> str:
    """Create (or find) a binance portfolio on the sandbox and return its id."""
    body = {"connectionId": "binance", "connectionFields": fields or BINANCE_FIELDS}
    return str(http_json("POST", f"{base_url}/portfolio/exchange", body)["portfolioId"])


def sandbox_stats(base_url: str) -> dict[str, Any]:
    """``GET /_sandbox/stats``."""
    stats = http_json("GET", f"{base_url}/_sandbox/stats")
    assert isinstance(stats, dict)
    return stats


def rss_mib() -> dict[str, float]:
    """Current and peak resident memory of this process in MiB (``/proc/self/status`` and getrusage)."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    values["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return values


def emit_result(result: dict[str, Any]) -> None:
    """Print a child's result as one JSON line the parent can find."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Run ``python ARGS`` in a fresh process from the repo root and return its :func:`emit_result` dict."""
    proc = subprocess.run(
        [PYTHON, *args],
        cwd=ROOT,
        env=env if env is not None else os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            assert isinstance(result, dict)
            return result
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    raise RuntimeError(f"child {' '.join(args)} exited {proc.returncode} without a result:\n{tail}")


def _first_line(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        return "n/a"


def machine_info() -> dict[str, Any]:
    """Facts about this machine and the software under test."""
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    lscpu = _first_line(["lscpu"]).splitlines()
    wanted = ("Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Core(s) per socket", "Hypervisor")
    cpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lscpu) if k.strip() in wanted}
    mem_total = "n/a"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": _first_line(["nproc"]),
        "cpu": cpu,
        "mem_total": mem_total,
        "loadavg_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "apache-airflow": version("apache-airflow"),
        "apache-airflow-providers-http": version("apache-airflow-providers-http"),
        "apache-airflow-providers-common-sql": version("apache-airflow-providers-common-sql"),
        "requests": version("requests"),
    }


def print_machine(info: dict[str, Any]) -> None:
    """Print :func:`machine_info` compactly."""
    cpu = info["cpu"]
    print(
        f"machine: nproc={info['nproc']} cpu={cpu.get('Model name', '?')} mem={info['mem_total']} "
        f"load={tuple(round(x, 2) for x in info['loadavg_at_start'])} {info['platform']}"
    )
    print(
        f"software: python {info['python']}, apache-airflow {info['apache-airflow']}, "
        f"providers-http {info['apache-airflow-providers-http']}, "
        f"providers-common-sql {info['apache-airflow-providers-common-sql']}, requests {info['requests']}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (markdown-compatible pipes)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))
