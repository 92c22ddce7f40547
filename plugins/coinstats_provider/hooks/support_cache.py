"""Cache of ``GET /exchange/support``: in-process, and on disk per user (0700, owner-checked, atomic writes).

The list is public and the same for every API key, so it is cached per base URL: a mapped run pays one
credit per worker machine and TTL instead of one per task. Any cache problem falls back to the network.
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
from pathlib import Path
from typing import Any

from coinstats_provider.exceptions import CoinStatsResponseError
from coinstats_provider.models import SupportedExchange

#: How far in the future a cached ``fetched_at`` may lie (clock skew between workers) before it is rejected.
_CACHE_CLOCK_SKEW = 300.0
_CACHE_MAX_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)

# In-process cache of GET /exchange/support, keyed by base URL: (fetched_at, exchanges).
_SUPPORT_CACHE: dict[str, tuple[float, list[SupportedExchange]]] = {}
_SUPPORT_LOCK = threading.Lock()


def supported_exchanges(base_url: str, ttl: float, fetch: Callable[[], Any]) -> list[SupportedExchange]:
    """Return the exchange list of ``base_url`` from memory, disk, or ``fetch()`` (then stored in both).

    :param base_url: API base URL the list belongs to (the cache key).
    :param ttl: Maximum age in seconds of a cached list; 0 disables both caches.
    :param fetch: Sends ``GET /exchange/support`` and returns the decoded body.
    """
    now = time.time()
    with _SUPPORT_LOCK:
        cached = _SUPPORT_CACHE.get(base_url)
        if ttl and cached and now - cached[0] < ttl:
            return list(cached[1])
        if ttl:
            from_disk = _read_support_cache(base_url, ttl, now)
            if from_disk is not None:
                _SUPPORT_CACHE[base_url] = from_disk
                return list(from_disk[1])
        data = fetch()
        exchanges = parse_support(data)
        _SUPPORT_CACHE[base_url] = (now, exchanges)
        if ttl:
            _write_support_cache(base_url, data, now)
        return list(exchanges)


def clear() -> None:
    """Forget every in-process list (the disk copies stay)."""
    with _SUPPORT_LOCK:
        _SUPPORT_CACHE.clear()


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


def _cache_root() -> Path:
    """The exchange-support cache directory: ``COINSTATS_CACHE_DIR``, else a per-user temp directory."""
    configured = os.environ.get("COINSTATS_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"coinstats-provider-{os.getuid()}"


def _cache_file(base_url: str) -> Path:
    """The cache file of one base URL (its directory may not exist or be unusable).

    :param base_url: API base URL the cached list belongs to.
    """
    return _cache_root() / f"exchange-support-{hashlib.sha256(base_url.encode()).hexdigest()[:16]}.json"


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
        log.debug("Exchange-support disk cache skipped: cannot create %s (%s)", root, type(err).__name__)
        return None
    if not stat.S_ISDIR(info.st_mode):
        log.debug("Exchange-support disk cache skipped: %s is not a directory (or is a symlink)", root)
        return None
    if info.st_uid != os.getuid():
        log.debug("Exchange-support disk cache skipped: %s is owned by another user", root)
        return None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.debug("Exchange-support disk cache skipped: %s is group- or world-writable", root)
        return None
    return root


def _read_support_cache(base_url: str, ttl: float, now: float) -> tuple[float, list[SupportedExchange]] | None:
    """Return the cached ``(fetched_at, exchanges)`` if fresh and trustworthy, else ``None``.

    Never follows a symlink, rejects a ``fetched_at`` that is not finite or lies in the future (beyond
    a small clock skew), and never raises: any cache problem falls back to the network.

    :param base_url: API base URL the list belongs to.
    :param ttl: Maximum age in seconds.
    :param now: Current epoch seconds.
    """
    try:
        root = _usable_cache_dir()
        if root is None:
            return None
        path = root / _cache_file(base_url).name
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                log.debug("Exchange-support disk cache ignored: %s is not a regular file of this user", path)
                return None
            raw = handle.read(_CACHE_MAX_BYTES + 1)
        if len(raw) > _CACHE_MAX_BYTES:
            return None
        stored = json.loads(raw)
        fetched_at = float(stored["fetched_at"])
        if not math.isfinite(fetched_at) or fetched_at > now + _CACHE_CLOCK_SKEW:
            log.debug("Exchange-support disk cache ignored: fetched_at is not a past time")
            return None
        if now - fetched_at >= ttl:
            return None
        return fetched_at, parse_support(stored["exchanges"])
    except FileNotFoundError:
        return None
    except Exception as err:
        log.debug("Exchange-support disk cache ignored (%s); fetching from CoinStats", type(err).__name__)
        return None


def _write_support_cache(base_url: str, data: Any, now: float) -> None:
    """Store the list atomically (``mkstemp`` in the vetted directory, then ``os.replace``); never raises.

    :param base_url: API base URL the list belongs to.
    :param data: The decoded ``GET /exchange/support`` body.
    :param now: Epoch seconds it was fetched at.
    """
    tmp: str | None = None
    try:
        root = _usable_cache_dir()
        if root is None:
            return
        path = root / _cache_file(base_url).name
        fd, tmp = tempfile.mkstemp(prefix=".exchange-support-", suffix=".tmp", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"fetched_at": now, "exchanges": data}, handle)
        # rename() replaces a symlink at ``path`` itself, never the file it points to.
        os.replace(tmp, path)
        tmp = None
    except Exception as err:
        log.debug("Exchange-support disk cache not written (%s)", type(err).__name__)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
