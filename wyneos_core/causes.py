"""Why an action was decided: the rule or licence code behind it, and what clears it.

An action carries what it needs for this: its ``origin`` (``ruleset:NAME/RULE`` for a
YAML rule, otherwise the plugin that proposed it) and, for licence enforcement, the
``licence_reason`` param; the builtin enforcement plugin also names a failing rule in
``params["rule"]``. ``action_cause`` reads them back; the tick summary, ``/metrics``,
the dashboard and ``wyneos explain`` all say "why" through it, so they agree.

Examples
--------
>>> from wyneos_core.model import Action
>>> c = action_cause(Action("isolate", "n1", "no licence", "ruleset:licence-enforcement/isolate-unlicensed",
...                         params={"licence_reason": "no_licence"}))
>>> c.label, c.rule, c.licence_code
('licence:no_licence', 'licence-enforcement/isolate-unlicensed', 'no_licence')
>>> action_cause(Action("reduce_load", "n1", "load 0.97", "ruleset:healing/reduce-overload")).label
'rule:healing/reduce-overload'
>>> action_cause(Action("quarantine", "n1", "old", "enforcement", params={"rule": "version-floor"})).label
'rule:version-floor'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wyneos_core.licensing.reasons import REASONS
from wyneos_core.model import Action
from wyneos_core.wording import plural

__all__ = ["Cause", "action_cause", "clears_text", "explain_actions"]

RULESET_ORIGIN = "ruleset:"


@dataclass(frozen=True, slots=True)
class Cause:
    """What an action is for.

    ``kind`` is ``licence`` (a licence reason code), ``rule`` (a failing or firing rule),
    ``probation`` (the reinstate after an isolation cleared) or ``plugin`` (a plugin's
    own decision). ``rule`` is the YAML rule that decided it (``ruleset/rule-id``);
    ``failing_rule`` the governance rule it acts on, when the action names one
    (``params["rule"]``); ``licence_code`` the licence reason code when there is one.
    """

    kind: str
    origin: str
    rule: str | None = None
    licence_code: str | None = None
    failing_rule: str | None = None

    @property
    def label(self) -> str:
        """A short, bounded label: ``licence:CODE``, ``rule:RULE``, ``probation`` or ``plugin:NAME``
        (the ``reason`` label of ``/metrics``)."""
        if self.kind == "licence":
            return f"licence:{self.licence_code}"
        if self.kind == "rule":
            return f"rule:{self.failing_rule or self.rule}"
        if self.kind == "probation":
            return "probation"
        return f"plugin:{self.origin}"

    @property
    def licence_meaning(self) -> str | None:
        """The one-line meaning of the licence code (``wyneos_core.licensing.reasons``)."""
        return REASONS.get(self.licence_code) if self.licence_code else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "origin": self.origin, "rule": self.rule,
                "failing_rule": self.failing_rule, "licence_code": self.licence_code,
                "licence_meaning": self.licence_meaning}


def action_cause(action: Action | Mapping[str, Any]) -> Cause:
    """The cause of ``action`` (an ``Action`` or its ``to_dict`` / stored row form)."""
    if isinstance(action, Action):
        origin, params, type_ = action.origin, action.params, action.type
    else:
        origin, params, type_ = str(action.get("origin", "")), action.get("params") or {}, action.get("type")
    if not isinstance(params, Mapping):
        params = {}
    code = params.get("licence_reason")
    code = code if isinstance(code, str) and code else None
    rule = origin[len(RULESET_ORIGIN):] if origin.startswith(RULESET_ORIGIN) else None
    failing = params.get("rule") if isinstance(params.get("rule"), str) and params.get("rule") else None
    if code is not None:
        return Cause("licence", origin, rule, code, failing)
    if rule is not None or failing is not None:
        return Cause("rule", origin, rule, None, failing)
    if origin == "decide" and type_ == "reinstate":
        return Cause("probation", origin)
    return Cause("plugin", origin)


def clears_text(cause: Cause, *, keep_firing_ticks: int, rule_condition: str | None = None,
                licence_now: str | None = None, isolating: bool = False, probation_ticks: int | None = None) -> str:
    """What clears an action in force with this cause, in words.

    The decide step clears an action once its cause has not proposed it for more than
    ``decide.keep_firing_ticks`` ticks; a rule may hold it longer (``keep_firing_for``).
    """
    keep = (f"for more than {plural(keep_firing_ticks, 'tick')} (decide.keep_firing_ticks)" if keep_firing_ticks
            else "(in the first tick it no longer holds: decide.keep_firing_ticks is 0)")
    if cause.kind == "licence":
        now = f" (now: {licence_now})" if licence_now else ""
        text = f"the node's licence is no longer {cause.licence_code}{now} {keep}"
    elif cause.kind == "rule":
        text = f"rule {cause.failing_rule or cause.rule} stops firing on the node"
        if rule_condition and not cause.failing_rule:
            text += f" ({rule_condition} no longer true)"
        text += f" {keep}"
    elif cause.kind == "probation":
        return "a reinstate is carried once: nothing to clear"
    else:
        text = f"plugin {cause.origin} stops proposing it {keep}"
    if isolating:
        text += "; then the node is reinstated once it has been online for its probation" + (
            f" ({plural(probation_ticks, 'tick')}, doubled for a flapping node)" if probation_ticks is not None else "")
    return "clears when " + text


def explain_actions(orchestrator: Any, node_id: str, licence: Any, events: list[dict[str, Any]],
                    proposed: Mapping[str, Mapping[str, Any]], committed: list[dict[str, Any]] | None = None,
                    tick_times: Mapping[int, float] | None = None) -> list[dict[str, Any]]:
    """Every action on ``node_id`` that is in force after the ticks ``orchestrator`` ran, or
    held back (deferred, suppressed, rejected) in them, or in force in the state file
    (``committed``, the store's rows): for each, its cause, the rule behind it, since when
    (the state file's first tick when it has the action, with the time that tick started),
    and what clears it. ``events`` are the lifecycle events of the ticks run, ``proposed``
    the actions proposed in the last one by id (what a held action was)."""
    from wyneos_core.builtin.decide import ISOLATING, state_of
    from wyneos_core.builtin.rulesets import runner_of

    settings = orchestrator.config["decide"]
    keep = settings["keep_firing_ticks"]
    rules: dict[str, Any] = {}
    runner = runner_of(orchestrator.pm)
    for loaded in (runner.loaded.values() if runner is not None else []):
        for rule in loaded.ruleset.rules:
            rules[f"{loaded.ruleset.name}/{rule.id}"] = rule
    stored = {a["id"]: a for a in committed or () if a.get("target") == node_id}
    times = tick_times or {}
    from wyneos_core.enforcement.gate import HOLDS, gate_of

    state = state_of(orchestrator)
    held_state = {**state.held, **gate_of(orchestrator).reported}
    out: list[dict[str, Any]] = []

    def one(action: Mapping[str, Any], status: str, run_first: int | None, run_last: int | None,
            pending: Mapping[str, str] | None = None, detail: str = "") -> dict[str, Any]:
        cause = action_cause(action)
        rule = rules.get(cause.rule) if cause.rule else None
        row = stored.get(action["id"])
        since_tick = row["first_tick"] if row is not None else run_first
        entry = {
            "id": action["id"], "type": action["type"], "target": action["target"],
            "severity": action.get("severity"), "origin": action["origin"], "reason": action["reason"],
            "params": action.get("params") or {}, "status": status, "detail": detail, "cause": cause.to_dict(),
            "rule_description": rule.description if rule is not None else None,
            "rule_condition": rule.source if rule is not None else None,
            "since_tick": since_tick, "since_source": "state file" if row is not None else "this run",
            "since": times.get(since_tick) if row is not None and since_tick is not None else None,
            "last_proposed_tick": run_last if run_last is not None else (row or {}).get("last_tick"),
            "pending_delivery": dict(pending or {}),
            "clears": clears_text(cause, keep_firing_ticks=keep, rule_condition=rule.source if rule else None,
                                  licence_now=getattr(licence, "reason", None),
                                  isolating=action["type"] in ISOLATING,
                                  probation_ticks=settings.get("probation_ticks")),
        }
        return entry

    for held in sorted(state.in_force.values(), key=lambda h: (h.first_tick, h.action.type)):
        if held.action.target == node_id:
            out.append(one(held.action.to_dict(), "in_force", held.first_tick, held.last_tick, held.pending))
    seen = {e["id"] for e in out}
    last_hold: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("target") == node_id and e.get("state") in ("deferred", "suppressed", "awaiting_witnesses", "rejected", *HOLDS):
            last_hold[e["action_id"]] = e
    for action_id, e in last_hold.items():
        if action_id in seen or action_id not in held_state or action_id not in proposed:
            continue  # released since, or its cause went away
        action = proposed[action_id]
        entry = one(action, e["state"], None, None, detail=e.get("detail", ""))
        entry["clears"] = None  # not in force: nothing to clear; the detail says why it waits
        entry.update({k: e[k] for k in ("mode", "exception", "budget", "by") if k in e})
        out.append(entry)
        seen.add(action_id)
    for action_id, row in stored.items():
        if action_id not in seen:
            entry = one(row, "in_force_in_state_file", None, None)
            entry["detail"] = "not proposed in the ticks of this run"
            out.append(entry)
    return out
