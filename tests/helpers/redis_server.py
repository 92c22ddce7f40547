"""A throw-away local Redis server for tests (the Celery broker of the real-stack tests).

Usage from a test module::

    pytest_plugins = ["tests.helpers.redis_server"]

    def test_x(redis_server: RedisServer) -> None:
        broker_url = redis_server.url

The server is started once per pytest session, only when a test asks for the fixture, listens on a free
loopback port without persistence, and is stopped and deleted afterwards. Debian's ``redis-server`` is
installed with apt if it is missing (as :mod:`tests.helpers.postgres_server` does for PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["RedisServer", "ensure_redis_installed", "redis_server"]

_HOST = "127.0.0.1"
_PACKAGE = "redis-server"


def ensure_redis_installed() -> str:
    """Return the path of ``redis-server``, installing Debian's ``redis-server`` package if needed.

    :raises RuntimeError: If it is missing and cannot be installed (needs root and apt-get).
    """
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            "redis-server was not found on PATH and cannot be installed automatically (needs root and "
            f"apt-get). Install it with: apt-get install -y --no-install-recommends {_PACKAGE}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", _PACKAGE]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"could not install Redis: {shlex.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-2000:]}"
            )
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(f"the {_PACKAGE} package was installed but redis-server is still not on PATH")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    """True when a Redis server answers ``PING`` on the port."""
    with contextlib.suppress(OSError), socket.create_connection((_HOST, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
    return False


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1, in memory only (no RDB/AOF), in a temporary directory.

    :param start_timeout: Seconds to wait for the server to answer ``PING``.
    """

    def __init__(self, *, start_timeout: float = 30) -> None:
        self.host = _HOST
        self.port = 0
        self.start_timeout = start_timeout
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        """The temporary directory holding the server's log."""
        if self._root is None:
            raise RuntimeError("the server has not been started")
        return self._root

    @property
    def log_file(self) -> Path:
        """The server log."""
        return self.root / "redis.log"

    def url(self, db: int = 0) -> str:
        """``redis://`` URL of one logical database.

        :param db: Database number (0-15).
        """
        return f"redis://{self.host}:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Install if needed, start the server and wait until it answers.

        :return: ``self``.
        :raises RuntimeError: If it does not come up; the message includes its log.
        """
        binary = ensure_redis_installed()
        self._root = Path(tempfile.mkdtemp(prefix="coinstats-redis-"))
        try:
            for _attempt in range(3):  # a port taken between probing and binding gets a retry
                self.port = _free_port()
                self._proc = subprocess.Popen(
                    [
                        binary,
                        "--bind",
                        self.host,
                        "--port",
                        str(self.port),
                        "--dir",
                        str(self.root),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--logfile",
                        str(self.log_file),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                deadline = time.monotonic() + self.start_timeout
                while self._proc.poll() is None and time.monotonic() < deadline:
                    if _ping(self.port):
                        return self
                    time.sleep(0.1)
                self._terminate()
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"redis-server did not answer PING within {self.start_timeout:.0f}s:\n{log}")
        except BaseException:
            self.stop()
            raise

    def _terminate(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        self._terminate()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Session-wide Redis server; fails (does not skip) when it cannot be provided."""
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        pytest.fail(f"cannot provide a Redis server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
