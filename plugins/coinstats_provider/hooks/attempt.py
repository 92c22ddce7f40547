"""One attempt of a CoinStats API call, as data: its plan, its answer, the verdict, and body decoding.

Shared by the sync and async paths of :class:`~coinstats_provider.hooks.coinstats_base.CoinStatsBaseHook`.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    """One API call as planned: what it costs and how its answer is judged."""

    method: str
    path: str
    cost: int
    secrets: tuple[str, ...] = field(repr=False)
    need_body: bool
    resend_after_2xx: bool
    exact_numbers: bool


@dataclass(frozen=True)
class Answer:
    """What one attempt got back: a status line and body, or the transport error that stopped it."""

    status: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    read_error: str | None = None
    failure: Exception | None = None


@dataclass(frozen=True)
class Verdict:
    """The decision after one attempt: the decoded body when ``done``, else the wait before the next."""

    done: bool
    data: Any = None
    delay: float = 0.0


class NonStandardConstantError(ValueError):
    """A JSON body used ``NaN``, ``Infinity`` or ``-Infinity``, which standard JSON does not allow."""

    def __init__(self, constant: str) -> None:
        super().__init__(f"non-standard JSON constant {constant}")
        self.constant = constant


def _reject_constant(constant: str) -> Any:
    raise NonStandardConstantError(constant)


def decode_json(content: bytes, *, exact_numbers: bool = False) -> Any:
    """Decode a JSON body; with ``exact_numbers`` floats become :class:`decimal.Decimal` and NaN/Infinity fail.

    :param content: The body.
    :param exact_numbers: Keep every digit of amounts (``1e400`` stays a finite Decimal).
    """
    if exact_numbers:
        return json.loads(content, parse_float=decimal.Decimal, parse_constant=_reject_constant)
    return json.loads(content)


def decode_body(answer: Answer, *, exact_numbers: bool) -> tuple[Any, tuple[str, str] | None]:
    """Decode a 2xx body into ``(json, None)``, or ``(None, (problem, cause))`` when it is unreadable.

    ``problem`` completes a sentence of an error message; ``cause`` is short, for log lines.

    :param answer: The 2xx answer; ``read_error`` set when its body was cut off on the wire.
    :param exact_numbers: As in :func:`decode_json`.
    """
    if answer.read_error is not None:
        return None, (f"a body cut off on the wire ({answer.read_error})", f"body cut off: {answer.read_error}")
    try:
        return decode_json(answer.content or b"", exact_numbers=exact_numbers), None
    except NonStandardConstantError as err:
        return None, (f"the non-standard JSON constant {err.constant}", "non-standard JSON")
    except (ValueError, RecursionError):
        return None, ("malformed or truncated JSON", "unreadable JSON body")
