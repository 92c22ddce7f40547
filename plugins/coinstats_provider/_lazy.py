"""Lazy re-exports for the subpackages' ``__init__`` (PEP 562), so a DAG file pays only for what it uses."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` that imports each exported name from its module on first use.

    ``from coinstats_provider.operators import SyncPortfolioOperator`` then imports only the sync operator's
    module, not its siblings (and not what they import), which keeps DAG parsing fast.

    :param package: The package's ``__name__``, for error messages.
    :param exports: Exported name -> module that defines it.
    """

    def __getattr__(name: str) -> Any:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module), name)

    return __getattr__
