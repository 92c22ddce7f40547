"""Cache of the public lists ``GET /exchange/support`` and ``GET /wallet/blockchains``.

In-process, and on disk per user (0700, owner-checked, atomic writes). Each list is public and the same
for every API key, so it is cached per base URL: a mapped run pays one credit per worker machine and TTL
instead of one per task. Any cache problem falls back to the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from coinstats_provider.exceptions import CoinStatsResponseError
from coinstats_provider.models import SupportedBlockchain, SupportedExchange

#: How far in the future a cached ``fetched_at`` may lie (clock skew between workers) before it is rejected.
_CACHE_CLOCK_SKEW = 300.0
_CACHE_MAX_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class CachedList(Generic[T]):
    """One cached public list.

    :param name: File name prefix of its disk copies, e.g. ``exchange-support``.
    :param route: The request, for messages, e.g. ``GET /exchange/support``.
    :param key: Key of the body in the disk copy, e.g. ``exchanges``.
    :param parse: Validates a decoded body into the list.
    """

    name: str
    route: str
    key: str
    parse: Callable[[Any], list[T]]


# In-process caches, per list name and base URL: (fetched_at, items).
_CACHES: dict[str, dict[str, tuple[float, list[Any]]]] = {}
_SUPPORT_LOCK = threading.Lock()


def cached(kind: CachedList[T], base_url: str, ttl: float, fetch: Callable[[], Any]) -> list[T]:
    """Return the list ``kind`` of ``base_url`` from memory, disk, or ``fetch()`` (then stored in both).

    :param kind: Which list.
    :param base_url: API base URL the list belongs to (the cache key).
    :param ttl: Maximum age in seconds of a cached list; 0 disables both caches.
    :param fetch: Sends the request and returns the decoded body.
    """
    now = time.time()
    memory = _CACHES.setdefault(kind.name, {})
    with _SUPPORT_LOCK:
        hit = memory.get(base_url)
        if ttl and hit and now - hit[0] < ttl:
            return list(hit[1])
        if ttl:
            from_disk = _read_cache(kind, base_url, ttl, now)
            if from_disk is not None:
                memory[base_url] = from_disk
                return list(from_disk[1])
        data = fetch()
        items = kind.parse(data)
        memory[base_url] = (now, items)
        if ttl:
            _write_cache(kind, base_url, data, now)
        return list(items)


def clear() -> None:
    """Forget every in-process list (the disk copies stay)."""
    with _SUPPORT_LOCK:
        for memory in _CACHES.values():
            memory.clear()


def parse_support(data: Any) -> list[SupportedExchange]:
    """Validate a ``GET /exchange/support`` body into exchanges (entries without a ``connectionId`` skipped).

    :param data: Decoded JSON body.
    """
    if not isinstance(data, list):
        raise CoinStatsResponseError("CoinStats GET /exchange/support answered with a non-list body.")
    exchanges = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("connectionId"), str):
            continue
        fields = [f for f in entry.get("connectionFields") or [] if isinstance(f, dict) and f.get("key")]
        exchanges.append(
            SupportedExchange(
                connection_id=entry["connectionId"],
                name=str(entry.get("name") or entry["connectionId"]),
                field_keys=tuple(str(f["key"]) for f in fields),
                field_labels=tuple(str(f.get("name") or f["key"]) for f in fields),
            )
        )
    if not exchanges:
        raise CoinStatsResponseError("CoinStats GET /exchange/support answered an empty exchange list.")
    return exchanges


def parse_blockchains(data: Any) -> list[SupportedBlockchain]:
    """Validate a ``GET /wallet/blockchains`` body (entries without a ``connectionId`` skipped).

    The published schema names only ``name`` and ``icon``; clients of the live API read ``connectionId``
    (the id ``POST /portfolio/wallet`` takes), ``name`` and ``chain`` per entry (INFERRED, CONTRACT §4.2).

    :param data: Decoded JSON body.
    """
    if not isinstance(data, list):
        raise CoinStatsResponseError("CoinStats GET /wallet/blockchains answered with a non-list body.")
    chains = [
        SupportedBlockchain(
            connection_id=entry["connectionId"],
            name=str(entry.get("name") or entry["connectionId"])[:80],
            chain=str(entry["chain"])[:80] if isinstance(entry.get("chain"), str) else None,
        )
        for entry in data
        if isinstance(entry, dict) and isinstance(entry.get("connectionId"), str) and entry["connectionId"]
    ]
    if not chains:
        raise CoinStatsResponseError("CoinStats GET /wallet/blockchains answered an empty blockchain list.")
    return chains


#: ``GET /exchange/support``.
EXCHANGES: CachedList[SupportedExchange] = CachedList(
    "exchange-support", "GET /exchange/support", "exchanges", parse_support
)
#: ``GET /wallet/blockchains``.
BLOCKCHAINS: CachedList[SupportedBlockchain] = CachedList(
    "wallet-blockchains", "GET /wallet/blockchains", "blockchains", parse_blockchains
)
# The in-process exchange list, by base URL (kept under its old name).
_SUPPORT_CACHE = _CACHES.setdefault(EXCHANGES.name, {})


def supported_exchanges(base_url: str, ttl: float, fetch: Callable[[], Any]) -> list[SupportedExchange]:
    """Return the exchange list of ``base_url`` (see :func:`cached`).

    :param base_url: API base URL the list belongs to (the cache key).
    :param ttl: Maximum age in seconds of a cached list; 0 disables both caches.
    :param fetch: Sends ``GET /exchange/support`` and returns the decoded body.
    """
    return cached(EXCHANGES, base_url, ttl, fetch)


def supported_blockchains(base_url: str, ttl: float, fetch: Callable[[], Any]) -> list[SupportedBlockchain]:
    """Return the blockchain list of ``base_url`` (see :func:`cached`).

    :param base_url: API base URL the list belongs to (the cache key).
    :param ttl: Maximum age in seconds of a cached list; 0 disables both caches.
    :param fetch: Sends ``GET /wallet/blockchains`` and returns the decoded body.
    """
    return cached(BLOCKCHAINS, base_url, ttl, fetch)


def _cache_root() -> Path:
    """The list cache directory: ``COINSTATS_CACHE_DIR``, else a per-user temp directory."""
    configured = os.environ.get("COINSTATS_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"coinstats-provider-{os.getuid()}"


def _cache_file(base_url: str, name: str = EXCHANGES.name) -> Path:
    """The cache file of one list and base URL (its directory may not exist or be unusable).

    :param base_url: API base URL the cached list belongs to.
    :param name: The list's name (:attr:`CachedList.name`).
    """
    return _cache_root() / f"{name}-{hashlib.sha256(base_url.encode()).hexdigest()[:16]}.json"


def _usable_cache_dir() -> Path | None:
    """Create (0700) and vet the cache directory; ``None`` (disk cache skipped) when it is not safe.

    Safe means: a real directory (not a symlink), owned by the current user, not group- or
    world-writable, so nobody else can plant or swap the cached list.
    """
    root = _cache_root()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(root)
    except OSError as err:
        log.debug("List disk cache skipped: cannot create %s (%s)", root, type(err).__name__)
        return None
    if not stat.S_ISDIR(info.st_mode):
        log.debug("List disk cache skipped: %s is not a directory (or is a symlink)", root)
        return None
    if info.st_uid != os.getuid():
        log.debug("List disk cache skipped: %s is owned by another user", root)
        return None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.debug("List disk cache skipped: %s is group- or world-writable", root)
        return None
    return root


def _read_cache(kind: CachedList[T], base_url: str, ttl: float, now: float) -> tuple[float, list[T]] | None:
    """Return the cached ``(fetched_at, items)`` if fresh and trustworthy, else ``None``.

    Never follows a symlink, rejects a ``fetched_at`` that is not finite or lies in the future (beyond
    a small clock skew), and never raises: any cache problem falls back to the network.

    :param kind: Which list.
    :param base_url: API base URL the list belongs to.
    :param ttl: Maximum age in seconds.
    :param now: Current epoch seconds.
    """
    try:
        root = _usable_cache_dir()
        if root is None:
            return None
        path = root / _cache_file(base_url, kind.name).name
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                log.debug("List disk cache ignored: %s is not a regular file of this user", path)
                return None
            raw = handle.read(_CACHE_MAX_BYTES + 1)
        if len(raw) > _CACHE_MAX_BYTES:
            return None
        stored = json.loads(raw)
        fetched_at = float(stored["fetched_at"])
        if not math.isfinite(fetched_at) or fetched_at > now + _CACHE_CLOCK_SKEW:
            log.debug("List disk cache ignored: fetched_at is not a past time")
            return None
        if now - fetched_at >= ttl:
            return None
        return fetched_at, kind.parse(stored[kind.key])
    except FileNotFoundError:
        return None
    except Exception as err:
        log.debug("List disk cache ignored (%s); fetching %s", type(err).__name__, kind.route)
        return None


def _write_cache(kind: CachedList[T], base_url: str, data: Any, now: float) -> None:
    """Store the list atomically (``mkstemp`` in the vetted directory, then ``os.replace``); never raises.

    :param kind: Which list.
    :param base_url: API base URL the list belongs to.
    :param data: The decoded body.
    :param now: Epoch seconds it was fetched at.
    """
    tmp: str | None = None
    try:
        root = _usable_cache_dir()
        if root is None:
            return
        path = root / _cache_file(base_url, kind.name).name
        fd, tmp = tempfile.mkstemp(prefix=f".{kind.name}-", suffix=".tmp", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"fetched_at": now, kind.key: data}, handle)
        # rename() replaces a symlink at ``path`` itself, never the file it points to.
        os.replace(tmp, path)
        tmp = None
    except Exception as err:
        log.debug("List disk cache not written (%s)", type(err).__name__)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
