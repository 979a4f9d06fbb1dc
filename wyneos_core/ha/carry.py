"""What a new leader carries over besides decisions: rule states and the licence ledger.

Rule states (pending since tick N, firing, keep firing until ...) live in each
ruleset's ``StateTracker``; the licence ledger (newest issue seen per licence, the
revocation list accepted last: what refuses a rolled-back licence or revocation list)
lives in the licence engine. Both are in the leader's memory; without them a failover
would restart every ``for: 3 ticks`` count and forget which revocation list is the
newest. The leader writes them in its tick's own fenced transaction (only those that
changed), and a replica taking over puts them back before its first tick.

Keys: ``carry/rules/<ruleset>`` (``{rule id: {node: [state, active tick, active at,
cleared tick, cleared at]}}``) and ``carry/licence-ledger``.

``carry/view`` is what followers show besides registrations and decisions: the last
committed tick's licence results per node, rule summary and trust summary (written
when they change), so a follower's ``/metrics`` and ``/v1/nodes`` tell the committed
truth (licence, trust) instead of nothing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from wyneos_core.rules import memory

__all__ = ["Carried"]


def _runner(orchestrator: Any) -> Any:
    from wyneos_core.builtin.rulesets import runner_of

    return runner_of(orchestrator.pm)


class Carried:
    """The carried-over state of one orchestrator, and what was last written of it."""

    def __init__(self, orchestrator: Any) -> None:
        self.orchestrator = orchestrator
        self._written: dict[str, str] = {}
        #: the report of the tick being written (set by the replica's report tap)
        self.report: Any = None

    def collect(self) -> dict[str, Any]:
        """``{name: document}`` of what changed since the last ``collect`` (call it while
        writing the tick; ``forget`` after a write that may have failed)."""
        docs: dict[str, Any] = dict(memory.documents(_runner(self.orchestrator)))  # rule states
        engine = getattr(self.orchestrator, "_licence_engine", None)
        if engine is not None:
            ledger = engine.ledger
            docs["licence-ledger"] = {"newest_issue": ledger.newest, "revocation_version": ledger.revocation_version,
                                      "revocation_list": ledger.revocation_document,
                                      "revocation_new": ledger.revocation_new}
        report = self.report
        if report is not None:
            docs["view"] = {"licences": {n: dataclasses.asdict(r) for n, r in report.licences.items()},
                            "rule_summary": report.rule_summary, "trust": report.trust}
        changed = {}
        for name, doc in docs.items():
            text = json.dumps(doc, sort_keys=True, default=str)
            if self._written.get(name) != text:
                changed[name] = doc
                self._written[name] = text
        return changed

    def forget(self) -> None:
        self._written.clear()

    def restore(self, docs: dict[str, Any]) -> list[str]:
        """Put carried state back (a replica taking over); the names restored."""
        # rule states: every row checked as it is read back (rules no longer in a file skipped)
        done = memory.restore(_runner(self.orchestrator),
                              {n: d for n, d in docs.items() if n.startswith(memory.PREFIX)})
        for name, doc in docs.items():
            if name == "licence-ledger" and isinstance(doc, dict):
                engine = getattr(self.orchestrator, "_licence_engine", None)
                if engine is None:
                    continue
                ledger = engine.ledger
                for lid, issued in dict(doc.get("newest_issue") or {}).items():
                    if issued > ledger.newest.get(lid, float("-inf")):
                        ledger.newest[lid] = float(issued)
                version = int(doc.get("revocation_version") or 0)
                if version > ledger.revocation_version:
                    ledger.accept_revocations(version, doc.get("revocation_list"), list(doc.get("revocation_new") or []))
                ledger.dirty = True
                done.append(name)
        return done
