"""The canonical encoding that licence and revocation-list signatures cover.

Canonical JSON: keys sorted, no insignificant white space, UTF-8, no floating-point
numbers (their text form differs between languages) and no NaN. The same data always
gives the same bytes, so a signature made by one tool verifies byte for byte in another.

>>> canonical_json({"b": [1, "é"], "a": None})
b'{"a":null,"b":[1,"\\xc3\\xa9"]}'
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["CanonicalError", "MAX_DEPTH", "MAX_INT_DIGITS", "OversizedInteger", "canonical_json", "check_canonical"]

#: deepest nesting of lists and objects signed data may have
MAX_DEPTH = 32
#: most decimal digits an integer in signed data may have
MAX_INT_DIGITS = 64


class CanonicalError(ValueError):
    """The data cannot be encoded canonically (a float, a non-string key, ...)."""


class OversizedInteger:
    """Stands in for an integer literal too long to be data (see ``MAX_INT_DIGITS``).

    JSON parsers of signed documents map such literals to this marker instead of
    converting them (which costs quadratic time, and past 4,300 digits raises), so the
    check that meets it can name the field.
    """

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _text(value: str, path: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CanonicalError(f"{path or 'value'}: not valid Unicode text (lone surrogate at character "
                                 f"{exc.start})") from None


def _check(value: Any, path: str, depth: int) -> None:
    if isinstance(value, str):
        _text(value, path)
        return
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return
    if isinstance(value, float):
        raise CanonicalError(f"{path or 'value'}: floating-point numbers are not allowed in signed data")
    if isinstance(value, OversizedInteger):
        raise CanonicalError(f"{path or 'value'}: an integer of {value.digits} digits (at most {MAX_INT_DIGITS})")
    if depth >= MAX_DEPTH and isinstance(value, (list, tuple, dict)):
        raise CanonicalError(f"{path or 'value'}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{path or 'value'}: keys must be strings, got {key!r:.40}")
            _text(key, f"{path}.{key!r}" if path else repr(key))
            _check(item, f"{path}.{key}" if path else key, depth + 1)
        return
    raise CanonicalError(f"{path or 'value'}: {type(value).__name__} is not JSON data")


def check_canonical(value: Any, path: str = "") -> None:
    """Raise ``CanonicalError`` naming the first part of ``value`` that has no canonical form.

    Refused: floats, NaN, non-string keys, lone surrogates, integers longer than
    ``MAX_INT_DIGITS`` digits, nesting deeper than ``MAX_DEPTH``, anything not JSON data.
    """
    _check(value, path, 0)


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically; raise ``CanonicalError`` for data that has no canonical form."""
    _check(value, "", 0)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
