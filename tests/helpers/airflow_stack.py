"""A real Airflow 3.3 deployment on loopback, for end-to-end tests on the real stack.

:class:`AirflowStack` starts ``airflow api-server``, ``scheduler``, ``dag-processor`` and ``triggerer``
as separate processes (LocalExecutor, metadata DB on the test PostgreSQL server, the repo's ``dags/`` and
``plugins/``, the simple auth manager with a known admin password), a CoinStats sandbox on a free port,
and loads the project's connections, pool and Variable through ``include.load_settings``. Every secret
is a unique canary string, so a test can prove that none of them leaks into logs, XComs or the UI.

Test modules share one stack per session by declaring::

    pytest_plugins = ["tests.helpers.postgres_server", "tests.helpers.airflow_stack"]

(importing the fixture functions directly would give each module its own session-scoped copy).

``AirflowStack(pg, executor="CeleryExecutor", redis=redis_server)`` runs the same stack on CeleryExecutor
instead: Redis (:mod:`tests.helpers.redis_server`) as broker, the metadata database as Celery's result
backend, and :data:`CELERY_WORKERS` ``airflow celery worker`` processes, each with its own working
directory, ``HOME``, ``TMPDIR`` and CoinStats cache (nothing on local disk is shared between tasks but
the task-log folder, which stands in for remote logging), and its own name as the task instances'
``hostname`` (:mod:`tests.helpers.worker_hostname`). The session fixture is ``celery_stack``.

Set ``COINSTATS_KEEP_STACK_LOGS=/some/dir`` to keep a copy of the stack's ``AIRFLOW_HOME`` (component
logs, task logs) after the run for debugging; by default everything is deleted.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx
import psutil
import pytest
import yaml

from include.coinstats_sandbox import SandboxConfig, SandboxServer
from tests.helpers import worker_hostname
from tests.helpers.canary import new_canary
from tests.helpers.postgres_server import PostgresServer
from tests.helpers.redis_server import RedisServer

__all__ = [
    "CELERY_WORKERS",
    "DAG_ID",
    "EXCHANGE_ACCOUNTS",
    "AirflowStack",
    "StackError",
    "airflow_stack",
    "celery_stack",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = Path(sys.executable).parent / "airflow"
DAG_ID = "coinstats_portfolio_sync"
#: The exchange accounts the stack defines: conn_id -> CoinStats exchange id.
EXCHANGE_ACCOUNTS = {
    "coinstats_exchange_binance": "binance",
    "coinstats_exchange_okx": "okx",
    "coinstats_exchange_kraken": "kraken",
}
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Names of the Celery workers of a CeleryExecutor stack (their ``--celery-hostname`` and TI hostname).
CELERY_WORKERS = ("worker-a", "worker-b")
LOCAL, CELERY = "LocalExecutor", "CeleryExecutor"
ADMIN_USER = "admin"
_HOST = "127.0.0.1"

T = TypeVar("T")


class StackError(RuntimeError):
    """The stack could not be started or did not behave; the message carries the relevant log tail."""


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    check: Callable[[], None] | None = None,
) -> T:
    """Call ``probe`` until it returns something other than ``None``/``False``; bounded by ``timeout``.

    :param what: Description for the timeout message.
    :param probe: Returns the awaited value, or ``None``/``False`` to keep waiting.
    :param timeout: Seconds before :class:`StackError` is raised.
    :param interval: Seconds between probes.
    :param check: Called before every probe; raises to abort early (e.g. a component died).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if check is not None:
            check()
        try:
            value = probe()
        except (httpx.HTTPError, OSError) as err:
            value, last_error = None, err
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class AirflowStack:
    """A complete Airflow on loopback; use as a context manager (``with AirflowStack(pg) as stack:``).

    :param postgres: A running :class:`PostgresServer`; the stack creates its metadata and warehouse
        databases on it.
    :param startup_timeout: Seconds allowed for the components to become healthy and the DAG to be parsed.
    :param sandbox_config: Overrides for the CoinStats sandbox (its API key is always the canary).
    :param executor: ``LocalExecutor`` or ``CeleryExecutor`` (then ``redis`` is required).
    :param redis: The running Redis server a CeleryExecutor stack uses as broker.
    :param worker_concurrency: Task slots of each Celery worker.
    :param extra_dags: More DAG files to deploy beside ``dags/`` (e.g. a benchmark's DAG).
    """

    def __init__(
        self,
        postgres: PostgresServer,
        *,
        startup_timeout: float = 240,
        sandbox_config: Mapping[str, Any] | None = None,
        executor: str = LOCAL,
        redis: RedisServer | None = None,
        worker_concurrency: int = 4,
        extra_dags: Sequence[Path] = (),
    ) -> None:
        if executor not in (LOCAL, CELERY):
            raise ValueError(f"executor must be {LOCAL} or {CELERY}, not {executor!r}")
        if executor == CELERY and redis is None:
            raise ValueError("a CeleryExecutor stack needs a running RedisServer (redis=...) as its broker")
        self.executor = executor
        self.redis = redis
        self.worker_concurrency = worker_concurrency
        self.extra_dags = tuple(Path(p).resolve() for p in extra_dags)
        self.postgres = postgres
        self.startup_timeout = startup_timeout
        suffix = secrets.token_hex(4)
        self.metadata_db = f"airflow_meta_{suffix}"
        self.warehouse_db = f"coinstats_wh_{suffix}"
        self.admin_user = ADMIN_USER
        self.admin_password = f"admin-{secrets.token_hex(8)}"
        #: Every secret the stack configures; none of them may ever show up in a log, XCom or page.
        self.canaries: dict[str, str] = {"api_key": new_canary("APIK")}
        # The kind of secret leads the label, so no two canaries share 8 consecutive characters (the leak
        # check's fragment): the Login is shown in the connection form, the others never.
        for conn_id, exchange in EXCHANGE_ACCOUNTS.items():
            self.canaries[f"{conn_id}.login"] = new_canary(f"K{exchange.upper()[:3]}")
            self.canaries[f"{conn_id}.password"] = new_canary(f"S{exchange.upper()[:3]}")
        self.canaries["coinstats_exchange_okx.passphrase"] = new_canary("POKX")
        self._sandbox_overrides = dict(sandbox_config or {})
        self.sandbox: SandboxServer | None = None
        self.home: Path | None = None
        self.port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        #: Components this test killed on purpose (``kill_worker``): no longer checked by ``check_alive``.
        self.killed: dict[str, subprocess.Popen[bytes]] = {}
        self._log_handles: list[IO[bytes]] = []
        self._client: httpx.Client | None = None
        self._token: str | None = None
        self._env: dict[str, str] = {}

    # -- properties ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the api-server (UI and REST API)."""
        return f"http://{_HOST}:{self.port}"

    @property
    def sandbox_server(self) -> SandboxServer:
        """The CoinStats sandbox (in this process): ``stats()``, ``update(**config)``, ``config``."""
        if self.sandbox is None:
            raise StackError("the sandbox is not running")
        return self.sandbox

    @property
    def sandbox_url(self) -> str:
        """Base URL of the CoinStats sandbox the ``coinstats_default`` connection points at."""
        return self.sandbox_server.base_url

    @property
    def root(self) -> Path:
        """The temporary ``AIRFLOW_HOME``."""
        if self.home is None:
            raise StackError("the stack has not been started")
        return self.home

    def log_file(self, component: str) -> Path:
        """The stdout/stderr log of one component (``api-server``, ``scheduler``...)."""
        return self.root / "components" / f"{component}.log"

    def log_tail(self, component: str, chars: int = 4000) -> str:
        """The end of a component's log, for failure messages."""
        path = self.log_file(component)
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    @property
    def env(self) -> dict[str, str]:
        """Environment of every Airflow process of this stack."""
        return dict(self._env)

    @property
    def workers(self) -> tuple[str, ...]:
        """Names of this stack's Celery workers (empty on LocalExecutor)."""
        return CELERY_WORKERS if self.executor == CELERY else ()

    @property
    def dags_folder(self) -> Path:
        """The DAG folder: the repo's ``dags/``, or a folder linking its files and the extra DAGs."""
        if not self.extra_dags:
            return ROOT / "dags"
        return self.root / "dags"

    def worker_dir(self, worker: str) -> Path:
        """A Celery worker's own directory: its working directory, with ``home/`` and ``tmp/`` inside."""
        return self.root / "workers" / worker

    def warehouse_dsn(self) -> str:
        """libpq DSN of the warehouse database (for assertions with psycopg2)."""
        return (
            f"host={self.postgres.host} port={self.postgres.port} user={self.postgres.user} dbname={self.warehouse_db}"
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> AirflowStack:
        """Start everything and wait until the DAG is parsed and unpaused.

        :raises StackError: With the log tail of the failing component.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="coinstats-airflow-"))
        (self.home / "components").mkdir()
        self.postgres.create_database(self.metadata_db)
        self.postgres.create_database(self.warehouse_db)
        config = {"sync_seconds": 4.0, "transactions": 300, "quiet": True, **self._sandbox_overrides}
        self.sandbox = SandboxServer(SandboxConfig(api_keys=(self.canaries["api_key"],), **config))
        self.sandbox.start()
        self.port = free_port()
        if self.extra_dags:
            self.dags_folder.mkdir()
            for dag_file in [*sorted((ROOT / "dags").glob("*.py")), *self.extra_dags]:
                (self.dags_folder / dag_file.name).symlink_to(dag_file)
        self._env = self._build_env()
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({self.admin_user: self.admin_password}))
        self._run_cli("db-migrate", [str(AIRFLOW_BIN), "db", "migrate"], timeout=400)
        settings = self.home / "airflow_settings.yaml"
        settings.write_text(yaml.safe_dump(self._settings()))
        self._run_cli("load-settings", [sys.executable, "-m", "include.load_settings", str(settings)], timeout=180)
        settings.unlink()
        for component in COMPONENTS:
            self._spawn(component)
        for worker in self.workers:
            self._spawn_worker(worker)
        self._client = httpx.Client(base_url=self.base_url, timeout=120, trust_env=False)
        wait_until(
            "the api-server and all components to report healthy",
            self._healthy,
            timeout=self.startup_timeout,
            interval=1,
            check=self.check_alive,
        )
        for worker in self.workers:
            wait_until(
                f"Celery worker {worker} to be ready",
                functools.partial(self._worker_ready, worker),
                timeout=self.startup_timeout,
                interval=1,
                check=self.check_alive,
            )
        self._login()
        wait_until(
            f"the DAG {DAG_ID} to be parsed",
            self._dag_parsed,
            timeout=self.startup_timeout,
            interval=1,
            check=self.check_alive,
        )
        self.unpause()
        for path in self.extra_dags:
            self.unpause(path.stem)

    def _build_env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "PYTEST_"))}
        env.pop("COINSTATS_CACHE_DIR", None)
        pg = self.postgres
        pythonpath = [str(ROOT), str(ROOT / "plugins")]
        if env.get("PYTHONPATH"):
            pythonpath.append(env["PYTHONPATH"])
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "*",
                "no_proxy": "*",
                "COINSTATS_CACHE_DIR": str(self.root / "coinstats-cache"),
                "AIRFLOW_HOME": str(self.root),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.admin_user}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                    self.root / "simple_auth_manager_passwords.json"
                ),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                    f"postgresql+psycopg2://{pg.user}@{pg.host}:{pg.port}/{self.metadata_db}"
                ),
                "AIRFLOW__API__HOST": _HOST,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API_AUTH__JWT_SECRET": base64.urlsafe_b64encode(secrets.token_bytes(64)).decode(),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            }
        )
        if self.executor == CELERY:
            env.update(self._celery_env())
        return env

    def _celery_env(self) -> dict[str, str]:
        """Broker, result backend and the timeouts that let Airflow recover from a killed worker quickly."""
        assert self.redis is not None
        pg = self.postgres
        return {
            "AIRFLOW__CELERY__BROKER_URL": self.redis.url(),
            "AIRFLOW__CELERY__RESULT_BACKEND": (
                f"db+postgresql+psycopg2://{pg.user}@{pg.host}:{pg.port}/{self.metadata_db}"
            ),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            # A task whose worker died stops heartbeating: failed (then retried) after this many seconds
            # instead of the default 300.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # A message a dead worker had prefetched stays unacknowledged in Redis: the scheduler requeues
            # its task after this long in "queued" instead of 600 s.
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "90",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{worker_hostname.__name__}.{worker_hostname.hostname.__name__}",
        }

    def _settings(self) -> dict[str, Any]:
        """The stack's connections, pool and Variable in the Astro ``airflow_settings.yaml`` format."""
        pg = self.postgres
        connections: list[dict[str, Any]] = [
            {
                "conn_id": "coinstats_default",
                "conn_type": "coinstats",
                "conn_host": self.sandbox_url,
                "conn_password": self.canaries["api_key"],
                "conn_extra": {"timeout": 10, "max_retries": 5, "backoff_base": 0.2, "backoff_max": 2},
            },
            {
                "conn_id": "coinstats_warehouse",
                "conn_type": "postgres",
                "conn_host": pg.host,
                "conn_port": pg.port,
                "conn_login": pg.user,
                "conn_schema": self.warehouse_db,
            },
        ]
        for conn_id, exchange in EXCHANGE_ACCOUNTS.items():
            extra: dict[str, Any] = {"connection_id": exchange, "portfolio_name": f"Stack {exchange}"}
            if f"{conn_id}.passphrase" in self.canaries:
                extra["passphrase"] = self.canaries[f"{conn_id}.passphrase"]
            connections.append(
                {
                    "conn_id": conn_id,
                    "conn_type": "coinstats_exchange",
                    "conn_login": self.canaries[f"{conn_id}.login"],
                    "conn_password": self.canaries[f"{conn_id}.password"],
                    "conn_extra": extra,
                }
            )
        return {
            "airflow": {
                "connections": connections,
                "pools": [{"pool_name": "coinstats_api", "pool_slot": 4, "pool_description": "CoinStats API"}],
                "variables": [
                    {
                        "variable_name": "coinstats_exchange_conn_ids",
                        "variable_value": json.dumps(list(EXCHANGE_ACCOUNTS)),
                    }
                ],
            }
        }

    def _run_cli(self, name: str, cmd: list[str], *, timeout: float) -> None:
        log = self.log_file(name)
        with log.open("wb") as out:
            try:
                proc = subprocess.run(
                    cmd, cwd=ROOT, env=self._env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired:
                raise StackError(f"{name} did not finish within {timeout:.0f}s:\n{self.log_tail(name)}") from None
        if proc.returncode != 0:
            raise StackError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _spawn(self, component: str) -> None:
        cmd = [str(AIRFLOW_BIN), component]
        if component == "api-server":
            cmd += ["--host", _HOST, "--port", str(self.port), "--workers", "1"]
        handle = self.log_file(component).open("wb")
        self._log_handles.append(handle)
        self.processes[component] = subprocess.Popen(
            cmd, cwd=ROOT, env=self._env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _spawn_worker(self, worker: str) -> None:
        """Start one ``airflow celery worker`` in its own directory, with its own HOME, TMPDIR and cache."""
        base = self.worker_dir(worker)
        for sub in ("home", "tmp"):
            (base / sub).mkdir(parents=True)
        env = {
            **self._env,
            "HOME": str(base / "home"),
            "TMPDIR": str(base / "tmp"),
            worker_hostname.ENV: worker,
        }
        env.pop("COINSTATS_CACHE_DIR", None)  # the provider's default: under this worker's TMPDIR
        cmd = [
            str(AIRFLOW_BIN),
            "celery",
            "worker",
            "--celery-hostname",
            f"{worker}@%h",
            "--concurrency",
            str(self.worker_concurrency),
            "--skip-serve-logs",  # task logs are read from the (shared) log folder; one port per host
        ]
        name = f"celery-{worker}"
        handle = self.log_file(name).open("wb")
        self._log_handles.append(handle)
        self.processes[name] = subprocess.Popen(
            cmd, cwd=base, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _worker_ready(self, worker: str) -> bool:
        return " ready." in self.log_tail(f"celery-{worker}", 200_000)

    def kill_worker(self, worker: str) -> int:
        """SIGKILL a Celery worker with every process it started (its pool and the tasks running on it).

        :param worker: One of :attr:`workers`.
        :return: How many processes were killed.
        """
        proc = self.processes.pop(f"celery-{worker}")
        self.killed[f"celery-{worker}"] = proc
        try:
            parent = psutil.Process(proc.pid)
            victims = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        _signal_group(proc.pid, signal.SIGKILL)
        for process in victims:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return len(victims)

    def check_alive(self) -> None:
        """Raise :class:`StackError` (with its log tail) if any component has exited."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise StackError(f"airflow {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _healthy(self) -> bool:
        response = self.client.get("/api/v2/monitor/health")
        if response.status_code != 200:
            return False
        health = response.json()
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def _login(self) -> None:
        response = self.client.post("/auth/token", json={"username": self.admin_user, "password": self.admin_password})
        if response.status_code != 201:
            raise StackError(f"POST /auth/token answered {response.status_code}: {response.text[:500]}")
        self._token = str(response.json()["access_token"])
        self.client.headers["Authorization"] = f"Bearer {self._token}"

    def _dag_parsed(self) -> bool:
        errors = self.client.get("/api/v2/importErrors").json().get("import_errors", [])
        if errors:
            raise StackError(f"DAG import errors: {json.dumps(errors)[:3000]}")
        dag_ids = [DAG_ID, *(path.stem for path in self.extra_dags)]
        return all(self.client.get(f"/api/v2/dags/{dag_id}").status_code == 200 for dag_id in dag_ids)

    def stop(self) -> None:
        """Stop every process of the stack (their whole process groups), the sandbox; delete the home."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._stop_processes()
        for handle in self._log_handles:
            handle.close()
        self._log_handles.clear()
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None
        if self.home is not None:
            keep = os.environ.get("COINSTATS_KEEP_STACK_LOGS")
            if keep:
                shutil.copytree(self.home, Path(keep) / self.home.name, dirs_exist_ok=True, symlinks=True)
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def _stop_processes(self) -> None:
        started = [*self.processes.values(), *self.killed.values()]
        tracked: dict[int, psutil.Process] = {}
        for proc in started:
            try:
                parent = psutil.Process(proc.pid)
                tracked[parent.pid] = parent
                tracked.update({child.pid: child for child in parent.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        for proc in started:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        for process in tracked.values():
            _signal(process, signal.SIGTERM)
        _, alive = psutil.wait_procs(list(tracked.values()), timeout=20)
        for proc in started:
            _signal_group(proc.pid, signal.SIGKILL)
        for process in alive:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        for proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._kill_strays()
        self.processes.clear()
        self.killed.clear()

    def _kill_strays(self) -> None:
        """Kill any process that still runs with this stack's ``AIRFLOW_HOME`` (e.g. a re-parented task)."""
        if self.home is None:
            return
        home = str(self.home)
        strays: list[psutil.Process] = []
        for process in psutil.process_iter():
            if process.pid == os.getpid():
                continue
            try:
                if process.environ().get("AIRFLOW_HOME") == home:
                    strays.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for process in strays:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(strays, timeout=10)

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- REST API ------------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """An ``httpx.Client`` on the api-server; after start-up it carries the admin's JWT."""
        if self._client is None:
            raise StackError("the stack is not running")
        return self._client

    @property
    def token(self) -> str:
        """The admin's JWT from ``POST /auth/token``."""
        if self._token is None:
            raise StackError("not logged in")
        return self._token

    def api(self, method: str, path: str, *, expect: int | tuple[int, ...] = 200, **kwargs: Any) -> Any:
        """Call the REST API (``/api/v2`` + ``path``) and return the decoded JSON body.

        :param method: HTTP method.
        :param path: Path below ``/api/v2``.
        :param expect: Accepted status code(s); anything else raises :class:`StackError`.
        """
        response = self.client.request(method, f"/api/v2{path}", **kwargs)
        accepted = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in accepted:
            raise StackError(f"{method} /api/v2{path} answered {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def unpause(self, dag_id: str = DAG_ID) -> None:
        """Unpause a DAG; the catch-up run its schedule creates at once is marked failed, unrun.

        ``coinstats_portfolio_sync`` is ``@daily`` with ``catchup=False`` and ``max_active_runs=1``: on
        unpause the scheduler queues a run for the latest interval, which would hold back every run a test
        triggers. It is retired before any of its tasks can start.
        """
        before = {run["dag_run_id"] for run in self.dag_runs(dag_id)}
        dag = self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        run_after = dag.get("next_dagrun_run_after")
        if dag.get("timetable_summary") in (None, "None") or run_after is None:
            return

        def catch_up_run() -> list[str] | None:
            runs = [
                run["dag_run_id"]
                for run in self.dag_runs(dag_id)
                if run["run_type"] == "scheduled" and run["dag_run_id"] not in before
            ]
            return runs or None

        due = time.time() >= _timestamp(run_after)
        if not due:
            return
        for run_id in wait_until("the scheduler's catch-up run", catch_up_run, timeout=60, check=self.check_alive):
            self.finish_run(run_id, dag_id=dag_id)

    def dag_runs(self, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """Every run of a DAG."""
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"])

    def finish_run(self, run_id: str, *, dag_id: str = DAG_ID, timeout: float = 60) -> None:
        """Mark a run failed (as the UI's "Mark run as failed" does) and wait until none of its tasks runs.

        The scheduler may be updating the same run's rows at that moment; PostgreSQL then breaks the
        deadlock by failing one side, and the api-server answers 500 "Database error". As a user clicking
        again would, the mark is retried (it is idempotent) until the run reads ``failed``.
        """
        path = f"/dags/{dag_id}/dagRuns/{run_id}"

        def marked() -> bool:
            if self.api("GET", path)["state"] == "failed":
                return True
            self.api("PATCH", path, json={"state": "failed"}, expect=(200, 500))
            return self.api("GET", path)["state"] == "failed"

        wait_until(f"run {run_id} to be marked failed", marked, timeout=timeout, interval=1, check=self.check_alive)

        def settled() -> bool:
            tis = self.task_instances(run_id, dag_id=dag_id)
            return not any(ti["state"] in ("running", "queued", "deferred", "scheduled") for ti in tis)

        wait_until(f"run {run_id} to stop", settled, timeout=timeout, check=self.check_alive)

    def task_instances(self, run_id: str, *, dag_id: str = DAG_ID) -> list[dict[str, Any]]:
        """Every task instance (mapped ones included) of a run."""
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return list(body["task_instances"])

    def trigger(self, conf: Mapping[str, Any], *, dag_id: str = DAG_ID) -> dict[str, Any]:
        """Trigger a run exactly as the UI's trigger form does (``logical_date`` null)."""
        body = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)})
        return dict(body)

    def wait_for_run(self, run_id: str, *, dag_id: str = DAG_ID, timeout: float = 360) -> dict[str, Any]:
        """Wait until a run finishes; returns the run (any terminal state)."""

        def finished() -> dict[str, Any] | None:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            return dict(run) if run["state"] in ("success", "failed") else None

        return wait_until(f"run {run_id} to finish", finished, timeout=timeout, interval=1, check=self.check_alive)

    def task_log(self, run_id: str, task_id: str, try_number: int, map_index: int = -1, *, dag_id: str = DAG_ID) -> str:
        """The full log of one task try, as the REST API serves it (JSON lines joined as text)."""
        body = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": "true"},
            headers={"Accept": "application/json"},
        )
        content = body.get("content", [])
        return "\n".join(json.dumps(line) if not isinstance(line, str) else line for line in content)


def _timestamp(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal(process: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        process.send_signal(sig)


def _running(stack: AirflowStack, what: str) -> Iterator[AirflowStack]:
    """Start ``stack`` (failing the test, not erroring, when it cannot start), yield it, stop it."""
    try:
        stack.start()
    except StackError as exc:
        pytest.fail(f"cannot start the {what}: {exc}", pytrace=False)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def airflow_stack(postgres_server: PostgresServer) -> Iterator[AirflowStack]:
    """One real Airflow for the whole session (shared by every module listing this file in pytest_plugins)."""
    yield from _running(AirflowStack(postgres_server), "Airflow stack")


@pytest.fixture(scope="module")
def celery_stack(postgres_server: PostgresServer, redis_server: RedisServer) -> Iterator[AirflowStack]:
    """A CeleryExecutor Airflow with two workers, for one test module (it is heavier than the shared one)."""
    stack = AirflowStack(postgres_server, executor=CELERY, redis=redis_server)
    yield from _running(stack, "CeleryExecutor Airflow stack")
