"""Deterministic portfolio data for the CoinStats sandbox.

Everything here is a pure function of the portfolio id (plus the sizes chosen by the
server configuration). Holding ``i`` and transaction ``i`` are computed on their own, so a
page costs O(page) time and memory however large the portfolio is.

Transactions added later (the server's edit and shift switches) come from
:func:`new_transaction_at` by serial number and are dated after every generated one;
:func:`transaction_hash` gives any transaction a stable ``hash`` (``{"id", "explorerUrl"}``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

BTC_USD = 65_000.0
ETH_USD = 3_200.0

CURRENCY_RATES: dict[str, float] = {
    "USD": 1.0,
    "EUR": 0.92,
    "GBP": 0.79,
    "JPY": 150.0,
    "CAD": 1.36,
    "AUD": 1.52,
    "CHF": 0.88,
    "BTC": 1.0 / BTC_USD,
    "ETH": 1.0 / ETH_USD,
}

DUPLICATE_BLOCK = 50
"""Every block of this many transactions holds one group of 2-3 identical-looking items."""

_ANCHOR = datetime(2026, 2, 27, 12, 0, tzinfo=UTC)
_SPAN_MS = 3 * 365 * 86_400_000
_ICON_BASE = "https://static.coinstats.app"


@dataclass(frozen=True)
class Coin:
    """A coin of the sandbox market."""

    rank: int
    identifier: str
    symbol: str
    name: str
    price_usd: float


@dataclass(frozen=True)
class Exchange:
    """An exchange listed by ``GET /exchange/support``."""

    connection_id: str
    name: str
    fields: tuple[tuple[str, str], ...]  # (key, display name)

    @property
    def icon(self) -> str:
        """Icon URL in the style of the real API."""
        return f"{_ICON_BASE}/portfolio_images/{self.connection_id}_dark.png"

    @property
    def field_keys(self) -> tuple[str, ...]:
        """Keys expected inside ``connectionFields``."""
        return tuple(key for key, _ in self.fields)

    def to_json(self) -> dict[str, Any]:
        """``PortfolioExchangeListItemResponseDto``."""
        return {
            "connectionId": self.connection_id,
            "name": self.name,
            "icon": self.icon,
            "connectionFields": [{"name": label, "key": key} for key, label in self.fields],
        }


@dataclass(frozen=True)
class PortfolioSpec:
    """What the generators need to know about one portfolio."""

    portfolio_id: str
    coin_count: int
    transaction_count: int
    name: str
    icon: str


_KEY_SECRET = (("apiKey", "API Key"), ("apiSecret", "API Secret"))
_KEY_SECRET_PASS = (*_KEY_SECRET, ("passphrase", "Passphrase"))

EXCHANGES: tuple[Exchange, ...] = (
    Exchange("binance", "Binance", _KEY_SECRET),
    Exchange("coinbase", "Coinbase", _KEY_SECRET),
    Exchange("kraken", "Kraken", _KEY_SECRET),
    Exchange("bybit", "Bybit", _KEY_SECRET),
    Exchange("gemini", "Gemini", _KEY_SECRET),
    Exchange("okx", "OKX", _KEY_SECRET_PASS),
    Exchange("kucoin", "KuCoin", _KEY_SECRET_PASS),
    Exchange("bitget", "Bitget", _KEY_SECRET_PASS),
)
_EXCHANGES_BY_ID = {exchange.connection_id: exchange for exchange in EXCHANGES}

_UNIVERSE_ROWS: tuple[tuple[str, str, str, float], ...] = (
    ("bitcoin", "BTC", "Bitcoin", BTC_USD),
    ("ethereum", "ETH", "Ethereum", ETH_USD),
    ("tether", "USDT", "Tether", 1.0),
    ("binancecoin", "BNB", "BNB", 580.0),
    ("solana", "SOL", "Solana", 145.0),
    ("usd-coin", "USDC", "USDC", 1.0),
    ("ripple", "XRP", "XRP", 0.52),
    ("dogecoin", "DOGE", "Dogecoin", 0.12),
    ("cardano", "ADA", "Cardano", 0.45),
    ("tron", "TRX", "TRON", 0.12),
    ("avalanche-2", "AVAX", "Avalanche", 35.0),
    ("shiba-inu", "SHIB", "Shiba Inu", 0.000018),
    ("polkadot", "DOT", "Polkadot", 6.5),
    ("chainlink", "LINK", "Chainlink", 14.0),
    ("bitcoin-cash", "BCH", "Bitcoin Cash", 420.0),
    ("near", "NEAR", "NEAR Protocol", 5.2),
    ("litecoin", "LTC", "Litecoin", 80.0),
    ("matic-network", "MATIC", "Polygon", 0.7),
    ("uniswap", "UNI", "Uniswap", 7.5),
    ("internet-computer", "ICP", "Internet Computer", 9.0),
    ("ethereum-classic", "ETC", "Ethereum Classic", 24.0),
    ("aptos", "APT", "Aptos", 8.0),
    ("stellar", "XLM", "Stellar", 0.1),
    ("cosmos", "ATOM", "Cosmos Hub", 7.8),
    ("monero", "XMR", "Monero", 160.0),
    ("okb", "OKB", "OKB", 45.0),
    ("filecoin", "FIL", "Filecoin", 5.0),
    ("hedera-hashgraph", "HBAR", "Hedera", 0.08),
    ("arbitrum", "ARB", "Arbitrum", 0.9),
    ("vechain", "VET", "VeChain", 0.03),
    ("maker", "MKR", "Maker", 2_500.0),
    ("optimism", "OP", "Optimism", 2.0),
    ("injective-protocol", "INJ", "Injective", 22.0),
    ("the-graph", "GRT", "The Graph", 0.2),
    ("render-token", "RNDR", "Render", 7.0),
    ("aave", "AAVE", "Aave", 95.0),
    ("algorand", "ALGO", "Algorand", 0.16),
    ("fantom", "FTM", "Fantom", 0.6),
    ("theta-token", "THETA", "Theta Network", 1.8),
    ("the-sandbox", "SAND", "The Sandbox", 0.4),
    ("decentraland", "MANA", "Decentraland", 0.42),
    ("axie-infinity", "AXS", "Axie Infinity", 6.5),
    ("tezos", "XTZ", "Tezos", 0.85),
    ("eos", "EOS", "EOS", 0.7),
    ("kucoin-shares", "KCS", "KuCoin Token", 10.0),
    ("pepe", "PEPE", "Pepe", 0.0000085),
    ("sui", "SUI", "Sui", 1.1),
    ("kaspa", "KAS", "Kaspa", 0.15),
    ("bitget-token", "BGB", "Bitget Token", 1.1),
    ("curve-dao-token", "CRV", "Curve DAO", 0.45),
)
UNIVERSE: tuple[Coin, ...] = tuple(
    Coin(rank, identifier, symbol, name, price)
    for rank, (identifier, symbol, name, price) in enumerate(_UNIVERSE_ROWS, start=1)
)
_TETHER = UNIVERSE[2]
_BNB = UNIVERSE[3]

_TX_TYPES = ("Buy", "Sell", "Received", "Sent", "Swap", "Dust Convert", "Roll In")
_TX_WEIGHTS = (30, 15, 20, 15, 12, 4, 4)


def _rng(*parts: object) -> random.Random:
    """A generator seeded from sha256 of ``parts``; independent of call order."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _r(value: float) -> float:
    """Round to 10 significant digits (keeps tiny BTC prices non-zero)."""
    return float(f"{value:.10g}")


