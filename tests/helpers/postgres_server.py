"""A throw-away local PostgreSQL server for tests.

Usage from a test module (``tests/conftest.py`` may import it the same way to share it)::

    from tests.helpers.postgres_server import postgres_server  # noqa: F401

    def test_x(postgres_server: PostgresServer) -> None:
        dbname = postgres_server.create_database("x")
        monkeypatch.setenv("AIRFLOW_CONN_MY_DB", postgres_server.conn_json(dbname))

The server is started once per pytest session, only when a test asks for the fixture, and is
stopped and deleted afterwards. PostgreSQL is installed with apt if its binaries are missing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["PostgresServer", "ensure_postgres_installed", "postgres_server"]

_DB_OS_USER = "postgres"
_SUPERUSER = "postgres"
_HOST = "127.0.0.1"
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _version_key(path: Path) -> tuple[int, ...]:
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts)


def _find_bin_dir() -> Path | None:
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if (p.parent / "initdb").exists()]
    if candidates:
        return max(candidates, key=_version_key)
    pg_ctl, initdb = shutil.which("pg_ctl"), shutil.which("initdb")
    if pg_ctl and initdb and Path(pg_ctl).resolve().parent == Path(initdb).resolve().parent:
        return Path(pg_ctl).resolve().parent
    return None


def ensure_postgres_installed() -> Path:
    """Return the PostgreSQL ``bin`` directory, installing the ``postgresql`` package if needed.

    :return: Directory containing ``initdb``, ``pg_ctl`` and ``createdb``.
    :raises RuntimeError: If PostgreSQL is missing and cannot be installed.
    """
    found = _find_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin or "
            "on PATH, and they cannot be installed automatically (needs root and apt-get). Install them "
            "with: apt-get install -y --no-install-recommends postgresql"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not install PostgreSQL: {shlex.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-2000:]}"
            )
    found = _find_bin_dir()
    if found is None:
        raise RuntimeError("the postgresql package was installed but initdb/pg_ctl are still not found")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, listening on 127.0.0.1.

    Loopback connections use trust authentication as superuser ``postgres``; the server also
    listens on a unix socket inside the temporary directory. When run as root, the server runs as
    the ``postgres`` OS user (PostgreSQL refuses to run as root).

    :param dbname: Database created at start-up.
    :param start_timeout: Seconds to wait for the server to accept connections.
    """

    def __init__(self, dbname: str = "coinstats_test", *, start_timeout: int = 60) -> None:
        if not _NAME_RE.match(dbname):
            raise ValueError(f"invalid database name {dbname!r}")
        self.dbname = dbname
        self.host = _HOST
        self.user = _SUPERUSER
        self.port = 0
        self.start_timeout = start_timeout
        self._bin: Path | None = None
        self._root: Path | None = None
        self._running = False

    # -- paths and commands ------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The temporary directory holding the data directory, socket and log."""
        if self._root is None:
            raise RuntimeError("the server has not been started")
        return self._root

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's unix socket."""
        return self.root

    @property
    def log_file(self) -> Path:
        """The server log."""
        return self.root / "server.log"

    @property
    def uri(self) -> str:
        """``postgresql://`` URI of the default database."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def _tool(self, name: str) -> str:
        assert self._bin is not None
        return str(self._bin / name)

    def _run_as_db_user(self, cmd: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", _DB_OS_USER, "--", *cmd]
            else:
                cmd = ["su", _DB_OS_USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        return subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=timeout, cwd=self.root)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Install if needed, initialise the cluster, start the server and create ``dbname``.

        :return: ``self``.
        :raises RuntimeError: If any step fails; the message includes the tool's output.
        """
        self._bin = ensure_postgres_installed()
        self._root = Path(tempfile.mkdtemp(prefix="coinstats-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
        try:
            if os.geteuid() == 0:
                try:
                    shutil.chown(self._root, _DB_OS_USER, _DB_OS_USER)
                except LookupError:
                    raise RuntimeError(
                        f"running as root but the OS user {_DB_OS_USER!r} does not exist; install the "
                        "postgresql package (it creates that user) or run the tests as a non-root user"
                    ) from None
            self._check(
                self._run_as_db_user(
                    [
                        self._tool("initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        _SUPERUSER,
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]
                ),
                "initdb",
            )
            self._start_server()
            self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        last: subprocess.CompletedProcess[str] | None = None
        for _attempt in range(3):  # a port taken between probing and binding gets a retry
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.host} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            last = self._run_as_db_user(
                [
                    self._tool("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(self.start_timeout),
                    "start",
                ],
                timeout=self.start_timeout + 30,
            )
            if last.returncode == 0:
                self._running = True
                return
            time.sleep(0.2)
        assert last is not None
        self._check(last, "pg_ctl start")

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode == 0:
            return
        server_log = ""
        if self._root is not None and self.log_file.exists():
            server_log = self.log_file.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"{what} failed with exit code {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            + (f"\nserver log:\n{server_log}" if server_log else "")
        )

    def create_database(self, name: str) -> str:
        """Create a database on the running server.

        :param name: Database name (lower-case identifier).
        :return: ``name``.
        """
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}")
        proc = subprocess.run(
            [self._tool("createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user, name],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        self._check(proc, f"createdb {name}")
        return name

    def conn_json(self, dbname: str | None = None) -> str:
        """Airflow connection JSON (``conn_type`` ``postgres``) for ``AIRFLOW_CONN_<ID>`` variables.

        :param dbname: Database to point at; defaults to :attr:`dbname`.
        :return: The JSON text.
        """
        return json.dumps(
            {
                "conn_type": "postgres",
                "host": self.host,
                "port": self.port,
                "login": self.user,
                "schema": dbname or self.dbname,
            }
        )

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and delete its directory."""
        if self._running:
            self._run_as_db_user([self._tool("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"])
            self._running = False
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Session-wide PostgreSQL server; fails (does not skip) when it cannot be provided."""
    try:
        server = PostgresServer().start()
    except RuntimeError as exc:
        pytest.fail(f"cannot provide a PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
