"""Asking the licence sources for some nodes' records, in order, within their deadline.

``ask_sources`` asks each source (``lookup_many`` when it has one, else ``lookup`` per
node, bounded by ``call_within``) for the nodes no earlier source answered for. Any
failure of a source is an outage for its nodes, never a crash: a source whose call
failed is written in ``down`` and not asked again for later chunks of the same tick
(its failure holds for their nodes too).
"""

from __future__ import annotations

import operator
from typing import Any

from wyneos_core.licensing.sources import LicenceRecord, SourceUnavailable, call_within
from wyneos_core.model import Node

__all__ = ["ask_sources"]

_ID = operator.attrgetter("id")


def ask_sources(sources: list[Any], views: list[Node], now: float, timeout: float, down: dict[int, str],
                notes: list[str]) -> tuple[dict[str, LicenceRecord | None], dict[str, list[str]]]:
    """Ask ``sources``, in order, for the nodes ``views`` (each source only for the nodes
    no earlier one answered for): ``(records, failures)`` by node id."""
    pending = views
    records: dict[str, LicenceRecord | None] = {}
    failures: dict[str, list[str]] = {}
    for number, source in enumerate(sources):
        if not pending:
            break
        answers = _ask(source, pending, now, timeout, failures, down, number, notes)
        if not records and len(answers) >= len(pending) and all(map(answers.get, map(_ID, pending))):
            return answers, failures  # the usual case: one source answers for every node
        still = []
        for node in pending:
            record = answers.get(node.id)
            if record is None:
                still.append(node)
            else:
                records[node.id] = record
        pending = still
    return records, failures


def _ask(source: Any, pending: list[Node], now: float, timeout: float, failures: dict[str, list[str]],
         down: dict[int, str], number: int, notes: list[str]) -> dict:
    """``source``'s answers for ``pending``; a source that failed earlier in this tick
    (``down``, by its ``number``) is not asked again: its failure holds for them too."""
    failed = down.get(number)
    if failed is not None:
        for node in pending:
            failures.setdefault(node.id, []).append(f"{source.name}: {failed}")
        return {}
    many = getattr(source, "lookup_many", None)
    try:
        if many is not None:
            answers = call_within(source, timeout, many, pending, now)
            if not isinstance(answers, dict):
                raise SourceUnavailable(f"lookup_many returned {type(answers).__name__}, expected a dict")
        else:
            failures_of: dict[str, str] = {}
            answers = call_within(source, timeout, _lookup_each, source, pending, now, failures_of)
            for nid, why in failures_of.items():
                failures.setdefault(nid, []).append(f"{source.name}: {why}")
    except Exception as exc:  # noqa: BLE001 - any failure of a source is an outage for its nodes
        what = str(exc) if isinstance(exc, SourceUnavailable) else f"{type(exc).__name__}: {exc}"
        notes.append(f"licence source {source.name!r} unavailable: {what}")
        down[number] = what
        for node in pending:
            failures.setdefault(node.id, []).append(f"{source.name}: {what}")
        return {}
    for node in pending:
        if node.id not in answers and node.id not in failures:
            failures.setdefault(node.id, []).append(f"{source.name}: no answer for this node")
    bad = [nid for nid, rec in answers.items() if rec is not None and not isinstance(rec, LicenceRecord)]
    for nid in bad:
        failures.setdefault(nid, []).append(f"{source.name}: returned {type(answers[nid]).__name__}, "
                                            "not a LicenceRecord")
        answers[nid] = None
    return answers


def _lookup_each(source: Any, nodes: list[Node], now: float, failures: dict[str, str]) -> dict[str, Any]:
    """``source.lookup`` for each node (a source without ``lookup_many``), in one call
    that ``call_within`` can bound."""
    answers: dict[str, Any] = {}
    for node in nodes:
        try:
            answers[node.id] = source.lookup(node, now)
        except SourceUnavailable as exc:
            failures[node.id] = str(exc)
    return answers
