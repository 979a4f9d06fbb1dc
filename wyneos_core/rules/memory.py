"""Rule states as documents a state store keeps, so a restart never restarts a ``for:``.

``documents(runner)`` gives one document per ruleset, ``{"rules/<ruleset>": {rule id:
{node: [state, active tick, active at, cleared tick, cleared at]}}}`` (the shape the etcd
replicas carry over, ``wyneos_core.ha.carry``); ``restore(runner, docs)`` puts them back
into the runner's trackers. ``RuleMemory`` hands a store only the documents that changed
since it last wrote them.

The documents come back from a file that may be damaged or edited: every row is checked
(a known state, numbers where numbers belong) and a bad one is skipped, never trusted.
"""

from __future__ import annotations

import json
import math
from typing import Any

from wyneos_core.rules.state import FIRING, PENDING, RESOLVED, RuleState

__all__ = ["PREFIX", "RuleMemory", "documents", "restore"]

#: documents of rule states are named ``PREFIX + ruleset name``
PREFIX = "rules/"

_STATES = frozenset({PENDING, FIRING, RESOLVED})


def documents(runner: Any) -> dict[str, dict[str, Any]]:
    """``{"rules/<ruleset>": {rule id: {node: row}}}`` of every loaded ruleset."""
    if runner is None:
        return {}
    return {
        PREFIX + loaded.ruleset.name: {
            rule_id: {node: [s.state, s.active_tick, s.active_at, s.cleared_tick, s.cleared_at]
                      for node, s in tracker.states.items()}
            for rule_id, tracker in loaded.trackers.items()}
        for loaded in runner.loaded.values()}


def _number(value: Any, optional: bool) -> bool:
    if value is None:
        return optional
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row(row: Any) -> RuleState | None:
    """A stored row as a ``RuleState``, or None when it is not one."""
    if not (isinstance(row, list) and len(row) == 5 and row[0] in _STATES):
        return None
    state, active_tick, active_at, cleared_tick, cleared_at = row
    if not (_number(active_tick, False) and _number(active_at, False)
            and _number(cleared_tick, True) and _number(cleared_at, True)):
        return None
    return RuleState(state, int(active_tick), float(active_at),
                     None if cleared_tick is None else int(cleared_tick),
                     None if cleared_at is None else float(cleared_at))


def restore(runner: Any, docs: dict[str, Any]) -> list[str]:
    """Put the rule states of ``docs`` back into ``runner``'s trackers.

    Rules no longer in their ruleset and rows that are not states are skipped.

    :return: the names of the rulesets whose states were restored.
    """
    if runner is None:
        return []
    by_name = {loaded.ruleset.name: loaded for loaded in runner.loaded.values()}
    done = []
    for name, doc in docs.items():
        loaded = by_name.get(name[len(PREFIX):]) if name.startswith(PREFIX) else None
        if loaded is None or not isinstance(doc, dict):
            continue
        for rule_id, rows in doc.items():
            tracker = loaded.trackers.get(rule_id)
            if tracker is None or not isinstance(rows, dict):
                continue
            states = {node: _row(row) for node, row in rows.items() if isinstance(node, str)}
            tracker.states = {node: st for node, st in states.items() if st is not None}
        done.append(name)
    return done


class RuleMemory:
    """What a store writes of the rule states with each tick: the documents that changed."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._written: dict[str, str] = {}

    def remember(self, docs: dict[str, Any]) -> None:
        """Note ``docs`` as already stored (just restored from the store)."""
        for name, doc in docs.items():
            self._written[name] = json.dumps(doc, sort_keys=True)

    def __call__(self) -> dict[str, Any]:
        """The documents that changed since the last call (call it inside the tick's write)."""
        changed = {}
        for name, doc in documents(self.runner).items():
            text = json.dumps(doc, sort_keys=True)
            if self._written.get(name) != text:
                changed[name] = doc
                self._written[name] = text
        return changed

    def forget(self) -> None:
        """Forget what was written (a write failed: write everything next time)."""
        self._written.clear()
