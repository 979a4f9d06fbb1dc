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

__all__ = ["canonical_json", "CanonicalError"]


class CanonicalError(ValueError):
    """The data cannot be encoded canonically (a float, a non-string key, ...)."""


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, float):
        raise CanonicalError(f"{path or 'value'}: floating-point numbers are not allowed in signed data")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{path or 'value'}: keys must be strings, got {key!r}")
            _check(item, f"{path}.{key}" if path else key)
        return
    raise CanonicalError(f"{path or 'value'}: {type(value).__name__} is not JSON data")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically; raise ``CanonicalError`` for data that has no canonical form."""
    _check(value, "")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
