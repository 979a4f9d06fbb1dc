"""The fleet as an operator queries it: one row per node with its labels and problems,
filtered by label selector, problem and search text, sorted, paged; aggregates by zone
and tier; the history of the last ticks; the mesh around one node.

Pure functions of the published view (``ClusterView``) and the committed tick
summaries. ``FleetIndex`` builds the rows once per tick (a 10,000-node fleet is asked
every second by each open dashboard), so a query filters and sorts plain tuples.

Labels of a node (what ``-l`` / ``selector=`` match): its metadata's scalar values,
then ``status``, ``tier`` (trust tier, ``none`` before the trust step ran),
``licence`` (reason code of the last tick, ``none`` without a licence step),
``isolated`` (``true``/``false``) and ``zone`` / ``mode`` when the metadata names them.
Problems of a node: ``offline``, ``stale``, ``unknown``, ``isolated``,
``licence:CODE`` (an invalid licence), ``rule:RULESET/RULE`` or ``rule:RULE`` (each rule
failing on it), ``tier:untrusted`` and ``tier:probation``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wyneos_core.selectors import Selector, flat_labels

__all__ = ["FleetIndex", "NodeRow", "SORT_KEYS", "history", "neighbourhood"]

#: what ``sort=`` takes (a leading ``-`` reverses)
SORT_KEYS = ("problems", "id", "status", "load", "trust", "zone", "tier", "last_seen")
#: most rows one page holds
MAX_PAGE = 1000
#: the order of statuses when sorting by status (worst first)
_STATUS_RANK = {"offline": 0, "stale": 1, "unknown": 2, "online": 3}


@dataclass(slots=True)
class NodeRow:
    id: str
    status: str
    load: float | None
    trust: float | None
    tier: str
    zone: str
    isolated: bool
    last_seen: float | None
    licence: str
    licence_state: str | None  # valid, in_grace, invalid; None without a licence step
    licence_detail: str
    labels: dict[str, str]
    problems: list[str]
    text: str  # what the search looks in (lower case)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "load": self.load, "trust": self.trust, "tier": self.tier,
                "zone": self.zone, "isolated": self.isolated, "last_seen": self.last_seen, "licence": self.licence,
                "licence_state": self.licence_state, "licence_detail": self.licence_detail,
                "labels": self.labels, "problems": self.problems}


def _failing_rules(results: Iterable[Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in results:
        if not r.passed:
            out.setdefault(r.node_id, []).append(f"{r.source}/{r.rule_id}" if r.source else r.rule_id)
    return out


def _row(node: Any, licence: Any, failing: list[str]) -> NodeRow:
    meta = {k: v for k, v in flat_labels(node.metadata or {}).items() if len(v) <= 200}
    tier = node.trust_tier or "none"
    reason = "none" if licence is None else str(licence.reason)
    labels = {**meta, "status": node.status.value, "tier": tier, "licence": reason,
              "isolated": "true" if node.isolated else "false", "id": node.id}
    problems = []
    if node.status.value != "online":
        problems.append(node.status.value)
    if node.isolated:
        problems.append("isolated")
    if licence is not None and not licence.valid:
        problems.append(f"licence:{reason}")
    problems.extend(f"rule:{r}" for r in sorted(set(failing)))
    if tier in ("untrusted", "probation"):
        problems.append(f"tier:{tier}")
    text = " ".join([node.id, *meta.values(), *problems]).lower()
    state = None if licence is None else ("in_grace" if licence.valid and licence.in_grace
                                          else ("valid" if licence.valid else "invalid"))
    return NodeRow(node.id, node.status.value, node.load, node.trust, tier, meta.get("zone", ""), bool(node.isolated),
                   node.last_seen, reason, state, "" if licence is None else str(licence.detail), labels, problems,
                   text)


def _matches_problem(row: NodeRow, problem: str) -> bool:
    """``problem`` is a problem name (``offline``, ``licence:expired``), a kind with any
    value (``licence``, ``rule``, ``tier``), ``any`` (has one) or ``none`` (has none);
    a rule may be named without its ruleset (``rule:load-ceiling``)."""
    if problem == "any":
        return bool(row.problems)
    if problem == "none":
        return not row.problems
    for p in row.problems:
        if p == problem or p.split(":", 1)[0] == problem:
            return True
        if problem.startswith("rule:") and p.startswith("rule:") and p.rsplit("/", 1)[-1] == problem[5:]:
            return True
    return False


def _sorted(rows: list[NodeRow], name: str, reverse: bool) -> list[NodeRow]:
    """``rows`` by ``name`` (ties by id); numbers missing come last either way."""
    if name in ("load", "trust", "last_seen"):
        sign = -1.0 if reverse else 1.0
        return sorted(rows, key=lambda r: (getattr(r, name) is None, sign * (getattr(r, name) or 0.0), r.id))
    if name == "problems":
        key = lambda r: (-len(r.problems), _STATUS_RANK.get(r.status, 9), r.id)  # noqa: E731
    elif name == "status":
        key = lambda r: (_STATUS_RANK.get(r.status, 9), r.id)  # noqa: E731
    else:
        key = lambda r: (getattr(r, name), r.id)  # noqa: E731
    return sorted(rows, key=key, reverse=reverse)


class FleetIndex:
    """The rows of one published view, built on first use."""

    def __init__(self, nodes: Mapping[str, Any], report: Any) -> None:
        licences = report.licences if report is not None else {}
        failing = _failing_rules(report.results) if report is not None else {}
        self.tick = report.tick if report is not None else None
        self.rows = [_row(n, licences.get(n.id), failing.get(n.id, [])) for n in nodes.values()]
        self.by_id = {r.id: r for r in self.rows}

    def query(self, selector: Selector, problem: str | None = None, search: str | None = None,
              sort: str = "problems", limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of the rows that match, sorted: ``count`` matching, ``total`` in the fleet.

        :raises ValueError: for a sort key not in ``SORT_KEYS``.
        """
        reverse = sort.startswith("-")
        key = sort.lstrip("-")
        if key not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)} (a leading '-' reverses), not {sort!r}")
        rows = self.rows
        if selector:
            rows = [r for r in rows if selector.matches(r.labels)]
        if problem:
            rows = [r for r in rows if _matches_problem(r, problem)]
        if search:
            needle = search.lower()
            rows = [r for r in rows if needle in r.text]
        rows = _sorted(rows, key, reverse)
        limit = max(0, min(limit, MAX_PAGE))
        offset = max(0, offset)
        return {"tick": self.tick, "total": len(self.rows), "count": len(rows), "offset": offset, "limit": limit,
                "sort": sort, "nodes": [r.to_dict() for r in rows[offset:offset + limit]]}

    def summary(self) -> dict[str, Any]:
        """Counts by status, zone and tier (each with its statuses and problems), and
        nodes per problem, most frequent first (the 50 most)."""
        def group(attr: str) -> list[dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for r in self.rows:
                g = out.setdefault(getattr(r, attr) or "-", {"nodes": 0, "with_problems": 0, "isolated": 0,
                                                             "statuses": Counter()})
                g["nodes"] += 1
                g["with_problems"] += bool(r.problems)
                g["isolated"] += r.isolated
                g["statuses"][r.status] += 1
            return [{"name": k, **{**v, "statuses": dict(v["statuses"])}}
                    for k, v in sorted(out.items(), key=lambda kv: (-kv[1]["with_problems"], kv[0]))]

        problems = Counter(p for r in self.rows for p in r.problems)
        return {"tick": self.tick, "nodes": len(self.rows), "statuses": dict(Counter(r.status for r in self.rows)),
                "with_problems": sum(1 for r in self.rows if r.problems),
                "by_zone": group("zone"), "by_tier": group("tier"),
                "problems": [{"problem": p, "nodes": n} for p, n in problems.most_common(50)]}


def history(summaries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The last ticks, oldest first, as the dashboard charts them: nodes per status,
    actions decided, rules failing (on at least one node) and nodes failing rules."""
    out = []
    for s in summaries:
        summary = s.get("summary") if isinstance(s.get("summary"), Mapping) else s
        rules = summary.get("rule_summary") or {}
        out.append({"tick": s.get("tick"), "started_at": s.get("started_at"),
                    "duration_ms": s.get("duration_ms"),
                    "statuses": dict(summary.get("status_counts") or {}),
                    "actions": len(summary.get("actions") or ()),
                    "failing_rules": sum(1 for c in rules.values() if (c or {}).get("failed")),
                    "failing_results": sum((c or {}).get("failed", 0) for c in rules.values())})
    out.sort(key=lambda h: h["tick"] or 0)
    return out


def neighbourhood(graph: Any, node_id: str, depth: int = 1, limit: int = 200) -> dict[str, Any] | None:
    """The vertices within ``depth`` hops of ``node_id`` (breadth first, at most
    ``limit``) and the edges between them; None when the node is not in the mesh."""
    if node_id not in graph:
        return None
    seen = {node_id: 0}
    frontier = [node_id]
    truncated = False
    for hop in range(1, max(1, depth) + 1):
        nxt = []
        for v in frontier:
            for w in sorted(graph.neighbors(v), key=str):
                if w in seen:
                    continue
                if len(seen) >= limit:
                    truncated = True
                    break
                seen[w] = hop
                nxt.append(w)
        frontier = nxt
    edges = [[a, b] for a, b in graph.subgraph(seen).edges]
    return {"center": node_id, "depth": depth, "hops": seen, "edges": edges, "truncated": truncated}
