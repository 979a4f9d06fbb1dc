"""Why an action was decided: the rule or licence code behind it, and what clears it.

An action carries what it needs for this: its ``origin`` (``ruleset:NAME/RULE`` for a
YAML rule, otherwise the plugin that proposed it) and, for licence enforcement, the
``licence_reason`` param; the builtin enforcement plugin also names a failing rule in
``params["rule"]``. ``action_cause`` reads them back; the tick summary, ``/metrics``,
the dashboard and ``wyneos explain`` (``wyneos_core.explain``) all say "why" through it,
so they agree.

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

__all__ = ["Cause", "action_cause", "clears_text"]

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
