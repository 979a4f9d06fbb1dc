"""Why each node is held out of admission: a code per slot, not a dict entry per node.

The trust engine keeps the (rule, reason) of every node not admitted. A whole fleet in
probation shares a handful of them ("in probation for 2 more ticks", a rule's
description), so ``SlotReasons`` keeps one int32 code per engine slot (-1: none) and the
distinct pairs once: 4 bytes a node, where a dict of slot -> pair costs 50 to 85 (and a
dict keeps its size after its entries are removed, so a fleet admitted at once kept it).

It reads as a ``Mapping[int, tuple[str, str]]`` of the slots that have a reason; whole
groups of slots are set or cleared with one scatter (``set_many``, ``clear_many``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from wyneos_core.names import LookupMapping

__all__ = ["SlotReasons"]


class SlotReasons(LookupMapping):
    """Engine slot -> (rule, reason) of the nodes held out of admission (module docstring)."""

    __slots__ = ("code", "pairs", "_code_of")

    def __init__(self, capacity: int) -> None:
        self.code = np.full(capacity, -1, dtype=np.int32)
        #: the distinct pairs, by code
        self.pairs: list[tuple[str, str]] = []
        self._code_of: dict[tuple[str, str], int] = {}

    def grow(self, capacity: int) -> None:
        if capacity > len(self.code):
            code = np.full(capacity, -1, dtype=np.int32)
            code[:len(self.code)] = self.code
            self.code = code

    def code_of(self, pair: tuple[str, str]) -> int:
        code = self._code_of.get(pair)
        if code is None:
            if len(self.pairs) > 1024 and len(self.pairs) > 2 * (len(self) + 1):
                self._renumber()
            code = self._code_of[pair] = len(self.pairs)
            self.pairs.append(pair)
        return code

    def _renumber(self) -> None:
        """Keep only the pairs some slot still has (restored rows may each bring their own)."""
        used = np.flatnonzero(self.code >= 0)
        kept, remap = np.unique(self.code[used], return_inverse=True)
        self.pairs = [self.pairs[c] for c in kept.tolist()]
        self._code_of = {pair: k for k, pair in enumerate(self.pairs)}
        self.code[used] = remap.reshape(-1).astype(np.int32)

    # -- the mapping --------------------------------------------------------------------------

    def get(self, slot: Any, default: Any = None) -> Any:
        if type(slot) is not int and not isinstance(slot, np.integer):
            return default
        if not 0 <= slot < len(self.code):
            return default
        code = int(self.code[slot])
        return default if code < 0 else self.pairs[code]

    def __iter__(self) -> Iterator[int]:
        return iter(self.slots().tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self.code >= 0))

    def slots(self) -> np.ndarray:
        """The slots that have a reason, ascending (int64)."""
        return np.flatnonzero(self.code >= 0)

    # -- changes ------------------------------------------------------------------------------

    def __setitem__(self, slot: int, pair: tuple[str, str]) -> None:
        self.set_many(np.array([slot], dtype=np.int64), pair)

    def pop(self, slot: int, default: Any = None) -> Any:
        pair = self.get(slot)
        if pair is not None:
            self.code[slot] = -1
        return default if pair is None else pair

    def set_many(self, slots: np.ndarray, pair: tuple[str, str]) -> None:
        """Give every slot of ``slots`` the reason ``pair``."""
        if not len(slots):
            return
        self.code[slots] = self.code_of(pair)

    def clear_many(self, slots: np.ndarray) -> None:
        """Remove the reasons of ``slots`` (admitted)."""
        self.code[slots] = -1
