"""A tick report's transitions: dicts, the fleet's status changes held as columns.

``TickReport.transitions`` lists what changed state in a tick, one dict each
(``{"kind": "status", "node_id": ..., "from": "unknown", "to": "online"}``; rules and drift
append their own kinds). The status changes come from one comparison over the whole
fleet, and on a first tick, or when a network cut silences a region, they are the whole
fleet: a dict each is about 190 bytes a node, held by the report through the next tick.
``Transitions`` keeps each such batch as three columns instead (the ids, and the old
and new status as codes into a tuple of names: about 10 bytes a node) and makes a
batch's dicts only when they are read, one at a time.

It reads like the list it replaces (iterate, ``len``, index, ``append``, ``extend``,
compare with a list); ``to_list()`` is the plain list. Code that wants the status
changes alone asks ``status_ids()`` or ``status_groups()`` (no dict at all), and
``chunks()`` gives the dicts a bounded number at a time (the report's JSON file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSequence, Sequence
from itertools import islice
from typing import Any

import numpy as np

__all__ = ["StatusChanges", "Transitions", "status_ids"]


class StatusChanges:
    """Status changes as columns: ``ids[k]`` went from ``names[old[k]]`` to ``names[new[k]]``."""

    __slots__ = ("ids", "old", "new", "names")

    def __init__(self, ids: list[str], old: np.ndarray, new: np.ndarray, names: Sequence[str]) -> None:
        if not len(ids) == len(old) == len(new):
            raise ValueError(f"{len(ids)} ids for {len(old)} old and {len(new)} new statuses")
        self.ids, self.old, self.new, self.names = ids, old, new, tuple(names)

    def __len__(self) -> int:
        return len(self.ids)

    def dicts(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """The changes from ``start`` to ``stop`` as transition dicts, made one at a time."""
        names = self.names
        stop = len(self.ids) if stop is None else stop
        for node_id, o, n in zip(self.ids[start:stop], self.old[start:stop].tolist(), self.new[start:stop].tolist()):
            yield {"kind": "status", "node_id": node_id, "from": names[o], "to": names[n]}


class Transitions(MutableSequence[dict[str, Any]]):
    """The transitions of a tick, in order: dicts, and ``StatusChanges`` made dicts when read."""

    __slots__ = ("_parts", "_len")

    def __init__(self, items: Iterable[dict[str, Any]] = ()) -> None:
        self._parts: list[dict[str, Any] | StatusChanges] = list(items)
        self._len = len(self._parts)

    # -- adding --------------------------------------------------------------------------

    def add_status(self, changes: StatusChanges) -> None:
        """Append the status changes ``changes`` (read as one dict each, in their order)."""
        if len(changes):
            self._parts.append(changes)
            self._len += len(changes)

    def append(self, item: dict[str, Any]) -> None:
        self._parts.append(item)
        self._len += 1

    def extend(self, items: Iterable[dict[str, Any]]) -> None:
        for item in items:
            self.append(item)

    def insert(self, position: int, item: dict[str, Any]) -> None:
        self._flatten().insert(position, item)
        self._len += 1

    def __setitem__(self, position: Any, value: Any) -> None:
        self._flatten()[position] = value
        self._len = len(self._parts)

    def __delitem__(self, position: Any) -> None:
        del self._flatten()[position]
        self._len = len(self._parts)

    def _flatten(self) -> list[Any]:
        """Every part as dicts (for the rare change other than an append)."""
        if any(type(p) is StatusChanges for p in self._parts):
            self._parts = self.to_list()  # type: ignore[assignment]
        return self._parts

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for part in self._parts:
            if type(part) is StatusChanges:
                yield from part.dicts()
            else:
                yield part  # type: ignore[misc]

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(self._len))]
        if position < 0:
            position += self._len
        if not 0 <= position < self._len:
            raise IndexError(position)
        for part in self._parts:
            if type(part) is not StatusChanges:
                if not position:
                    return part
                position -= 1
            elif position < len(part):  # type: ignore[arg-type]
                return next(part.dicts(position, position + 1))  # type: ignore[union-attr]
            else:
                position -= len(part)  # type: ignore[arg-type]
        raise IndexError(position)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Transitions, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mutable sequence, as a list

    def __repr__(self) -> str:
        shown = list(islice(self, 3))
        more = f", ... {self._len - len(shown)} more" if self._len > len(shown) else ""
        return f"Transitions({shown!r}{more})"

    def to_list(self) -> list[dict[str, Any]]:
        return list(self)

    def chunks(self, size: int) -> Iterator[list[dict[str, Any]]]:
        """The transitions in order, at most ``size`` at a time."""
        items = iter(self)
        while chunk := list(islice(items, size)):
            yield chunk

    def status_ids(self) -> list[str]:
        """The ids of the nodes whose status changed (kind ``status``), in order."""
        out: list[str] = []
        for part in self._parts:
            if type(part) is StatusChanges:
                out.extend(part.ids)
            elif part.get("kind") == "status":  # type: ignore[union-attr]
                out.append(part["node_id"])  # type: ignore[index]
        return out

    def held(self) -> Iterator[dict[str, Any]]:
        """The transitions held as dicts (all but the status changes held as columns), in order."""
        return (part for part in self._parts if type(part) is not StatusChanges)  # type: ignore[misc]

    def status_groups(self) -> dict[tuple[str, str], list[str]]:
        """The status changes grouped by ``(from, to)``, each group's ids in order."""
        groups: dict[tuple[str, str], list[str]] = {}
        for part in self._parts:
            if type(part) is StatusChanges:
                pairs = part.old.astype(np.int64) * len(part.names) + part.new
                for pair in np.unique(pairs).tolist():
                    at = np.flatnonzero(pairs == pair).tolist()
                    key = (part.names[pair // len(part.names)], part.names[pair % len(part.names)])
                    groups.setdefault(key, []).extend(map(part.ids.__getitem__, at))
            elif part.get("kind") == "status":  # type: ignore[union-attr]
                groups.setdefault((part["from"], part["to"]), []).append(part["node_id"])  # type: ignore[index]
        return groups


def status_ids(transitions: Iterable[dict[str, Any]]) -> list[str]:
    """``Transitions.status_ids`` of any list of transitions."""
    fast = getattr(transitions, "status_ids", None)
    if fast is not None:
        return fast()  # type: ignore[no-any-return]
    return [t["node_id"] for t in transitions if t.get("kind") == "status"]
