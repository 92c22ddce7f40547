"""Unit tests of the exchange-support cache: in-process, on disk, TTL, keyed by base URL."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import responses

from coinstats_provider.hooks import support_cache
from coinstats_provider.hooks.coinstats import CoinStatsHook
from tests.conftest import BASE_URL, SUPPORT, set_connection
from tests.unit.hooks.helpers import (
    API_KEY,
    FAST,
    SUPPORT_URL,
    make_hook,
)


def test_supported_exchanges_cached_in_process(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(SUPPORT_URL, json=SUPPORT)
    first_hook, _ = make_hook()
    second_hook, _ = make_hook()

    first = first_hook.get_supported_exchanges()
    second = second_hook.get_supported_exchanges()
    again = first_hook.get_supported_exchanges()

    assert first == second == again
    assert len(rsps.calls) == 1
    assert first_hook.credits.spent == 1
    assert second_hook.credits.spent == 0


def test_supported_exchanges_cached_on_disk(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    rsps.get(SUPPORT_URL, json=SUPPORT)
    first = make_hook()[0].get_supported_exchanges()
    assert support_cache._cache_file(BASE_URL).exists()

    support_cache._SUPPORT_CACHE.clear()
    second = make_hook()[0].get_supported_exchanges()

    assert first == second
    assert len(rsps.calls) == 1
    assert BASE_URL in support_cache._SUPPORT_CACHE


def test_supported_exchanges_cache_keyed_by_base_url(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn("cs_local", host="http://127.0.0.1:8765")
    rsps.get(SUPPORT_URL, json=SUPPORT)
    rsps.get("http://127.0.0.1:8765/exchange/support", json=SUPPORT[:1])

    assert len(make_hook()[0].get_supported_exchanges()) == 3
    assert len(make_hook("cs_local")[0].get_supported_exchanges()) == 1
    assert len(rsps.calls) == 2


def test_supported_exchanges_ttl_zero_disables_cache(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={**FAST, "support_cache_ttl": 0})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    hook, _ = make_hook()

    hook.get_supported_exchanges()
    hook.get_supported_exchanges()
    make_hook()[0].get_supported_exchanges()

    assert len(rsps.calls) == 3
    assert hook.credits.spent == 2
    assert not support_cache._cache_file(BASE_URL).exists()


def test_supported_exchanges_expired_disk_cache_refetches(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    coinstats_conn(extra={**FAST, "support_cache_ttl": 60})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    make_hook()[0].get_supported_exchanges()
    cache_file = support_cache._cache_file(BASE_URL)
    stored = json.loads(cache_file.read_text())
    stored["fetched_at"] = time.time() - 61
    cache_file.write_text(json.dumps(stored))
    support_cache._SUPPORT_CACHE.clear()

    make_hook()[0].get_supported_exchanges()

    assert len(rsps.calls) == 2
    assert json.loads(cache_file.read_text())["fetched_at"] > time.time() - 10


def test_supported_exchanges_expired_in_process_cache_refetches(
    coinstats_conn: Any, rsps: responses.RequestsMock
) -> None:
    coinstats_conn(extra={**FAST, "support_cache_ttl": 60})
    rsps.get(SUPPORT_URL, json=SUPPORT)
    make_hook()[0].get_supported_exchanges()
    fetched_at, exchanges = support_cache._SUPPORT_CACHE[BASE_URL]
    support_cache._SUPPORT_CACHE[BASE_URL] = (fetched_at - 61, exchanges)
    support_cache._cache_file(BASE_URL).unlink()

    make_hook()[0].get_supported_exchanges()

    assert len(rsps.calls) == 2


def test_supported_exchanges_corrupt_disk_cache_refetches(coinstats_conn: Any, rsps: responses.RequestsMock) -> None:
    cache_file = support_cache._cache_file(BASE_URL)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text("{corrupt")
    rsps.get(SUPPORT_URL, json=SUPPORT)

    assert len(make_hook()[0].get_supported_exchanges()) == 3
    assert len(rsps.calls) == 1


# -- 7. exchange-support cache on disk -------------------------------------------------------------


def support_hook(monkeypatch: pytest.MonkeyPatch) -> CoinStatsHook:
    """A hook on its own connection with the disk cache on, after the in-process cache is cleared."""
    extra = {**FAST, "max_retries": 2, "support_cache_ttl": 3600}
    set_connection(monkeypatch, "cs_trust", conn_type="coinstats", password=API_KEY, host=BASE_URL, extra=extra)
    support_cache.clear()
    return make_hook("cs_trust")[0]


def support_calls(rsps: responses.RequestsMock) -> int:
    return sum(1 for c in rsps.calls if c.request.url == SUPPORT_URL)


def write_cache(path: Path, fetched_at: Any, exchanges: Any = SUPPORT) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps({"fetched_at": fetched_at, "exchanges": exchanges}))


PLANTED = [{"connectionId": "evilx", "name": "Evil", "connectionFields": [{"name": "Seed", "key": "seed"}]}]


def test_default_cache_dir_is_per_user_and_private(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    monkeypatch.delenv("COINSTATS_CACHE_DIR")
    monkeypatch.setattr(support_cache.tempfile, "tempdir", str(tmp_path))
    rsps.get(SUPPORT_URL, json=SUPPORT)

    support_hook(monkeypatch).get_supported_exchanges()

    root = tmp_path / f"coinstats-provider-{os.getuid()}"
    assert support_cache._cache_file(BASE_URL).parent == root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    cache_file = support_cache._cache_file(BASE_URL)
    assert cache_file.is_file()
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    assert [p.name for p in root.iterdir()] == [cache_file.name]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_writable_cache_dir_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
    rsps: responses.RequestsMock,
    tmp_path: Path,
    logs: pytest.LogCaptureFixture,
    mode: int,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv("COINSTATS_CACHE_DIR", str(shared))
    write_cache(support_cache._cache_file(BASE_URL), time.time(), PLANTED)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert [e.connection_id for e in exchanges] == ["binance", "okx", "kraken"]
    assert support_calls(rsps) == 1
    # Nothing was written there either: the planted list is untouched.
    assert json.loads(support_cache._cache_file(BASE_URL).read_text())["exchanges"] == PLANTED
    assert "group- or world-writable" in logs.text


def test_cache_dir_of_another_user_is_skipped(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    write_cache(support_cache._cache_file(BASE_URL), time.time(), PLANTED)
    real_uid = os.getuid()
    monkeypatch.setattr(support_cache.os, "getuid", lambda: real_uid + 1)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1


def test_symlinked_default_cache_dir_is_skipped(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    monkeypatch.delenv("COINSTATS_CACHE_DIR")
    monkeypatch.setattr(support_cache.tempfile, "tempdir", str(tmp_path))
    attacker = tmp_path / "attacker"
    write_cache(attacker / support_cache._cache_file(BASE_URL).name, time.time(), PLANTED)
    (tmp_path / f"coinstats-provider-{os.getuid()}").symlink_to(attacker)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1
    assert json.loads((attacker / support_cache._cache_file(BASE_URL).name).read_text())["exchanges"] == PLANTED


def test_symlinked_cache_file_is_never_followed(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    planted = tmp_path / "planted.json"
    write_cache(planted, time.time(), PLANTED)
    cache_file = support_cache._cache_file(BASE_URL)
    cache_file.parent.mkdir(mode=0o700, parents=True)
    cache_file.symlink_to(planted)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1
    # The write replaced the link itself; the file it pointed to is untouched.
    assert not cache_file.is_symlink()
    assert json.loads(cache_file.read_text())["exchanges"] == SUPPORT
    assert json.loads(planted.read_text())["exchanges"] == PLANTED


def test_cache_write_never_uses_a_predictable_temp_name(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache_file = support_cache._cache_file(BASE_URL)
    cache_file.parent.mkdir(mode=0o700, parents=True)
    cache_file.with_suffix(f".{os.getpid()}.tmp").symlink_to(victim)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    support_hook(monkeypatch).get_supported_exchanges()

    assert victim.read_text() == "precious"
    assert json.loads(cache_file.read_text())["exchanges"] == SUPPORT


@pytest.mark.parametrize(
    "fetched_at",
    [
        pytest.param(lambda now: now + 10 * 86400, id="future"),
        pytest.param(lambda now: now + 3600, id="hour-ahead"),
        pytest.param(lambda now: float("nan"), id="nan"),
        pytest.param(lambda now: float("inf"), id="inf"),
        pytest.param(lambda now: "NaN", id="str-nan"),
    ],
)
def test_cache_with_impossible_fetched_at_is_refetched(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, fetched_at: Callable[[float], Any]
) -> None:
    write_cache(support_cache._cache_file(BASE_URL), fetched_at(time.time()), PLANTED)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1
    stored = json.loads(support_cache._cache_file(BASE_URL).read_text())
    assert abs(stored["fetched_at"] - time.time()) < 60


def test_cache_within_clock_skew_is_used(monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock) -> None:
    write_cache(support_cache._cache_file(BASE_URL), time.time() + 30, PLANTED)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "evilx"
    assert support_calls(rsps) == 0


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"fetched_at": 1, "exchanges": ' + "[" * 100_000 + "]" * 100_000 + "}", id="deeply-nested"),
        pytest.param("\x00\xff not json", id="garbage"),
        pytest.param('{"fetched_at": {"a": 1}, "exchanges": []}', id="wrong-types"),
    ],
)
def test_broken_cache_never_fails_the_task(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, content: str
) -> None:
    cache_file = support_cache._cache_file(BASE_URL)
    cache_file.parent.mkdir(mode=0o700, parents=True)
    cache_file.write_text(content)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert support_calls(rsps) == 1


def test_cache_write_failure_never_fails_the_task(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(support_cache.tempfile, "mkstemp", broken)
    rsps.get(SUPPORT_URL, json=SUPPORT)

    exchanges = support_hook(monkeypatch).get_supported_exchanges()

    assert exchanges[0].connection_id == "binance"
    assert not support_cache._cache_file(BASE_URL).exists()


def test_cache_dir_that_is_a_file_falls_back_to_network(
    monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("COINSTATS_CACHE_DIR", str(not_a_dir))
    rsps.get(SUPPORT_URL, json=SUPPORT)

    assert support_hook(monkeypatch).get_supported_exchanges()[0].connection_id == "binance"
    assert not_a_dir.read_text() == "x"
