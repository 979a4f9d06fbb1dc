"""Why the cluster looks as it does, for the dashboard and the read API: licences by
reason code, rules with their failing and firing nodes, and the cause of each action in
force. Pure functions of the last ``TickReport`` and the committed actions, each answer
bounded in size whatever the size of the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wyneos_core.causes import action_cause
from wyneos_core.licensing.reasons import REASONS
from wyneos_core.model import LicenceResult, TickReport

__all__ = ["licence_of", "licence_overview", "rule_overview", "with_causes", "PerTick", "EXAMPLES"]

#: node ids listed per row as examples (the count says how many there are)
EXAMPLES = 5


def licence_of(result: LicenceResult | None) -> dict[str, Any] | None:
    """A node's licence state as the dashboard shows it (None: no licence step ran for it)."""
    if result is None:
        return None
    state = "in_grace" if result.valid and result.in_grace else ("valid" if result.valid else "invalid")
    return {"state": state, "reason": result.reason, "detail": result.detail, "licence_id": result.licence_id,
            "meaning": REASONS.get(result.reason, "")}


def licence_overview(report: TickReport | None) -> dict[str, Any]:
    """Licence results of the last tick by state and reason code, with a count, the
    meaning of the code, the detail of the first node and a few node ids."""
    if report is None:
        return {"tick": None, "total": 0, "reasons": []}
    groups: dict[tuple[str, str], list[LicenceResult]] = {}
    for r in report.licences.values():
        state = "in_grace" if r.valid and r.in_grace else ("valid" if r.valid else "invalid")
        groups.setdefault((state, r.reason), []).append(r)
    order = {"invalid": 0, "in_grace": 1, "valid": 2}
    rows = []
    for (state, reason), results in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], -len(kv[1]), kv[0][1])):
        results.sort(key=lambda r: r.node_id)
        rows.append({"state": state, "reason": reason, "count": len(results), "meaning": REASONS.get(reason, ""),
                     "detail": results[0].detail, "examples": [r.node_id for r in results[:EXAMPLES]]})
    return {"tick": report.tick, "total": len(report.licences), "reasons": rows}


def rule_overview(report: TickReport | None) -> dict[str, Any]:
    """Every rule of the last tick with how many nodes it passed, failed and fires on
    (failing past its ``for``; a rule without one fires when it fails), the first
    failing node's message and a few node ids; failing rules first."""
    if report is None:
        return {"tick": None, "rules": []}
    failed: dict[str, list[Any]] = {}
    for r in report.results:
        failed.setdefault(r.rule_id, []).append(r)
    rows = []
    for rule_id, counts in report.rule_summary.items():
        results = sorted(failed.get(rule_id, []), key=lambda r: r.node_id)
        firing = [r for r in results if r.state in (None, "firing")]
        first = results[0] if results else None
        rows.append({"rule": rule_id, "source": first.source if first else "", "passed": counts.get("passed", 0),
                     "failing": counts.get("failed", 0), "firing": len(firing),
                     "severity": first.severity.value if first else None,
                     "message": (first.problem() or first.message) if first else "",
                     "examples": [r.node_id for r in results[:EXAMPLES]]})
    rows.sort(key=lambda row: (-row["failing"], -row["firing"], row["rule"]))
    return {"tick": report.tick, "rules": rows}


class PerTick:
    """``fn(report)``, computed once per tick: the dashboard asks every second, a tick of
    a large cluster comes every few. (Two threads asking at once may both compute it.)"""

    def __init__(self, fn: Callable[[TickReport | None], dict[str, Any]]) -> None:
        self.fn = fn
        self._last: tuple[TickReport | None, dict[str, Any] | None] = (None, None)

    def __call__(self, report: TickReport | None) -> dict[str, Any]:
        last, value = self._last
        if report is not None and report is last and value is not None:
            return value
        value = self.fn(report)
        self._last = (report, value)
        return value


def with_causes(actions: Iterable[Mapping[str, Any]], started_at: Mapping[int, float] | None = None
                ) -> list[dict[str, Any]]:
    """``actions`` (stored rows or ``to_dict`` forms), each with its ``cause``
    (``wyneos_core.causes``) and, when the tick is still stored, ``since`` (the time its
    first tick started)."""
    out = []
    for a in actions:
        row = dict(a)
        row["cause"] = action_cause(a).to_dict()
        if started_at is not None:
            row["since"] = started_at.get(int(a.get("first_tick") or 0))
        out.append(row)
    return out
