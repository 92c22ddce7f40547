"""Fixtures of the CoinStats hook unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Mock every HTTP call made through ``requests``; an unregistered URL fails as a ConnectionError."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
