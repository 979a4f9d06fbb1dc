"""How counts and lists of ids read in messages: ``1 rule``, ``3 rules``, ``a, b, c, +7``."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

__all__ = ["examples", "plural"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 rule"``, ``"3 rules"``, ``"0 rules"`` (``many``: the plural when not ``word + "s"``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def examples(ids: Iterable[str], shown: int = 3, total: int | None = None) -> str:
    """The first ``shown`` ids in sorted order and how many more: ``"a, b, c, +997"``
    (``total``: how many there are when ``ids`` is only a sample of them)."""
    ids = list(ids)
    head = ", ".join(heapq.nsmallest(shown, ids))  # not a sort of 100,000 ids for three of them
    more = max(len(ids), total or 0) - min(shown, len(ids))
    return head + (f", +{more}" if more > 0 else "")
