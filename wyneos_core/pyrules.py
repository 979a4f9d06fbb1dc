"""Governance rules written in Python, as the Phase 11 document describes them.

A rule has an id, a human-readable description and an evaluation function returning
True (compliant) or False. ``evaluate`` runs rules against nodes and turns every outcome,
including an evaluation function that raises, into a ``RuleResult``.

>>> from wyneos_core.model import Node
>>> rule = Rule("has-region", "Nodes declare a region", lambda node, ctx: "region" in node.metadata)
>>> [r.passed for r in evaluate([rule], [Node("a", metadata={"region": "eu"}), Node("b")], None)]
[True, False]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from wyneos_core.model import Node, RuleResult, Severity

__all__ = ["Rule", "evaluate"]


@dataclass(frozen=True, slots=True)
class Rule:
    """A governance rule: ``evaluate(node, ctx)`` returns True when the node complies."""

    id: str
    description: str
    evaluate: Callable[[Node, Any], bool]
    severity: Severity = Severity.WARNING
    message: str = ""  # shown when the rule fails; defaults to the description


def evaluate(rules: Sequence[Rule], nodes: Iterable[Node], ctx: Any, source: str = "python") -> list[RuleResult]:
    """One ``RuleResult`` per (rule, node). A rule that raises fails with ``error`` set."""
    out: list[RuleResult] = []
    append = out.append
    prepared = [(r.id, r.evaluate, r.severity, r.message or r.description) for r in rules]
    for node in nodes:
        node_id = node.id
        for rule_id, fn, severity, message in prepared:
            try:
                if fn(node, ctx):
                    append(RuleResult(rule_id, node_id, True, "", severity, source))
                    continue
                error = None
            except Exception as exc:  # noqa: BLE001 - a broken rule must not stop the tick
                error = f"{type(exc).__name__}: {exc}"
            append(RuleResult(rule_id, node_id, False, message, severity, source, None, error))
    return out