def _triple(usd: float) -> dict[str, float]:
    return {"USD": _r(usd), "BTC": _r(usd / BTC_USD), "ETH": _r(usd / ETH_USD)}


def _same3(value: float) -> dict[str, float]:
    rounded = round(value, 4)
    return {"USD": rounded, "BTC": rounded, "ETH": rounded}


def _pct(part: float, whole: float) -> float:
    return part / whole * 100.0 if whole else 0.0


def find_exchange(connection_id: str) -> Exchange | None:
    """The supported exchange with this ``connectionId``, if any."""
    return _EXCHANGES_BY_ID.get(connection_id)


def exchange_support() -> list[dict[str, Any]]:
    """Body of ``GET /exchange/support``."""
    return [exchange.to_json() for exchange in EXCHANGES]


#: ``GET /wallet/blockchains``: (connectionId, name, chain).
BLOCKCHAINS: tuple[tuple[str, str, str], ...] = (
    ("ethereum", "Ethereum", "ethereum"),
    ("bitcoin", "Bitcoin", "bitcoin"),
    ("solana", "Solana", "solana"),
    ("polygon", "Polygon", "ethereum"),
    ("binance_smart", "BNB Smart Chain", "ethereum"),
    ("base", "Base", "ethereum"),
    ("arbitrum", "Arbitrum", "ethereum"),
)
_BLOCKCHAIN_IDS = frozenset(connection_id for connection_id, _, _ in BLOCKCHAINS)


