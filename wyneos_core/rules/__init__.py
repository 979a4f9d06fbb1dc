"""YAML rulesets: the expression language, its compiler, two engines, rule states.

Modules: ``expr`` (parser, ast whitelist -> IR), ``ir`` (the intermediate form and the
missing-value semantics), ``interp`` (reference interpreter, ``explain``), ``native``
and ``durable`` (the engines), ``durable_worker`` (the durable-rules process),
``state`` (pending / firing / resolved), ``template`` (messages), ``loader`` (ruleset
files), ``runtime`` (rulesets across ticks, hot reload), ``testing`` (YAML unit tests).
See docs/rulesets.md.
"""

from __future__ import annotations

from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.loader import Rule, Ruleset, RulesetError, load_ruleset
from wyneos_core.rules.runtime import RulesetRunner

__all__ = ["ExprError", "Rule", "Ruleset", "RulesetError", "RulesetRunner", "load_ruleset", "parse"]
