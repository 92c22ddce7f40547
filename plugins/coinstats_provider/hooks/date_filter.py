"""The ``from`` filter of ``GET /portfolio/transactions``: how it is sent and how each page proves it was applied.

CoinStats accepts ``from`` on this route without documenting it (CONTRACT §4.3: listed in the docs' prose,
not declared as a parameter). Its sibling ``GET /exchange/transactions`` declares ``from`` as an ISO 8601
date-time (example ``2026-02-26T11:05:33.635Z``), and a production client sends ISO 8601 to this route too;
so the filter is sent in that form: UTC, milliseconds, ``Z`` -- the form CoinStats' own ``date`` fields use.

Nothing says whether CoinStats applies it, nor whether its bound is inclusive. So the answer has to prove
it: :func:`filtered_pages` passes pages through and raises
:class:`~coinstats_provider.exceptions.CoinStatsFilterIgnoredError` as soon as an item is dated before
``from`` (or has no readable date), which is what a server that ignores the filter sends as soon as the
list reaches back that far -- on the first page when fewer than a page of transactions are newer. The
caller then reads the whole list. An inclusive or exclusive bound makes no difference to the caller, whose
window overlaps what it already stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from coinstats_provider.exceptions import CoinStatsConfigError, CoinStatsFilterIgnoredError
from coinstats_provider.hooks.paging import item_date

__all__ = ["filtered_pages", "from_param"]


def from_param(since: datetime) -> str:
    """``since`` as the ``from`` query value: ISO 8601 in UTC with milliseconds and ``Z``.

    :param since: A timezone-aware moment.
    :raises CoinStatsConfigError: ``since`` has no timezone (its meaning would depend on the machine).
    """
    if since.tzinfo is None or since.utcoffset() is None:
        raise CoinStatsConfigError("since must be a timezone-aware datetime (e.g. datetime.now(UTC)), got a naive one.")
    moment = since.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def filtered_pages(
    pages: Iterator[list[dict[str, Any]]], since: datetime, *, path: str, field: str = "date"
) -> Iterator[list[dict[str, Any]]]:
    """Yield ``pages`` unchanged; raise as soon as one proves the ``from`` filter was not applied.

    :param pages: The pages of a read sent with ``from=from_param(since)``.
    :param since: The moment sent as ``from``.
    :param path: The API path, for the message.
    :param field: The item field holding its date.
    :raises CoinStatsFilterIgnoredError: An item is dated before ``since`` or has no readable date.
    """
    bound = since.astimezone(UTC).replace(microsecond=since.microsecond // 1000 * 1000)
    sent = from_param(since)
    for number, page in enumerate(pages, start=1):
        for item in page:
            moment = item_date(item, field)
            if moment is None or moment < bound:
                seen = "an item without a readable date" if moment is None else f"an item dated {from_param(moment)}"
                raise CoinStatsFilterIgnoredError(
                    f"CoinStats {path} answered {seen} on page {number} of a read with from={sent}: the date "
                    "filter was not applied, so this read cannot stand for the transactions since then."
                )
        yield page