def find_blockchain(connection_id: str) -> tuple[str, str, str] | None:
    """The supported blockchain with this ``connectionId``, if any."""
    return next((chain for chain in BLOCKCHAINS if chain[0] == connection_id), None)


def blockchains() -> list[dict[str, Any]]:
    """Body of ``GET /wallet/blockchains`` (``connectionId``, ``name``, ``icon``, ``chain`` per entry)."""
    return [
        {"connectionId": cid, "name": name, "icon": f"{_ICON_BASE}/blockchain_images/{cid}.png", "chain": chain}
        for cid, name, chain in BLOCKCHAINS
    ]


def wallet_portfolio_id(api_key: str, connection_id: str, address: str) -> str:
    """Stable portfolio id of a wallet: 24 hex chars of sha256 over the inputs (addresses compare case-blind)."""
    material = f"wallet\x1f{api_key}\x1f{connection_id}\x1f{address.lower()}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def portfolio_id(api_key: str, connection_id: str, exchange_key: str, exchange_secret: str) -> str:
    """Stable portfolio id: first 24 hex chars of sha256 over the concatenated inputs."""
    material = f"{api_key}{connection_id}{exchange_key}{exchange_secret}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def default_coin_count(pid: str) -> int:
    """Number of holdings (3..40) of a portfolio when the server does not fix one."""
    return _rng(pid, "coin-count").randint(3, 40)


@lru_cache(maxsize=64)
def _permutation(pid: str) -> tuple[int, ...]:
    order = list(range(len(UNIVERSE)))
    _rng(pid, "permutation").shuffle(order)
    return tuple(order)


def _coin_for_holding(pid: str, index: int) -> Coin:
    order = _permutation(pid)
    if index < len(order):
        return UNIVERSE[order[index]]
    price = _r(_rng("synthetic", index).uniform(0.01, 50.0))
    return Coin(1_000 + index, f"sandbox-token-{index}", f"SBX{index}", f"Sandbox Token {index}", price)


@lru_cache(maxsize=4096)
def _market(identifier: str) -> tuple[float, float, float, float]:
    """(priceChange1h, priceChange24h, priceChange7d, volume) of a coin."""
    rng = _rng("market", identifier)
    return (
        round(rng.uniform(-2.0, 2.0), 2),
        round(rng.uniform(-8.0, 8.0), 2),
        round(rng.uniform(-20.0, 20.0), 2),
        round(rng.uniform(1e6, 5e10), 2),
    )


def coin_dto(coin: Coin) -> dict[str, Any]:
    """``CoinDto`` for a coin."""
    change_1h, change_24h, change_7d, volume = _market(coin.identifier)
    return {
        "rank": coin.rank,
        "identifier": coin.identifier,
        "symbol": coin.symbol,
        "name": coin.name,
        "icon": f"{_ICON_BASE}/coins/{coin.identifier}.png",
        "isFake": False,
        "isFiat": False,
        "priceChange24h": change_24h,
        "priceChange1h": change_1h,
        "priceChange7d": change_7d,
        "volume": volume,
    }


@dataclass(frozen=True)
class _Holding:
    coin: Coin
    count: float
    avg_buy: float
    avg_sell: float
    realized: float

    @property
    def value(self) -> float:
        return self.count * self.coin.price_usd

    @property
    def cost(self) -> float:
        return self.count * self.avg_buy


def _holding(pid: str, index: int) -> _Holding:
    coin = _coin_for_holding(pid, index)
    rng = _rng(pid, "holding", index)
    worth = rng.uniform(50.0, 20_000.0)
    count = _r(worth / coin.price_usd)
    avg_buy = _r(coin.price_usd * rng.uniform(0.55, 1.35))
    avg_sell = _r(coin.price_usd * rng.uniform(0.7, 1.3)) if rng.random() < 0.6 else 0.0
    realized = count * coin.price_usd * rng.uniform(-0.15, 0.35)
    return _Holding(coin, count, avg_buy, avg_sell, realized)


def _holding_item(holding: _Holding) -> dict[str, Any]:
    coin = holding.coin
    change_24h = _market(coin.identifier)[1]
    value, cost = holding.value, holding.cost
    unrealized = value - cost
    hour24 = value - value / (1.0 + change_24h / 100.0)
    all_time = unrealized + holding.realized
    buy = _triple(holding.avg_buy)
    sell = _triple(holding.avg_sell)
    return {
        "count": holding.count,
        "coin": coin_dto(coin),
        "price": _triple(coin.price_usd),
        "profit": {
            "allTime": _triple(all_time),
            "hour24": _triple(hour24),
            "lastTrade": _triple(unrealized),
            "unrealized": _triple(unrealized),
            "realized": _triple(holding.realized),
        },
        "profitPercent": {
            "allTime": _same3(_pct(all_time, cost)),
            "hour24": _same3(change_24h),
            "lastTrade": _same3(_pct(unrealized, cost)),
            "unrealized": _same3(_pct(unrealized, cost)),
            "realized": _same3(_pct(holding.realized, cost)),
        },
        "averageBuy": {"allTime": buy, "hour24": buy, "lastTrade": buy, "unrealized": buy},
        "averageSell": {"allTime": sell, "hour24": sell, "lastTrade": sell, "unrealized": sell},
    }


