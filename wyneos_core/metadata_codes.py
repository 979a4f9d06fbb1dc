"""Metadata values dictionary-encoded by slot, for vector code (``NodeTable.metadata_codes``,
``NodeTable.version``): the codes of one declared key and the distinct values met, and
``metadata.version`` parsed once per distinct value."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wyneos_core.model import parse_version

__all__ = ["VersionColumn"]


def _value_key(value: Any) -> Any:
    """The dictionary key of a metadata value: the value itself when hashable (with its
    type, so ``1``, ``1.0`` and ``True`` stay apart), one key for NaN, JSON text otherwise."""
    if type(value) is float and value != value:
        return ("nan",)
    try:
        hash(value)
    except TypeError:
        try:
            return ("json", json.dumps(value, sort_keys=True, default=repr))
        except (TypeError, ValueError, RecursionError):
            return ("repr", repr(value))
    return (type(value), value)


class _Dictionary:
    """One declared metadata key: ``codes`` by slot and the distinct values met."""

    __slots__ = ("codes", "values", "lookup")

    def __init__(self, capacity: int) -> None:
        self.codes = np.full(capacity, -1, np.int32)
        self.values: list[Any] = []
        self.lookup: dict[Any, int] = {}

    def code(self, metadata: Mapping[str, Any], key: str) -> int:
        if key not in metadata:
            return -1
        value = metadata[key]
        k = _value_key(value)
        code = self.lookup.get(k)
        if code is None:
            code = self.lookup[k] = len(self.values)
            self.values.append(value)
        return code


def _padded(version: tuple[int, ...]) -> tuple[int, ...]:
    return version + (0,) * (8 - len(version))


@dataclass
class VersionColumn:
    """``metadata.version`` parsed once per distinct value (``NodeTable.version()``).

    ``codes[slot]``: index into ``parsed`` (-1: no version key); ``parsed[code]``: the
    version tuple (None: the value is not a version); ``rank[code]``: its order among
    the distinct parsed versions, equal versions equal (-1: not a version).
    """

    codes: np.ndarray
    parsed: list[tuple[int, ...] | None]
    rank: np.ndarray

    def follow(self, codes: np.ndarray, values: Sequence[Any]) -> None:
        """Take the key's current codes; parse and rank the values met since."""
        self.codes = codes
        if len(self.parsed) < len(values):
            parsed = self.parsed
            parsed.extend(parse_version(value) for value in values[len(parsed):])
            known = [i for i, p in enumerate(parsed) if p is not None]
            order = sorted(known, key=lambda i: _padded(parsed[i]))  # type: ignore[arg-type]
            rank = np.full(len(parsed), -1, np.int32)
            r = -1
            last: Any = None
            for i in order:  # equal versions (2.4 and 2.4.0) share a rank
                padded = _padded(parsed[i])  # type: ignore[arg-type]
                if padded != last:
                    r, last = r + 1, padded
                rank[i] = r
            self.rank = rank

    def at_least(self, bound: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, known)`` over all slots: the version is ``>= bound``, and the node has a
        parseable version at all (where ``known`` is False, ``mask`` is False)."""
        floor = _padded(bound)
        ok = np.array([p is not None and _padded(p) >= floor for p in self.parsed] + [False], bool)
        known = np.append(self.rank >= 0, False)
        return ok[self.codes], known[self.codes]  # code -1 reads the appended False
