"""Leak check for canary secrets: any 8 consecutive characters of a canary count as a leak.

A whole-value match misses a partial leak (a message cut at 40 characters still shows most of a key), so
the check looks for every fragment of :data:`FRAGMENT` characters. Canaries must therefore be made of
characters no legitimate text contains in a row (see ``CANARIES`` in tests/conftest.py and
:func:`new_canary`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

#: Length of the shortest canary fragment that counts as a leak.
FRAGMENT = 8
#: Letters that are not hex digits, so a canary fragment cannot turn up in an id, a hash or a UUID.
_ALPHABET = "ghjkmnpqrstuvwxyzGHJKLMNPQRSTUVWXYZ"


def new_canary(label: str) -> str:
    """Return a fresh canary: ``CNRY-<label>-`` and 14 random non-hex letters.

    :param label: Short tag naming the secret (no dictionary word of 8 letters or more, e.g. ``APIK``).
    """
    return f"CNRY-{label}-" + "".join(secrets.choice(_ALPHABET) for _ in range(14))


def fragments(secret: str) -> set[str]:
    """Return every run of :data:`FRAGMENT` consecutive characters of ``secret`` (the whole if shorter).

    :param secret: A canary value.
    """
    if len(secret) <= FRAGMENT:
        return {secret}
    return {secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1)}


def leaks(canaries: Mapping[str, str], *texts: object) -> list[str]:
    """Describe every canary fragment found in ``texts`` (empty when nothing leaked).

    :param canaries: Canary values by name.
    :param texts: Strings, or objects checked through their ``repr``.
    """
    found: list[str] = []
    for index, text in enumerate(texts):
        rendered = text if isinstance(text, str) else repr(text)
        for name, value in canaries.items():
            hit = next((part for part in sorted(fragments(value)) if part in rendered), None)
            if hit is not None:
                at = rendered.index(hit)
                found.append(f"canary {name} (fragment {hit!r}) in text #{index}: ...{rendered[max(0, at - 40) : at]}")
    return found


def assert_no_fragment(canaries: Mapping[str, str], *texts: object, where: str = "") -> None:
    """Fail, naming the secret, the fragment and ``where``, if any canary fragment is in ``texts``.

    :param canaries: Canary values by name.
    :param texts: Strings, or objects checked through their ``repr``.
    :param where: Where the texts come from, for the failure message.
    """
    found = leaks(canaries, *texts)
    assert not found, f"secret leaked{f' into {where}' if where else ''}: " + "; ".join(found)
