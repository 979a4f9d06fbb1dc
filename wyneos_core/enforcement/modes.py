"""Modes: whether a finding acts (``enforce``), alerts (``warn``) or is only recorded (``audit``).

As Gatekeeper's ``enforcementAction`` (deny / warn / dryrun) and Kyverno's
Enforce / Audit. A finding is an action a step proposed. Its mode is the most specific
one set, first match wins:

1. the rule (``enforcement.rules`` in the config, then the rule's own ``mode:``; a rule
   that calls a prediction helper is ``warn`` when neither names a mode, or the
   ruleset's mode if that is milder: ``wyneos_core.rules.predictive``);
2. the ruleset (``enforcement.rulesets``, then the file's ``mode:``; a ruleset that hot
   reload added or changed takes its ``reload_mode:`` instead, until a restart);
3. the action type (``enforcement.actions``);
4. the licence step, for actions a licence result caused (``enforcement.licence``);
5. ``enforcement.mode`` (``enforce`` by default).

Whatever that gives, an action caused by a missing or unverifiable licence (``no_licence``,
``unknown_key``) is at most ``audit`` while the licence section names no trusted key:
with nothing to verify against, no node can show a licence, so none is punished for it
(``licence_unkeyed``), unless ``enforcement.licence`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["AUDIT", "ENFORCE", "MODES", "WARN", "ModeSettings", "mildest", "rule_of"]

ENFORCE: Final = "enforce"
WARN: Final = "warn"
AUDIT: Final = "audit"
#: from the mildest to the strictest
MODES: Final = (AUDIT, WARN, ENFORCE)

_RULESET_ORIGIN = "ruleset:"
#: licence reasons that, with no trusted key, say nothing about the node: not enforced
UNKEYED_REASONS: Final = frozenset({"no_licence", "unknown_key", "not_evaluated"})


def mildest(*modes: str) -> str:
    """The mildest of ``modes`` (audit < warn < enforce)."""
    return min(modes, key=MODES.index)


def rule_of(origin: str) -> tuple[str, str] | None:
    """``(ruleset, rule id)`` of an action's origin ``ruleset:NAME/RULE`` (None otherwise)."""
    if not origin.startswith(_RULESET_ORIGIN):
        return None
    name, _, rule = origin[len(_RULESET_ORIGIN):].partition("/")
    return (name, rule) if rule else None


@dataclass(slots=True)
class ModeSettings:
    """The ``enforcement`` section's modes, and the rulesets' own."""

    default: str = ENFORCE
    licence: str | None = None
    actions: Mapping[str, str] = field(default_factory=dict)
    rulesets: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, str] = field(default_factory=dict)
    #: False when the licence section names no trusted key (licence actions: audit at most)
    licence_keyed: bool = True
    #: ruleset name -> its file's mode; rule "ruleset/id" -> its own mode
    file_rulesets: dict[str, str] = field(default_factory=dict)
    file_rules: dict[str, str] = field(default_factory=dict)
    #: rules "ruleset/id" whose condition predicts: warn unless a mode is set for the rule
    predictive: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, section: Mapping[str, Any], licence_keyed: bool = True) -> ModeSettings:
        return cls(section["mode"], section.get("licence"), dict(section["actions"]), dict(section["rulesets"]),
                   dict(section["rules"]), licence_keyed)

    def learn(self, rulesets: Iterable[Any], reloaded: Iterable[Any] = ()) -> None:
        """Take the ``mode`` of each loaded ruleset and rule (``reload_mode`` for the
        rulesets in ``reloaded``: those hot reload added or changed)."""
        fresh = {id(r) for r in reloaded}
        self.file_rulesets.clear()
        self.file_rules.clear()
        self.predictive.clear()
        for rs in rulesets:
            mode = rs.reload_mode if id(rs) in fresh and rs.reload_mode else rs.mode
            if mode:
                self.file_rulesets[rs.name] = mode
            if id(rs) in fresh and rs.reload_mode:
                continue  # the staged ruleset as a whole, its rules too
            for rule in rs.rules:
                if rule.mode:
                    self.file_rules[f"{rs.name}/{rule.id}"] = rule.mode
                if getattr(rule, "predictive", False):
                    self.predictive.add(f"{rs.name}/{rule.id}")

    def mode_of(self, action_type: str, origin: str, params: Mapping[str, Any]) -> tuple[str, str]:
        """The mode of an action and the setting that gave it (``enforcement.rules[...]``...)."""
        mode, why = self._resolve(action_type, origin, params)
        if (not self.licence_keyed and self.licence is None and params.get("licence_reason") in UNKEYED_REASONS
                and mode != AUDIT):
            return AUDIT, "licence_unkeyed"
        return mode, why

    def _resolve(self, action_type: str, origin: str, params: Mapping[str, Any]) -> tuple[str, str]:
        named = rule_of(origin)
        if named is not None:
            ruleset, rule = named
            full = f"{ruleset}/{rule}"
            for key in (full, rule):
                if key in self.rules:
                    return self.rules[key], f"enforcement.rules[{key}]"
            if full in self.file_rules:
                return self.file_rules[full], f"rule {full} mode"
            if full in self.predictive:  # predictions warn by default; a milder ruleset mode wins
                base = self.rulesets.get(ruleset) or self.file_rulesets.get(ruleset)
                return (mildest(WARN, base) if base else WARN), f"rule {full} predicts (warn by default)"
            if ruleset in self.rulesets:
                return self.rulesets[ruleset], f"enforcement.rulesets[{ruleset}]"
            if ruleset in self.file_rulesets:
                return self.file_rulesets[ruleset], f"ruleset {ruleset} mode"
        if action_type in self.actions:
            return self.actions[action_type], f"enforcement.actions[{action_type}]"
        if self.licence is not None and "licence_reason" in params:
            return self.licence, "enforcement.licence"
        return self.default, "enforcement.mode"
