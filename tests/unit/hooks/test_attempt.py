"""Body decoding of one attempt (``hooks/attempt.py``): what a 2xx body becomes, and the words for a bad one."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coinstats_provider.hooks.attempt import Answer, NonStandardConstantError, decode_body, decode_json


def test_json_numbers_are_floats_unless_exact_numbers_are_asked_for() -> None:
    assert decode_json(b'{"v": 1.10}') == {"v": 1.1}
    assert type(decode_json(b'{"v": 1.10}')["v"]) is float
    assert decode_json(b'{"v": 1.10}', exact_numbers=True) == {"v": Decimal("1.10")}
    with pytest.raises(NonStandardConstantError):
        decode_json(b'{"v": NaN}', exact_numbers=True)


def test_an_unreadable_body_is_named_for_the_message_and_for_the_log() -> None:
    assert decode_body(Answer(status=200, content=b'{"cut": '), exact_numbers=False) == (
        None,
        ("malformed or truncated JSON", "unreadable JSON body"),
    )
    assert decode_body(Answer(status=200, content=b""), exact_numbers=False) == (
        None,
        ("malformed or truncated JSON", "unreadable JSON body"),
    )
    assert decode_body(Answer(status=200, content=b"[1]"), exact_numbers=False) == ([1], None)
