"""Value rules shared by the row transforms, the transaction keys and the loader.

**Numbers** are exact: every money, amount, price and percent value becomes a :class:`~decimal.Decimal`
(or ``None``), built from the API value without passing through ``float``. The extraction decodes
JSON with ``parse_float=Decimal``, so ``0.123456789012345678`` keeps all 18 decimals; ``int`` values
and numeric strings (``"500.25"``) are accepted too, and a plain ``float`` is taken at its shortest
repr. A value that is not a finite number (``"NaN"``, ``"Infinity"``, ``Decimal("NaN")``, a float
``inf`` such as ``1e400`` decoded as float, ``"lots"``), a boolean where a number is expected, or a
number beyond :data:`MAX_DIGITS` integer or fractional digits is rejected.

**Text** is sanitised instead of rejected: NUL characters are removed and lone UTF-16 surrogates
(which no database can store as UTF-8) become U+FFFD.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation, localcontext
from json.encoder import encode_basestring_ascii
from typing import Any

__all__ = [
    "MAX_DIGITS",
    "FieldError",
    "InvalidItemError",
    "canonical_json",
    "clean_text",
    "decimal_text",
    "exact_number",
    "get_path",
    "product",
]

#: Largest accepted number of integer digits and of fractional digits (PostgreSQL NUMERIC holds
#: far more; this only stops absurd values such as ``1e999999`` from becoming megabyte strings).
MAX_DIGITS = 1000

_NUMERIC_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SURROGATES = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class InvalidItemError(ValueError):
    """An API item holds a value that cannot be stored exactly; retrying cannot fix it.

    The message names the dataset, the item's position in the stream and the field, never the
    value or any other content of the item.

    :param dataset: ``portfolio value``, ``portfolio coins`` or ``portfolio transactions``.
    :param index: The item's 0-based position in the stream; ``None`` for a single response.
    :param field: Dotted path of the offending field.
    :param reason: What is wrong with it.
    """

    def __init__(self, dataset: str, index: int | None, field: str, reason: str) -> None:
        self.dataset = dataset
        self.index = index
        self.field = field
        self.reason = reason
        where = f"{dataset} item #{index}" if index is not None else f"{dataset} response"
        super().__init__(f"{where}: field {field!r} {reason}")


class FieldError(ValueError):
    """A field-level problem, turned into :class:`InvalidItemError` once the item position is known.

    :param field: Dotted path of the offending field.
    :param reason: What is wrong with it (never the value).
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"field {field!r} {reason}")


def clean_text(value: str) -> str:
    """Remove NUL characters and replace lone surrogates with U+FFFD.

    :param value: Any string.
    :return: A string every UTF-8 database accepts.
    """
    if "\x00" in value:
        value = value.replace("\x00", "")
    if not value.isascii():
        value = _SURROGATES.sub("\ufffd", value)
    return value


def exact_number(value: Any, field: str) -> Decimal | None:
    """Convert an API number to an exact :class:`~decimal.Decimal`; ``None`` stays ``None``.

    :param value: ``Decimal``, ``int``, ``float`` or a numeric string.
    :param field: Field path, for the error message.
    :return: The value, digit for digit.
    :raises ValueError: If ``value`` is a boolean, not numeric, not finite or out of range; the
        message names ``field`` only.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise FieldError(field, "is a boolean, expected a number")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(field, "is not a finite number")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMERIC_TEXT.fullmatch(text):
            raise FieldError(field, "is not a number")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise FieldError(field, "is not a number") from None
    else:
        raise FieldError(field, f"is not a number (got {type(value).__name__})")
    if not number.is_finite():
        raise FieldError(field, "is not a finite number")
    exponent = number.as_tuple().exponent
    if number.adjusted() >= MAX_DIGITS or (isinstance(exponent, int) and exponent < -MAX_DIGITS):
        raise FieldError(field, f"is out of range (more than {MAX_DIGITS} integer or fractional digits)")
    return number


def decimal_text(value: Decimal) -> str:
    """Plain (non-exponent) exact text of a finite decimal, as stored on SQLite.

    :param value: A finite decimal.
    """
    return format(value, "f")


def product(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    """``a * b`` without rounding; ``None`` when either is ``None``.

    :param a: A factor.
    :param b: The other factor.
    """
    if a is None or b is None:
        return None
    with localcontext() as ctx:
        ctx.prec = len(a.as_tuple().digits) + len(b.as_tuple().digits) + 2
        return a * b


def get_path(obj: Any, *path: str) -> Any:
    """Follow ``path`` through nested mappings; ``None`` when any step is missing.

    :param obj: A decoded JSON value.
    :param path: Keys to follow.
    """
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def canonical_json(value: Any) -> str:
    """Serialise ``value`` deterministically: sorted keys, no whitespace, ASCII, exact numbers.

    ``Decimal`` values are written as their own text, so no digit is lost; strings are passed
    through :func:`clean_text`.

    :param value: A JSON-compatible value (``Decimal`` allowed).
    :return: The canonical JSON text.
    :raises ValueError: If ``value`` holds something that is not JSON (a set, a non-string key, a
        non-finite number); the message names the path of the offending value, never its content.
    """
    out: list[str] = []
    _encode(value, out, "")
    return "".join(out)


def _path_key(path: str, key: str) -> str:
    part = key if _PLAIN_KEY.fullmatch(key) else "?"
    return f"{path}.{part}" if path else part


def _encode(value: Any, out: list[str], path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(encode_basestring_ascii(clean_text(value)))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(path or "value", "is not a finite number")
        out.append(float.__repr__(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise FieldError(path or "value", "is not a finite number")
        out.append(str(value))
    elif isinstance(value, Mapping):
        _encode_object(value, out, path)
    elif isinstance(value, list | tuple):
        out.append("[")
        for position, sub in enumerate(value):
            if position:
                out.append(",")
            _encode(sub, out, f"{path}[{position}]")
        out.append("]")
    else:
        raise FieldError(path or "value", f"is not JSON-serialisable (got {type(value).__name__})")


def _encode_object(value: Mapping[Any, Any], out: list[str], path: str) -> None:
    items: list[tuple[str, Any, str]] = []
    for key, sub in value.items():
        if not isinstance(key, str):
            raise FieldError(path or "value", f"has a {type(key).__name__} key; JSON keys are strings")
        items.append((clean_text(key), sub, key))
    items.sort(key=lambda entry: entry[0])
    out.append("{")
    for position, (key, sub, raw) in enumerate(items):
        if position:
            out.append(",")
        out.append(encode_basestring_ascii(key))
        out.append(":")
        _encode(sub, out, _path_key(path, raw))
    out.append("}")