def coin_items(spec: PortfolioSpec, page: int, limit: int) -> list[dict[str, Any]]:
    """One page (1-based) of ``PortfolioItemDto`` items."""
    start = (page - 1) * limit
    stop = min(start + limit, spec.coin_count)
    return [_holding_item(_holding(spec.portfolio_id, i)) for i in range(start, stop)]


@lru_cache(maxsize=256)
def _value_totals(pid: str, coin_count: int) -> tuple[float, float, float]:
    value = cost = realized = 0.0
    for index in range(coin_count):
        holding = _holding(pid, index)
        value += holding.value
        cost += holding.cost
        realized += holding.realized
    return value, cost, realized


def portfolio_value(spec: PortfolioSpec, currency: str) -> dict[str, Any]:
    """``PortfolioValueResponseDto``: the sums over all holdings, in ``currency``."""
    rate = CURRENCY_RATES[currency]
    value, cost, realized = _value_totals(spec.portfolio_id, spec.coin_count)
    unrealized = value - cost
    all_time = unrealized + realized
    return {
        "totalValue": _r(value * rate),
        "defiValue": 0,
        "totalCost": _r(cost * rate),
        "unrealizedProfitLoss": _r(unrealized * rate),
        "unrealizedProfitLossPercent": round(_pct(unrealized, cost), 4),
        "realizedProfitLoss": _r(realized * rate),
        "realizedProfitLossPercent": round(_pct(realized, cost), 4),
        "allTimeProfitLoss": _r(all_time * rate),
        "allTimeProfitLossPercent": round(_pct(all_time, cost), 4),
    }


@lru_cache(maxsize=4096)
def _duplicate_group(pid: str, block: int) -> tuple[int, int]:
    """(first offset, size) of the identical-looking group inside a block."""
    rng = _rng(pid, "duplicates", block)
    size = 2 if rng.random() < 0.6 else 3
    return rng.randrange(0, DUPLICATE_BLOCK - size + 1), size


def canonical_index(pid: str, index: int) -> int:
    """Index whose content transaction ``index`` repeats (itself unless it is a duplicate)."""
    block, offset = divmod(index, DUPLICATE_BLOCK)
    first, size = _duplicate_group(pid, block)
    if first <= offset < first + size:
        return block * DUPLICATE_BLOCK + first
    return index


