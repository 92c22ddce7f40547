"""Deterministic chart, DeFi and snapshot data of the sandbox (the opt-in datasets).

Pure functions of the portfolio (:class:`~include.coinstats_sandbox.data.PortfolioSpec`) and the request,
like :mod:`include.coinstats_sandbox.data`: the same portfolio always answers the same points, positions
and snapshots, so a rerun loads the same rows.

* ``GET /portfolio/chart``: ``[ts, USD, BTC, ETH]`` points ending at the sandbox's fixed anchor time. The
  ``24h``, ``1w``, ``1m``, ``3m`` and ``6m`` charts give ``ts`` in **milliseconds** (as CoinStats' own
  examples), ``1y`` and ``all`` in **seconds** (as its prose says), so a load sees both units.
* ``GET /portfolio/defi``: 1-3 protocols of 1-2 investments of 1-2 assets each; an empty portfolio has
  none. The sandbox does not model the rule that only wallet portfolios have DeFi positions.
* ``GET /portfolio/snapshot/items``: one snapshot per day from ``from`` to ``to`` (both included), at
  00:00 UTC, chronological, with the balances of the portfolio's first holdings.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from .data import (
    BTC_USD,
    ETH_USD,
    UNIVERSE,
    PortfolioSpec,
    _coin_for_holding,
    _holding,
    _r,
    _rng,
    _triple,
    _value_totals,
)

__all__ = ["CHART_STEPS", "chart_points", "defi_positions", "snapshot_items"]

#: Chart type -> (number of points, seconds between points, timestamps in milliseconds).
CHART_STEPS: dict[str, tuple[int, int, bool]] = {
    "24h": (24, 3_600, True),
    "1w": (42, 4 * 3_600, True),
    "1m": (30, 86_400, True),
    "3m": (90, 86_400, True),
    "6m": (26, 7 * 86_400, True),
    "1y": (52, 7 * 86_400, False),
    "all": (36, 30 * 86_400, False),
}
_ANCHOR = datetime(2026, 2, 27, 12, 0, tzinfo=UTC)
_PROTOCOLS = (
    ("uniswap-v3", "Uniswap V3", "ethereum", "Ethereum", "Liquidity"),
    ("aave-v3", "Aave V3", "ethereum", "Ethereum", "Lending"),
    ("lido", "Lido", "ethereum", "Ethereum", "Staked"),
    ("raydium", "Raydium", "solana", "Solana", "Liquidity"),
)
_SNAPSHOT_COINS = 5


def _total_usd(spec: PortfolioSpec) -> float:
    return _value_totals(spec.portfolio_id, spec.coin_count)[0]


def chart_points(spec: PortfolioSpec, chart_type: str) -> list[list[float]]:
    """``GET /portfolio/chart`` points of one chart type, oldest first.

    :param spec: The portfolio.
    :param chart_type: A key of :data:`CHART_STEPS`.
    """
    count, step, millis = CHART_STEPS[chart_type]
    total = _total_usd(spec)
    rng = _rng(spec.portfolio_id, "chart", chart_type)
    points: list[list[float]] = []
    level = 1.0
    for index in range(count):
        moment = _ANCHOR - timedelta(seconds=step * (count - 1 - index))
        epoch = int(moment.timestamp())
        usd = total * level
        points.append([epoch * 1000 if millis else epoch, _r(usd), _r(usd / BTC_USD), _r(usd / ETH_USD)])
        level = max(0.05, level * (1 + rng.uniform(-0.04, 0.04)))
    return points


def defi_positions(spec: PortfolioSpec) -> dict[str, Any]:
    """``GET /portfolio/defi`` body (``DefiResponseDto``) of a portfolio.

    :param spec: The portfolio.
    """
    if spec.coin_count == 0:
        return {"totalAssets": _triple(0.0), "protocols": []}
    pid = spec.portfolio_id
    rng = _rng(pid, "defi")
    address = "0x" + _rng(pid, "defi-address").randbytes(20).hex()
    chosen = rng.sample(range(len(_PROTOCOLS)), rng.randint(1, 3))
    protocols: list[dict[str, Any]] = []
    grand_total = 0.0
    for p_index, which in enumerate(chosen):
        protocol_id, name, chain, chain_name, kind = _PROTOCOLS[which]
        investments: list[dict[str, Any]] = []
        protocol_total = 0.0
        for i_index in range(rng.randint(1, 2)):
            assets: list[dict[str, Any]] = []
            investment_total = 0.0
            for a_index in range(rng.randint(1, 2)):
                coin = UNIVERSE[_rng(pid, "defi-coin", p_index, i_index, a_index).randrange(len(UNIVERSE))]
                amount = _r(rng.uniform(10.0, 5_000.0) / coin.price_usd)
                investment_total += amount * coin.price_usd
                assets.append(
                    {
                        "address": "0x" + _rng(pid, "asset", coin.identifier).randbytes(20).hex(),
                        "title": "Supplied" if kind == "Lending" else "Deposit",
                        "coinId": coin.identifier,
                        "amount": amount,
                        "symbol": coin.symbol,
                        "price": _triple(coin.price_usd),
                    }
                )
            investments.append(
                {
                    "id": kind.lower(),
                    "name": kind,
                    "value": _triple(investment_total),
                    "symbols": " + ".join(asset["symbol"] for asset in assets),
                    "assets": assets,
                    **({"healthRate": round(rng.uniform(1.1, 3.0), 4)} if kind == "Lending" else {}),
                }
            )
            protocol_total += investment_total
        grand_total += protocol_total
        protocols.append(
            {
                "id": protocol_id,
                "name": name,
                "logo": f"https://static.coinstats.app/defi/{protocol_id}.png",
                "totalValue": _triple(protocol_total),
                "blockchain": {"name": chain_name, "icon": f"https://static.coinstats.app/chains/{chain}.png"},
                "chain": chain,
                "investments": investments,
                "walletAddress": address,
            }
        )
    return {"totalAssets": _triple(grand_total), "protocols": protocols}


def _snapshot(spec: PortfolioSpec, day: date) -> dict[str, Any]:
    pid = spec.portfolio_id
    held = min(spec.coin_count, _SNAPSHOT_COINS)
    balances: list[dict[str, Any]] = []
    total = 0.0
    previous_total = 0.0
    for index in range(held):
        holding = _holding(pid, index)
        coin = _coin_for_holding(pid, index)
        drift = _rng(pid, "snapshot", day.isoformat(), index)
        quantity = _r(holding.count * drift.uniform(0.9, 1.1))
        price = _r(coin.price_usd * drift.uniform(0.95, 1.05))
        change = _r(quantity * drift.uniform(-0.02, 0.02))
        balance = _r(quantity * price)
        previous = _r((quantity - change) * price)
        total += balance
        previous_total += previous
        balances.append(
            {
                "symbol": coin.symbol,
                "icon": f"https://static.coinstats.app/coins/{coin.identifier}.png",
                "quantity": quantity,
                "balance": balance,
                "quantityChange": change,
                "balanceChange": _r(balance - previous),
                "pricePerUnit": price,
                "pricePercentChange": round(drift.uniform(-5.0, 5.0), 4),
            }
        )
    change_total = total - previous_total
    return {
        "date": datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "coinBalances": balances,
        "totalBalance": _r(total),
        "totalBalanceChange": _r(change_total),
        "totalBalancePercentChange": round(change_total / previous_total * 100.0, 4) if previous_total else 0,
    }


def snapshot_items(spec: PortfolioSpec, first: date, last: date, page: int, limit: int) -> list[dict[str, Any]]:
    """One page (1-based) of ``GET /portfolio/snapshot/items``: a snapshot per day, oldest first.

    :param spec: The portfolio.
    :param first: ``from`` (included).
    :param last: ``to`` (included).
    :param page: The page.
    :param limit: Items per page.
    """
    days = (last - first).days + 1
    start = (page - 1) * limit
    return [_snapshot(spec, first + timedelta(days=offset)) for offset in range(start, min(start + limit, days))]
