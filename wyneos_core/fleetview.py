"""What ``wyneos get | describe | watch`` show of a running server: each kind of object
(nodes, actions, rules, licences, exceptions, tokens), where it is read, its columns,
and the output formats (``table``, ``json``, ``yaml``).

Nodes are filtered, sorted and paged by the server (``/v1/fleet/nodes``); the other
kinds are small and filtered here with the same label selectors over their fields.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from wyneos_core.remote import Remote, RemoteError
from wyneos_core.selectors import Selector, flat_labels

__all__ = ["FORMATS", "KINDS", "Kind", "changes", "fetch", "kind_of", "render"]

FORMATS = ("table", "json", "yaml")


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: Any, digits: int = 2) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def _few(items: Any, n: int = 3) -> str:
    items = list(items or [])
    if not items:
        return "-"
    return ",".join(str(i) for i in items[:n]) + (f",+{len(items) - n}" if len(items) > n else "")


Column = tuple[str, Callable[[Mapping[str, Any]], str]]


@dataclass(frozen=True)
class Kind:
    """One kind of object: its names, how to read its rows, their name and columns."""

    name: str
    aliases: tuple[str, ...]
    path: str
    rows: Callable[[Any], list[dict[str, Any]]]
    key: Callable[[Mapping[str, Any]], str]
    columns: tuple[Column, ...]
    #: problem filter run here (nodes: on the server)
    problem: Callable[[Mapping[str, Any], str], bool] | None = None
    #: default sort, a function of the row (worst first)
    order: Callable[[Mapping[str, Any]], Any] | None = None


def _action_problem(row: Mapping[str, Any], problem: str) -> bool:
    cause = row.get("cause") or {}
    text = f"{cause.get('kind')}:{cause.get('licence_code') or cause.get('rule') or cause.get('origin')}"
    return problem in ("any", text, str(cause.get("kind")), str(cause.get("rule")), str(cause.get("licence_code")))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("nodes", ("node", "no"), "/v1/fleet/nodes", lambda a: a["nodes"], lambda r: r["id"], (
        ("NAME", lambda r: r["id"]), ("STATUS", lambda r: r["status"] + (",isolated" if r.get("isolated") else "")),
        ("LOAD", lambda r: _num(r.get("load"))), ("TIER", lambda r: r.get("tier") or "-"),
        ("ZONE", lambda r: r.get("zone") or "-"), ("LICENCE", lambda r: r.get("licence") or "-"),
        ("PROBLEMS", lambda r: _few(r.get("problems"))))),
    Kind("actions", ("action",), "/v1/actions", lambda a: a["in_force"], lambda r: r["id"], (
        ("NAME", lambda r: r["id"]), ("TYPE", lambda r: r["type"]), ("TARGET", lambda r: r["target"]),
        ("CAUSE", lambda r: (r.get("cause") or {}).get("label") or r.get("origin", "-")),
        ("SINCE", lambda r: _when(r.get("since"))), ("SEVERITY", lambda r: r.get("severity") or "-")),
        problem=_action_problem, order=lambda r: (r["target"], r["type"])),
    Kind("rules", ("rule",), "/v1/rules", lambda a: a["rules"], lambda r: r["rule"], (
        ("NAME", lambda r: r["rule"]), ("SOURCE", lambda r: r.get("source") or "-"),
        ("FAILING", lambda r: str(r["failing"])), ("FIRING", lambda r: str(r["firing"])),
        ("PASSED", lambda r: str(r["passed"])), ("EXAMPLES", lambda r: _few(r.get("examples")))),
        problem=lambda r, p: p in ("any", "failing") and r["failing"] > 0 or p == "firing" and r["firing"] > 0,
        order=lambda r: (-r["failing"], -r["firing"], r["rule"])),
    Kind("licences", ("licence", "lic"), "/v1/licences", lambda a: a["reasons"],
         lambda r: f"{r['state']}/{r['reason']}", (
             ("NAME", lambda r: f"{r['state']}/{r['reason']}"), ("NODES", lambda r: str(r["count"])),
             ("MEANING", lambda r: r.get("meaning") or "-"), ("EXAMPLES", lambda r: _few(r.get("examples")))),
         problem=lambda r, p: r["state"] == "invalid" and p in ("any", "invalid", r["reason"], f"licence:{r['reason']}"),
         order=lambda r: ({"invalid": 0, "in_grace": 1}.get(r["state"], 2), -r["count"])),
    Kind("exceptions", ("exception", "exc"), "/v1/exceptions", lambda a: a.get("exceptions", []),
         lambda r: str(r.get("id")), (
             ("NAME", lambda r: str(r.get("id"))),
             ("APPLIES TO", lambda r: r.get("node") or ",".join(f"{k}={v}" for k, v in (r.get("selector") or {}).items())
              or "all nodes"),
             ("HOLDS", lambda r: ",".join(str(r[k]) for k in ("rule", "action", "licence_reason") if r.get(k)) or "all"),
             ("EXPIRES", lambda r: _when(r.get("expires")) + (" (expired)" if r.get("expired") else "")),
             ("OWNER", lambda r: str(r.get("owner") or "-"))),
         problem=lambda r, p: p in ("any", "expired") and bool(r.get("expired")),
         order=lambda r: (bool(r.get("expired")), r.get("expires") or 0)),
    Kind("tokens", ("token",), "/v1/enrol/tokens", lambda a: a["tokens"], lambda r: r["id"], (
        ("NAME", lambda r: r["id"]), ("NODE", lambda r: r.get("node_id") or "(any)"),
        ("USES", lambda r: str(r["uses_left"])), ("EXPIRES", lambda r: _when(r.get("expires_at"))))),
)}


def kind_of(name: str) -> Kind:
    for kind in KINDS.values():
        if name == kind.name or name in kind.aliases:
            return kind
    raise RemoteError(f"unknown kind {name!r}: one of {', '.join(KINDS)}")


#: the most rows the server hands out in one page (``/v1/fleet/nodes``' own bound)
PAGE: Final = 1000


def fetch(remote: Remote, kind: Kind, selector: Selector, problem: str | None = None, search: str | None = None,
          sort: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of ``kind`` that match, in order (worst first unless ``sort`` says);
    every one of them unless ``limit`` says fewer. Nodes come a page at a time."""
    if kind.name == "nodes":
        rows: list[dict[str, Any]] = []
        while limit is None or len(rows) < limit:
            want = PAGE if limit is None else min(PAGE, limit - len(rows))
            answer = remote.get(kind.path, selector=str(selector) or None, problem=problem, q=search,
                                sort=sort or "problems", limit=want, offset=len(rows))
            page = list(answer["nodes"])
            rows.extend(page)
            if len(page) < want or len(rows) >= int(answer.get("count", 0)):
                break  # the last page (a fleet that shrank between pages ends it too)
        # a tick between two pages can move a node across their boundary: list it once
        return list({r["id"]: r for r in rows}.values())
    try:
        rows = kind.rows(remote.get(kind.path))
    except RemoteError as exc:
        if kind.name == "exceptions" and ": 404 " in str(exc):
            raise RemoteError(f"{remote.url} does not serve exceptions (an older server, or enforcement "
                              "exceptions are not configured)") from None
        raise
    rows = [r for r in rows if selector.matches(flat_labels(r))]
    if problem and kind.problem is not None:
        rows = [r for r in rows if kind.problem(r, problem)]
    if search:
        rows = [r for r in rows if search.lower() in json.dumps(r, default=str).lower()]
    if sort:
        field = sort.lstrip("-")
        rows.sort(key=lambda r: (r.get(field) is None, str(r.get(field)) if not isinstance(r.get(field), int | float)
                                 else r.get(field)), reverse=sort.startswith("-"))
    elif kind.order is not None:
        rows.sort(key=kind.order)
    return rows if limit is None else rows[:limit]