def _iso_ms(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _address(rng: random.Random) -> str:
    return f"0x{rng.getrandbits(160):040x}"


def _transfer_item(coin: Coin, count: float, price_usd: float, rate: float, **extra: str) -> dict[str, Any]:
    return {
        "coin": coin_dto(coin),
        "count": _r(count),
        "totalWorth": _r(abs(count) * price_usd * rate),
        "price": _r(price_usd * rate),
        **extra,
    }


def transaction_at(spec: PortfolioSpec, index: int, currency: str) -> dict[str, Any]:
    """``TransactionItemDto`` number ``index`` (0 = newest) of the portfolio."""
    pid = spec.portfolio_id
    key = canonical_index(pid, index)
    rng = _rng(pid, "transaction", key)
    step = max(1_000, _SPAN_MS // max(spec.transaction_count, 1))
    moment = _ANCHOR - timedelta(milliseconds=key * step + rng.randrange(step))
    return _transaction(spec, rng, moment, currency)


def new_transaction_at(spec: PortfolioSpec, serial: int, currency: str) -> dict[str, Any]:
    """``TransactionItemDto`` of the ``serial``-th transaction added after the portfolio was generated.

    Added transactions are dated after every generated one (``serial`` minutes past the latest
    date a generated transaction can have, plus under a second), so a higher ``serial`` is newer.

    :param spec: The portfolio.
    :param serial: 1 for the first added transaction, 2 for the next, ...
    :param currency: Currency of the worth and price fields.
    """
    rng = _rng(spec.portfolio_id, "added-transaction", serial)
    moment = _ANCHOR + timedelta(minutes=serial, milliseconds=rng.randrange(1_000))
    return _transaction(spec, rng, moment, currency)


def transaction_hash(pid: str, identity: str) -> dict[str, str]:
    """``TransactionHash`` (``{"id", "explorerUrl"}``) of one transaction.

    :param pid: The portfolio id.
    :param identity: What tells the transaction apart inside the portfolio (stable across edits).
    """
    tx_id = "0x" + hashlib.sha256(f"{pid}\x1ftx-hash\x1f{identity}".encode()).hexdigest()
    return {"id": tx_id, "explorerUrl": f"https://etherscan.io/tx/{tx_id}"}


def _transaction(spec: PortfolioSpec, rng: random.Random, moment: datetime, currency: str) -> dict[str, Any]:
    pid = spec.portfolio_id
    rate = CURRENCY_RATES[currency]
    if spec.coin_count > 0:
        coin = _coin_for_holding(pid, rng.randrange(spec.coin_count))
        other = _coin_for_holding(pid, rng.randrange(spec.coin_count))
    else:
        coin, other = rng.choice(UNIVERSE), _TETHER
    if other == coin:
        other = _TETHER if coin != _TETHER else UNIVERSE[1]
    tx_type = rng.choices(_TX_TYPES, weights=_TX_WEIGHTS)[0]
    then_price = coin.price_usd * rng.uniform(0.4, 1.6)
    worth = rng.uniform(10.0, 5_000.0) if tx_type != "Dust Convert" else rng.uniform(0.1, 5.0)
    amount = _r(worth / then_price)
    outgoing = tx_type in ("Sell", "Sent")
    count = -amount if outgoing else amount
    fee_worth = worth * 0.001
    counterparty = _address(rng)

    transfers: list[dict[str, Any]]
    if tx_type == "Buy":
        transfers = [
            {"transferType": "Received", "items": [_transfer_item(coin, amount, then_price, rate)]},
            {"transferType": "Sent", "items": [_transfer_item(_TETHER, -worth, 1.0, rate)]},
        ]
    elif tx_type == "Sell":
        transfers = [
            {"transferType": "Sent", "items": [_transfer_item(coin, -amount, then_price, rate)]},
            {"transferType": "Received", "items": [_transfer_item(_TETHER, worth, 1.0, rate)]},
        ]
    elif tx_type == "Sent":
        item = _transfer_item(coin, -amount, then_price, rate, toAddress=counterparty)
        transfers = [{"transferType": "Sent", "items": [item]}]
    elif tx_type == "Swap":
        other_price = other.price_usd * rng.uniform(0.6, 1.4)
        given = _transfer_item(other, -worth / other_price, other_price, rate)
        transfers = [
            {"transferType": "Sent", "items": [given]},
            {"transferType": "Received", "items": [_transfer_item(coin, amount, then_price, rate)]},
        ]
    elif tx_type == "Dust Convert":
        bnb_price = _BNB.price_usd
        transfers = [
            {"transferType": "Sent", "items": [_transfer_item(coin, -amount, then_price, rate)]},
            {"transferType": "Received", "items": [_transfer_item(_BNB, worth / bnb_price, bnb_price, rate)]},
        ]
    else:  # Received, Roll In
        item = _transfer_item(coin, amount, then_price, rate, fromAddress=counterparty)
        transfers = [{"transferType": "Received", "items": [item]}]

    total_worth = amount * then_price * rate
    current_value = amount * coin.price_usd * rate
    profit = total_worth - current_value if outgoing else current_value - total_worth
    return {
        "transactionType": tx_type,
        "date": _iso_ms(moment),
        "coinData": {
            "identifier": coin.identifier,
            "count": count,
            "symbol": coin.symbol,
            "totalWorth": _r(total_worth),
            "currentValue": _r(current_value),
        },
        "profitLoss": {
            "profit": _r(profit),
            "profitPercent": round(_pct(profit, total_worth), 4),
            "currentValue": _r(current_value),
        },
        "fee": {
            "coin": coin_dto(_TETHER),
            "count": _r(fee_worth),
            "totalWorth": _r(fee_worth * rate),
            "price": _r(rate),
        },
        "transfers": transfers,
        "portfolioInfo": {"name": spec.name, "icon": spec.icon},
    }


def transaction_items(spec: PortfolioSpec, page: int, limit: int, currency: str) -> list[dict[str, Any]]:
    """One page (1-based) of ``TransactionItemDto`` items, newest first."""
    start = (page - 1) * limit
    stop = min(start + limit, spec.transaction_count)
    return [transaction_at(spec, i, currency) for i in range(start, stop)]
