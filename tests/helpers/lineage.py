"""Read OpenLineage events written by the file transport, and check them for secrets."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.conftest import CANARIES

FRAGMENT = 8


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event in a file-transport log (one JSON document per line; ``append`` mode).

    :param path: The transport's ``log_file_path``.
    """
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def secret_fragments(secrets: Iterable[str], size: int = FRAGMENT) -> set[str]:
    """Every ``size``-character piece of every secret (a leak of any of them counts).

    :param secrets: The secrets.
    :param size: Fragment length.
    """
    return {secret[i : i + size] for secret in secrets for i in range(len(secret) - size + 1)}


def assert_no_canary_fragment(text: str, secrets: Mapping[str, str] = CANARIES) -> None:
    """Fail when any 8-character fragment of any secret occurs in ``text``.

    :param text: What to search (e.g. a whole events file).
    :param secrets: Name -> secret.
    """
    for name, secret in secrets.items():
        for fragment in secret_fragments([secret]):
            assert fragment not in text, f"a fragment of canary {name} leaked: {fragment!r}"


def completed_datasets(events: list[dict[str, Any]], kind: str) -> dict[str, list[dict[str, Any]]]:
    """Per job name, the ``inputs`` or ``outputs`` of its COMPLETE events.

    :param events: Events from :func:`read_events`.
    :param kind: ``inputs`` or ``outputs``.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("eventType") == "COMPLETE":
            found.setdefault(event["job"]["name"], []).extend(event.get(kind) or [])
    return found