def render(kind: Kind, rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` as a table (aligned columns, a header), JSON or YAML."""
    if fmt == "json":
        return json.dumps({"kind": kind.name, "items": rows}, indent=2, default=str)
    if fmt == "yaml":
        return yaml.safe_dump({"kind": kind.name, "items": json.loads(json.dumps(rows, default=str))},
                              sort_keys=False).rstrip()
    if not rows:
        return f"No {kind.name} found."
    table = [[h for h, _ in kind.columns], *([fn(r) for _, fn in kind.columns] for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


def changes(kind: Kind, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    """One line per object added, removed or changed between two reads (by its table
    columns: what a person watches)."""
    out = []
    for key in sorted(after.keys() - before.keys()):
        out.append(f"ADDED     {kind.name[:-1]} {key}: " + _line(kind, after[key]))
    for key in sorted(before.keys() - after.keys()):
        out.append(f"REMOVED   {kind.name[:-1]} {key}")
    for key in sorted(before.keys() & after.keys()):
        old, new = (_cells(kind, before[key]), _cells(kind, after[key]))
        moved = [f"{h.lower()} {o} -> {n}" for (h, o), (_, n) in zip(old, new) if o != n and h != "NAME"]
        if moved:
            out.append(f"MODIFIED  {kind.name[:-1]} {key}: " + ", ".join(moved))
    return out


def _cells(kind: Kind, row: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(h, fn(row)) for h, fn in kind.columns]


def _line(kind: Kind, row: Mapping[str, Any]) -> str:
    return ", ".join(f"{h.lower()} {v}" for h, v in _cells(kind, row) if h != "NAME")
