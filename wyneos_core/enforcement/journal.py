"""After the decide step: the shadow rulesets' difference and the tick's decision records.

``record`` runs once per tick at the end of the decide step. It evaluates the candidate
rulesets (``shadow``) on the tick's inputs, puts their difference in the report's
``enforcement.shadow``, and writes the tick's decision records to the decision log and
the ``wyneos_decision_log`` hook (``decision_log``).
"""

from __future__ import annotations

import weakref
from typing import Any

from wyneos_core.enforcement import shadow as _shadow
from wyneos_core.enforcement.decision_log import SCHEMA, DecisionLog, digest, digest_chunks
from wyneos_core.enforcement.gate import Gate
from wyneos_core.model import PluginError

__all__ = ["Journal", "journal_of", "live_evaluation"]

#: lifecycle states that are not decisions of their own (the proposal precedes its decision)
_NOT_DECISIONS = frozenset({"proposed"})


class Journal:
    """The candidate rulesets' runner and the decision log of one orchestrator."""

    def __init__(self, config: Any) -> None:
        from wyneos_core.rules.runtime import RulesetRunner

        rs = config["rulesets"]
        self.candidates = None
        if rs.get("candidates"):
            self.candidates = RulesetRunner(rs["candidates"], base_dir=config.base_dir,
                                            default_engine=rs.get("engine", "native"),
                                            durable_timeout=float(rs.get("durable_timeout", 60.0)),
                                            reload=bool(rs.get("reload", True)))
        section = config["enforcement"]["decision_log"]
        self.log = None
        self.log_inputs = bool(section["inputs"])
        if section["path"]:
            self.log = DecisionLog(config.resolve(section["path"]), section["max_bytes"], section["keep"])

    def close(self) -> None:
        if self.candidates is not None:
            self.candidates.close()

    def shadow(self, ctx: Any) -> None:
        if self.candidates is None:
            return
        report = ctx.report
        try:
            self.candidates.check_reload(report.notes, report.errors, [])
            nodes = list(ctx.registry)
            cand = _shadow.evaluate(self.candidates, nodes, report.licences, ctx.tick, ctx.now)
            names = [r.name for r in self.candidates.rulesets()]
            result = _shadow.diff(live_evaluation(report), cand, names)
        except Exception as exc:  # noqa: BLE001 - a candidate never takes the tick down
            report.errors.append(PluginError("decide", "shadow", f"candidate rulesets: {type(exc).__name__}: {exc}",
                                             kind="invalid_ruleset"))
            return
        result["candidates"] = names
        report.enforcement["shadow"] = result
        t = result["totals"]
        if any(t.values()):
            ctx.note(f"shadow: candidates {', '.join(names)} would newly fail {t['newly_failing']} and pass "
                     f"{t['newly_passing']} (rule, node) pair(s), add {t['actions_added']} and remove "
                     f"{t['actions_removed']} action(s)")

    def records(self, ctx: Any, gate: Gate, decided: list[Any]) -> list[dict[str, Any]]:
        report = ctx.report
        if self.log_inputs:
            inputs = {"nodes": [n.to_dict() for n in report.nodes],
                      "licences": [r.to_dict() for r in report.licences.values()]}
            d = digest(inputs)
        else:  # the same digest, the rows made and digested a chunk at a time (none of them logged)
            d = digest_chunks({"nodes": (n.to_dict() for n in report.nodes),
                               "licences": (r.to_dict() for r in report.licences.values())})
        term = getattr(getattr(ctx.store, "fence", None), "token", None)
        base = {"schema": SCHEMA, "tick": ctx.tick, "time": round(ctx.now, 3), "term": term}
        proposed = sorted({(a.type, a.target, a.origin) for a in report.proposed})
        failing, _ = live_evaluation(report)
        head = {**base, "kind": "inputs", "digest": d, "proposed": [list(p) for p in proposed],
                "failing": {rule: sorted(nodes) for rule, nodes in sorted(failing.items())}}
        if self.log_inputs:
            head.update(inputs)
        out = [head]
        actions = {a.id: a for a in report.proposed}
        actions.update((a.id, a) for a in decided)
        for entry in report.lifecycle:
            if entry["state"] in _NOT_DECISIONS:
                continue
            action = actions.get(entry["action_id"])
            note = gate.notes.get(entry["action_id"], {})
            rec = {**base, "kind": "decision", "inputs": d, **{k: v for k, v in entry.items()}}
            if action is not None:
                rec["origin"], rec["reason"], rec["params"] = action.origin, action.reason, action.params
            for key in ("mode", "setting", "budget", "exception", "override"):
                if key in note:
                    rec[key] = note[key]
            if entry["state"] == "approved" and entry.get("witnesses") is not None:
                rec["consensus"] = entry.get("detail", "").split(":", 1)[0]
            out.append(rec)
        return out

    def record(self, ctx: Any, gate: Gate, decided: list[Any]) -> None:
        """Budget tokens of actions not approved given back; the shadow difference into the
        report; the decision records out."""
        gate.budgets.settle({a.id for a in decided})
        self.shadow(ctx)
        self.write(ctx, gate, decided)

    def write(self, ctx: Any, gate: Gate, decided: list[Any]) -> None:
        hook = ctx.orchestrator.pm.hook.wyneos_decision_log
        if self.log is None and not hook.get_hookimpls():
            return
        records = self.records(ctx, gate, decided)
        if self.log is not None:
            try:
                self.log.write(records)
            except OSError as exc:
                ctx.report.errors.append(PluginError("decide", "decision_log", f"{self.log.path}: {exc}",
                                                     kind="io_error"))
        if hook.get_hookimpls():
            ctx.orchestrator.pm.call_each("wyneos_decision_log", ctx.report.errors, records=records)


def live_evaluation(report: Any) -> _shadow.Evaluation:
    """What the live rulesets gave this tick, in the form ``shadow.evaluate`` gives."""
    failing: dict[str, set[str]] = {}
    for r in report.results:
        if not r.passed and r.state in (None, "firing"):
            failing.setdefault(f"{r.source}/{r.rule_id}", set()).add(r.node_id)
    actions = {(a.origin.removeprefix("ruleset:"), a.type, a.target) for a in report.proposed
               if a.origin.startswith("ruleset:")}
    return failing, actions


def journal_of(orchestrator: Any) -> Journal:
    journal = getattr(orchestrator, "_enforcement_journal", None)
    if journal is None:
        journal = Journal(orchestrator.config)
        orchestrator._enforcement_journal = journal
        if journal.candidates is not None:  # a durable engine's worker ends with its orchestrator
            weakref.finalize(orchestrator, journal.close)
    return journal
