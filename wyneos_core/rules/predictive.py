"""Rules that act on predictions are careful (docs/prediction.md, "Acting on predictions").

A rule is *predictive* when its condition calls ``forecast``, ``time_to``, ``anomaly`` or
``trend``. Such a rule:

* warns by default: its actions take the mode ``warn`` unless the rule names its own
  ``mode`` or the config's ``enforcement.rules`` does (a ruleset in ``audit`` keeps it in
  audit: the milder wins; ``wyneos_core.enforcement.modes``);
* never isolates on a prediction alone: a rule with an ``isolate`` action is refused
  when it loads unless every way its condition can be true also needs an observed fact
  (a condition without prediction helpers, joined with ``and``): ``anomaly(...) > 0.9
  and node.status == "stale"`` may isolate, ``forecast(...) > 0.95`` may not.

The flap guard against benign periodic bursts (a 03:00 cron job) lives in the
detectors' anomaly score and in the rule's ``for:``; see docs/prediction.md.
"""

from __future__ import annotations

from typing import Final

from wyneos_core.rules.helpers import PREDICTIVE
from wyneos_core.rules.ir import BoolOp, Call, Const, Expr, walk

__all__ = ["NEVER_ALONE", "alone_reason", "is_predictive", "uses_prediction"]

#: action types a prediction alone may never cause
NEVER_ALONE: Final = frozenset({"isolate"})


def uses_prediction(expr: Expr) -> bool:
    """Whether ``expr`` calls a prediction helper anywhere."""
    return any(type(e) is Call and e.name in PREDICTIVE for e in walk(expr))


is_predictive = uses_prediction


def _backed(expr: Expr) -> bool:
    """Whether every way ``expr`` can be true needs an observed fact besides predictions."""
    if not uses_prediction(expr):
        return type(expr) is not Const
    if type(expr) is BoolOp:
        if expr.op == "and":
            return any(_backed(item) for item in expr.items)
        return all(_backed(item) for item in expr.items)
    return False  # a prediction, or a negation or comparison involving one


def alone_reason(condition: Expr, action_types: list[str]) -> str | None:
    """Why a rule acting with ``action_types`` on ``condition`` is refused (None: it is not)."""
    severe = sorted(set(action_types) & NEVER_ALONE)
    if not severe or not uses_prediction(condition) or _backed(condition):
        return None
    return (f"{severe[0]} on a prediction alone is refused: join the prediction with an observed fact "
            f"(e.g. ... and node.status == \"stale\"), or act with a milder action (degrade, reduce_load)")


