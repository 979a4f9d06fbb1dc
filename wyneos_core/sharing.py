"""Values many nodes hold alike, held once: metadata mappings and licence references.

A fleet's nodes mostly carry the same few metadata mappings (none at all, or one zone
and version among a handful) and name one licence among a few. The node table keeps one
reference per node to a shared object instead of one object per node:

* ``FrozenMetadata``: a node's metadata in the table. It reads as the ``dict`` it is
  (``json``, ``msgspec``, ``dict(...)``, ``{**m}`` all work) and refuses any change in
  place with a ``TypeError`` saying to replace it, since other nodes (and earlier tick
  reports) share it; ``copy.copy``/``copy.deepcopy`` give a plain ``dict``.
* ``MetadataPool``: the table's way to store a mapping: an empty one becomes
  ``EMPTY_METADATA`` (one object for every node without metadata), and a mapping of
  plain JSON data equal to one of the last ``limit`` distinct mappings stored becomes
  that one. Equal means the same items in the same order with values of the same types
  (``1``, ``1.0`` and ``True`` stay apart; a list is not a tuple), compared by ``repr``
  of the items, which is faithful for JSON data (other values are never shared). The
  pool is bounded: a fleet of unique mappings costs no more than one copy each.
* ``shared_ref``: a licence reference as one string object per distinct value
  (``sys.intern``: freed when no node names it any more).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, NoReturn

__all__ = ["EMPTY_METADATA", "FrozenMetadata", "MetadataPool", "shared_ref"]

_CHANGE = ("a node's metadata is shared (by nodes with equal metadata and by earlier tick reports) and is "
           "never changed in place: replace it, e.g. node.metadata = {**node.metadata, 'key': value}")


class FrozenMetadata(dict):  # type: ignore[type-arg]
    """A metadata mapping that refuses changes in place (see the module docstring)."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(_CHANGE)

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse  # type: ignore

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        import copy

        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMetadata, (dict(self),))


EMPTY_METADATA = FrozenMetadata()

_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any, depth: int = 0) -> bool:
    """JSON data only (whose ``repr`` tells equal values from unequal ones)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth > 16:
        return False
    if kind is list:
        return all(_plain(v, depth + 1) for v in value)
    if kind is dict or kind is FrozenMetadata:
        return all(type(k) in _SCALARS and _plain(v, depth + 1) for k, v in value.items())
    return False


class MetadataPool:
    """Stores metadata mappings as shared ``FrozenMetadata`` (see the module docstring)."""

    __slots__ = ("limit", "_recent")

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._recent: dict[str, FrozenMetadata] = {}

    def __call__(self, mapping: Mapping[str, Any] | None) -> FrozenMetadata:
        if not mapping:
            return EMPTY_METADATA
        if not _plain(mapping) or type(mapping) not in (dict, FrozenMetadata):
            return mapping if type(mapping) is FrozenMetadata else FrozenMetadata(mapping)
        key = repr(list(mapping.items()))
        found = self._recent.get(key)
        if found is None:
            found = mapping if type(mapping) is FrozenMetadata else FrozenMetadata(mapping)
            recent = self._recent
            if len(recent) >= self.limit:
                del recent[next(iter(recent))]  # the oldest distinct mapping leaves the pool
            recent[key] = found
        return found

    def __len__(self) -> int:
        return len(self._recent)


def shared_ref(value: str | None) -> str | None:
    """One string object per distinct licence reference (see the module docstring)."""
    return sys.intern(value) if type(value) is str else value
