"""The enforcement gate: what of the proposed actions reaches the decide step's checks.

Called once per tick by the decide step with the de-duplicated proposals, in this order:

1. operator overrides (``overrides``): their actions join the proposals; the rules'
   actions an override stands against are held (``held_by_override``);
2. modes (``modes``): a finding in ``warn`` is alerted and reported, one in ``audit``
   only recorded; neither acts;
3. exceptions (``exceptions``): an action an unexpired exception covers is held
   (``excepted``, naming it); an exception that expired is reported once;
4. disruption budgets (``budgets``): a new severe action over budget is held
   (``held_by_budget``, naming the budget) and released in order when room returns.

Each hold is a lifecycle event the first tick it holds (and again when its kind
changes); the tick report's ``enforcement`` section lists them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from wyneos_core.enforcement import exceptions as _exceptions
from wyneos_core.enforcement import overrides as _overrides
from wyneos_core.enforcement.budgets import BudgetBook
from wyneos_core.enforcement.check import UNKEYED
from wyneos_core.enforcement.exceptions import PolicyException
from wyneos_core.enforcement.modes import AUDIT, ENFORCE, WARN, ModeSettings

__all__ = ["HOLDS", "Gate", "REPORT_LIMIT", "gate_of"]

#: the lifecycle states of the gate's holds
HOLDS = ("held_by_override", "warned", "audited", "excepted", "held_by_budget")
#: most entries of each list in the report's ``enforcement`` section
REPORT_LIMIT = 200
_ISOLATING = frozenset({"isolate"})


def _licence_keyed(config: Any) -> bool:
    """Whether the licence section names a trusted key (the demo makes and names its own)."""
    return bool(config["licence"]["trusted_keys"])


class Gate:
    """What the gate remembers across ticks (one per orchestrator)."""

    def __init__(self, config: Any, store: Any) -> None:
        section = config["enforcement"]
        self.modes = ModeSettings.from_config(section, _licence_keyed(config))
        self.budgets = BudgetBook.from_config(section)
        self.config_exceptions = _exceptions.configured(section)
        self.store = store
        #: action id -> kind of hold last reported (a hold is reported when it starts or changes)
        self.reported: dict[str, str] = {}
        self.expired_seen: set[str] = set()
        self._startup: list[Any] | None = None
        #: per action id of this tick: mode, setting, exception, budget, override (the decision log reads it)
        self.notes: dict[str, dict[str, Any]] = {}

    # -- inputs ------------------------------------------------------------------------------

    def exceptions(self) -> list[PolicyException]:
        return [*self.config_exceptions, *_exceptions.stored(self.store)]

    def overrides(self) -> dict[str, _overrides.Override]:
        return _overrides.stored(self.store)

    def learn_rulesets(self, rulesets: list[Any]) -> None:
        if self._startup is None:
            self._startup = list(rulesets)  # kept: their ids stay theirs
        known = {id(r) for r in self._startup}
        self.modes.learn(rulesets, [r for r in rulesets if id(r) not in known])

    # -- the tick ----------------------------------------------------------------------------

    def screen(self, ctx: Any, unique: dict[str, Any], in_force: Mapping[str, Any],
               event: Callable[..., None]) -> dict[str, Any]:
        """The proposals that go on to the decide step's own checks (operator actions added)."""
        now, tick, registry = ctx.now, ctx.tick, ctx.registry
        self.notes = {}
        section: dict[str, Any] = {"licence_enforced": self.modes.licence_keyed, "modes": {}, "findings": [],
                                   "held_by_budget": [], "excepted": [], "held_by_override": [],
                                   "overrides": [], "exceptions_expired": []}
        if not self.modes.licence_keyed and self.modes.licence is None and ctx.report.licences \
                and UNKEYED not in ctx.report.notes:
            ctx.note(UNKEYED)
        held_now: dict[str, str] = {}

        def hold(action: Any, kind: str, detail: str, **extra: Any) -> None:
            held_now[action.id] = kind
            if self.reported.get(action.id) != kind:
                self.reported[action.id] = kind
                event(ctx, action, kind, detail, **extra)

        # 1 overrides
        overrides = self.overrides()
        out: dict[str, Any] = {}
        for node_id, ov in overrides.items():
            action = ov.action()
            out[action.id] = action
            self.notes[action.id] = {"mode": ENFORCE, "setting": "operator override", "override": ov.to_dict()}
            if len(section["overrides"]) < REPORT_LIMIT:
                section["overrides"].append(ov.to_dict())
            if ov.kind == "reinstate":
                for action_id, kept in list(in_force.items()):
                    a = kept.action
                    if a.target == node_id and a.origin != _overrides.OPERATOR and \
                            a.type in self.budgets.severe | _ISOLATING:
                        del in_force[action_id]  # type: ignore[attr-defined]
                        event(ctx, a, "cleared", f"lifted by operator {ov.by}: {ov.reason}")
        exceptions = self.exceptions()
        active = []
        for e in exceptions:
            if e.expired(now):
                if e.id not in self.expired_seen:
                    self.expired_seen.add(e.id)
                    ctx.note(f"exception {e.id} (owner {e.owner}) expired: it no longer holds actions back")
                section["exceptions_expired"].append({"id": e.id, "owner": e.owner, "expires": e.expires})
            else:
                active.append(e)
        section["exceptions_expired"] = section["exceptions_expired"][:REPORT_LIMIT]
        modes = Counter()
        passed: list[Any] = []
        for action in unique.values():
            if action.origin == _overrides.OPERATOR:
                continue  # only the overrides standing now carry operator actions
            ov = overrides.get(action.target)
            if ov is not None and self._overridden(ov, action):
                hold(action, "held_by_override", f"operator {ov.kind} by {ov.by}: {ov.reason}", by=ov.by)
                self.notes[action.id] = {"mode": ENFORCE, "setting": "operator override", "override": ov.to_dict()}
                _listed(section["held_by_override"], action, by=ov.by, kind=ov.kind)
                continue
            mode, setting = self.modes.mode_of(action.type, action.origin, action.params)
            modes[mode] += 1
            note = self.notes[action.id] = {"mode": mode, "setting": setting}
            if mode != ENFORCE:
                _listed(section["findings"], action, mode=mode, setting=setting)
                if mode == WARN:
                    hold(action, "warned", f"mode warn ({setting}): alerted, not acted on", mode=mode)
                else:
                    hold(action, "audited", f"mode audit ({setting}): recorded only", mode=mode)
                continue
            exc = None
            if active:  # the node is read only when an exception may cover it
                node = registry.get(action.target)
                exc = next((e for e in active if e.covers(action, node)), None)
            if exc is not None:
                note["exception"] = exc.id
                hold(action, "excepted", f"exception {exc.id} (owner {exc.owner}, until "
                     f"{exc.to_dict()['expires_at']}): {exc.reason}", exception=exc.id)
                _listed(section["excepted"], action, exception=exc.id, owner=exc.owner)
                continue
            passed.append(action)
        # 4 budgets: new severe actions on nodes not disrupted yet
        severe = self.budgets.severe
        disrupted = {k.action.target for k in in_force.values() if k.action.type in severe}
        fresh = [a for a in passed if a.type in severe and a.id not in in_force and a.target not in disrupted]
        admitted, over = self.budgets.admit(tick, now, fresh, registry, disrupted)
        for action in passed:
            why = over.get(action.id)
            if why is not None:
                budget = why.split(":", 1)[0]
                self.notes[action.id]["budget"] = budget
                hold(action, "held_by_budget", why, budget=budget)
                _listed(section["held_by_budget"], action, budget=budget, why=why)
                continue
            if action.id in self.reported and action.id not in held_now:
                self.reported.pop(action.id, None)
            out[action.id] = action
        if over:
            ctx.note(f"disruption budget: {len(over)} severe action(s) held (held_by_budget); released in order "
                     "as room returns")
        if modes[WARN]:
            ctx.note(f"warn: {modes[WARN]} finding(s) in mode warn, alerted and not acted on")
        for action_id in [a for a in self.reported if a not in unique and a not in held_now]:
            del self.reported[action_id]
        section["modes"] = {m: modes.get(m, 0) for m in (ENFORCE, WARN, AUDIT)}
        ctx.report.enforcement.update(section)
        return out

    @staticmethod
    def _overridden(ov: _overrides.Override, action: Any) -> bool:
        if ov.kind == "isolate":
            return action.type in ("reinstate", "isolate")  # the operator's isolation is the one in force
        return action.type in ("isolate", "quarantine")


def _listed(items: list[dict[str, Any]], action: Any, **extra: Any) -> None:
    if len(items) < REPORT_LIMIT:
        items.append({"action_id": action.id, "type": action.type, "target": action.target,
                      "origin": action.origin, **extra})


def gate_of(orchestrator: Any) -> Gate:
    """The gate of ``orchestrator`` (made the first time)."""
    gate = getattr(orchestrator, "_enforcement_gate", None)
    if gate is None:
        gate = Gate(orchestrator.config, orchestrator.store)
        orchestrator._enforcement_gate = gate
    return gate
