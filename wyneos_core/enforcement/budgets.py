"""Disruption budgets: how much of a group severe actions may take out, and how fast.

As Kubernetes PodDisruptionBudgets and the node controller's eviction limiter. A budget
covers the nodes its ``selector`` matches (all nodes: fleet-wide), one group for each
value of its ``per`` label (zone, region, customer...) or one group in all. Within a
group:

* ``max_disrupted``: most nodes isolated or quarantined at once (a count, or a
  percentage of the group rounded down; at least one node may always be);
* ``rate``: a token bucket of new severe actions (``per_second`` refill, ``burst``
  tokens), as the eviction limiter's 0.1 node/s;
* ``unhealthy_threshold``: when more than this fraction of the group is stale or offline
  (the Kubernetes unhealthy-zone threshold is 0.55), its new severe actions stop: so
  many silent nodes at once is an outage of the zone, not that many broken nodes.

A new severe action over any budget is held (``held_by_budget``, naming the budget and
the group) and released, oldest hold first, when room returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wyneos_core.enforcement.selectors import label_of, label_value, matches
from wyneos_core.model import NodeStatus
from wyneos_core.nodetable import STATUS_CODE

__all__ = ["Budget", "BudgetBook", "BudgetError"]

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_UNHEALTHY = ("stale", "offline")
_UNHEALTHY_CODES = [STATUS_CODE[NodeStatus(s)] for s in _UNHEALTHY]


class BudgetError(ValueError):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name


@dataclass(slots=True)
class Budget:
    name: str
    selector: dict[str, str] = field(default_factory=dict)
    per: str | None = None
    #: (count, None) or (None, fraction)
    max_count: int | None = None
    max_fraction: float | None = None
    rate: float | None = None
    burst: int = 1
    unhealthy_threshold: float | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], default_name: str) -> Budget:
        limit = raw.get("max_disrupted")
        count = fraction = None
        if isinstance(limit, int) and not isinstance(limit, bool):
            if limit < 0:
                raise BudgetError("max_disrupted", f"must be 0 or more, got {limit}")
            count = limit
        elif isinstance(limit, str):
            m = _PERCENT.match(limit)
            if m is None or float(m.group(1)) > 100:
                raise BudgetError("max_disrupted", f"expected a count or a percentage such as '10%', got {limit!r}")
            fraction = float(m.group(1)) / 100
        elif limit is not None:
            raise BudgetError("max_disrupted", f"expected a count or a percentage, got {limit!r}")
        rate = raw.get("rate") or {}
        budget = cls(raw.get("name") or default_name, dict(raw.get("selector") or {}), raw.get("per"), count,
                     fraction, rate.get("per_second"), int(rate.get("burst", 1)), raw.get("unhealthy_threshold"))
        if count is None and fraction is None and budget.rate is None and budget.unhealthy_threshold is None:
            raise BudgetError("budget", "limits nothing: give max_disrupted, rate or unhealthy_threshold")
        return budget

    def group_of(self, node: Any) -> str | None:
        """The group ``node`` falls in (None: this budget does not cover it)."""
        if node is None or not matches(node, self.selector):
            return None
        if self.per is None:
            return "*"
        return label_of(node, self.per)

    def limit(self, size: int) -> int | None:
        if self.max_count is not None:
            return self.max_count
        if self.max_fraction is not None:
            return max(1, math.floor(self.max_fraction * size))
        return None

    def describe(self, group: str) -> str:
        return self.name if group == "*" else f"{self.name}[{self.per}={group}]"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class BudgetBook:
    """The budgets and what they remember across ticks (token buckets, hold order)."""

    budgets: list[Budget]
    severe: frozenset[str]
    buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)
    #: action id -> tick it was first held (release order: oldest first)
    held_since: dict[str, int] = field(default_factory=dict)
    #: action id -> the buckets it took a token from this tick (refunded unless it is approved)
    spent: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def settle(self, approved: set[str]) -> None:
        """Give back the tokens of admitted actions the decide step did not approve (held
        for witnesses, by the safety stop...): a token is spent only on an action that acts."""
        for action_id, keys in self.spent.items():
            if action_id not in approved:
                for key in keys:
                    bucket = self.buckets.get(key)
                    if bucket is not None:
                        bucket.tokens += 1
        self.spent = {}

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> BudgetBook:
        budgets = []
        for index, raw in enumerate(section["budgets"]):
            try:
                budgets.append(Budget.parse(raw, f"budget-{index + 1}"))
            except BudgetError as exc:
                raise BudgetError(f"enforcement.budgets[{index}].{exc.field}", str(exc).split(": ", 1)[1]) from None
        return cls(budgets, frozenset(section["severe_actions"]))

    def counts(self, nodes: Any, disrupted: set[str]) -> tuple[dict[tuple[str, str], int], ...]:
        """Per (budget, group): nodes, unhealthy nodes, disrupted nodes (isolated, or in
        ``disrupted``). Over the node table's columns when ``nodes`` is the registry (label
        values dictionary-encoded once per distinct value); node by node otherwise."""
        table = getattr(nodes, "table", None)
        if table is None or not hasattr(table, "metadata_codes"):
            return self._counts_walk(nodes, disrupted)
        slots = table.slots()
        sick = np.isin(table.status[slots], _UNHEALTHY_CODES)
        taken = table.isolated[slots].copy()
        for node_id in disrupted:  # the targets of actions in force: few
            slot = table.index.get(node_id)
            if slot is not None:
                taken[np.searchsorted(slots, slot)] = True
        size: dict[tuple[str, str], int] = {}
        unhealthy: dict[tuple[str, str], int] = {}
        used: dict[tuple[str, str], int] = {}
        for b in self.budgets:
            covered = np.ones(len(slots), dtype=bool)
            for key, want in b.selector.items():
                codes, values = table.metadata_codes(key)
                match = np.array([label_value(v) == want for v in values] + [False], dtype=bool)
                covered &= match[codes[slots]]  # code -1 (no such label) reads the last entry
            if b.per is None:
                names, group = ["*"], np.zeros(len(slots), dtype=np.int64)
            else:
                codes, values = table.metadata_codes(b.per)
                labels = [label_value(v) for v in values]
                names = sorted({label for label in labels if label is not None})
                at = {name: i for i, name in enumerate(names)}
                lookup = np.array([at.get(label, -1) if label is not None else -1 for label in labels] + [-1],
                                  dtype=np.int64)
                group = lookup[codes[slots]]
                covered &= group >= 0
            g = group[covered]
            for counted, out in ((np.bincount(g, minlength=len(names)), size),
                                 (np.bincount(g[sick[covered]], minlength=len(names)), unhealthy),
                                 (np.bincount(g[taken[covered]], minlength=len(names)), used)):
                for i in np.flatnonzero(counted).tolist():
                    out[(b.name, names[i])] = int(counted[i])
        return size, unhealthy, used

    def _counts_walk(self, nodes: Any, disrupted: set[str]) -> tuple[dict[tuple[str, str], int], ...]:
        size: dict[tuple[str, str], int] = {}
        unhealthy: dict[tuple[str, str], int] = {}
        used: dict[tuple[str, str], int] = {}
        for node in nodes:
            for b in self.budgets:
                g = b.group_of(node)
                if g is None:
                    continue
                key = (b.name, g)
                size[key] = size.get(key, 0) + 1
                status = getattr(node.status, "value", node.status)
                if status in _UNHEALTHY:
                    unhealthy[key] = unhealthy.get(key, 0) + 1
                if node.id in disrupted or node.isolated:
                    used[key] = used.get(key, 0) + 1
        return size, unhealthy, used

    def admit(self, tick: int, now: float, candidates: Iterable[Any], nodes: Any,
              disrupted: set[str]) -> tuple[list[Any], dict[str, str]]:
        """Which of ``candidates`` (new severe actions, in proposal order) fit the budgets.

        :param nodes: the registry (``get(id)`` and iteration).
        :param disrupted: nodes isolated or quarantined now (by actions in force).
        :return: the admitted actions, and ``{action id: why held}`` for the others.
        """
        candidates = list(candidates)
        self.spent = {}
        if not self.budgets or not candidates:
            self.held_since = {k: v for k, v in self.held_since.items() if any(a.id == k for a in candidates)}
            return candidates, {}
        order = sorted(range(len(candidates)),
                       key=lambda i: (self.held_since.get(candidates[i].id, tick), i))
        size, unhealthy, used = self.counts(nodes, disrupted)
        for (name, g), bucket in self.buckets.items():
            budget = next((b for b in self.budgets if b.name == name), None)
            if budget is not None and budget.rate:
                bucket.tokens = min(float(budget.burst), bucket.tokens + (now - bucket.at) * budget.rate)
                bucket.at = now
        admitted: list[Any] = []
        held: dict[str, str] = {}
        taken: set[str] = set()
        for i in order:
            action = candidates[i]
            node = nodes.get(action.target)
            why = None
            keys = []
            for b in self.budgets:
                g = b.group_of(node)
                if g is None:
                    continue
                key = (b.name, g)
                keys.append((b, key))
                n = size.get(key, 0)
                if b.unhealthy_threshold is not None and n and unhealthy.get(key, 0) / n > b.unhealthy_threshold:
                    why = (f"{b.describe(g)}: {unhealthy[key]}/{n} nodes unhealthy, more than "
                           f"unhealthy_threshold={b.unhealthy_threshold:g}: severe actions stop in this group")
                    break
                lim = b.limit(n)
                if lim is not None and action.target not in taken and used.get(key, 0) >= lim:
                    why = f"{b.describe(g)}: {used.get(key, 0)}/{n} nodes disrupted, max_disrupted is {lim}"
                    break
                if b.rate:
                    bucket = self.buckets.setdefault(key, _Bucket(float(b.burst), now))
                    if bucket.tokens < 1:
                        why = f"{b.describe(g)}: rate {b.rate:g}/s (burst {b.burst}) used up"
                        break
            if why is not None:
                held[action.id] = why
                self.held_since.setdefault(action.id, tick)
                continue
            for b, key in keys:
                if b.rate:
                    self.buckets[key].tokens -= 1
                    self.spent.setdefault(action.id, []).append(key)
                if action.target not in taken:
                    used[key] = used.get(key, 0) + 1
            taken.add(action.target)
            self.held_since.pop(action.id, None)
            admitted.append(action)
        for stale in [k for k in self.held_since if k not in held]:
            del self.held_since[stale]
        position = {a.id: i for i, a in enumerate(candidates)}
        admitted.sort(key=lambda a: position[a.id])
        return admitted, held
