"""The params each builtin action type takes, checked before an action is acted on.

An action's ``params`` are free JSON data, but the builtin effects read some of them:

=================================  ================  ==========================================
action                             param             what it must be
=================================  ================  ==========================================
``reduce_load``, ``redistribute``  ``target_load``   a finite number >= 0
``reduce_load``, ``redistribute``  ``moves``         set by the orchestrator, never proposed
``gate_feature``                   ``features``      a non-empty list of feature names (``"*"``
                                                     gates every feature), or one string of
                                                     names separated by commas
``revoke``                         ``licence_id``    a non-empty string
``revoke``                         ``node``          a string
=================================  ================  ==========================================

Other params (labels such as ``licence_reason`` or ``rule``) are carried as they are.
``param_problem`` checks one param (the rules loader calls it for every ``then:`` entry
at load time); ``action_problem`` checks an action (the decide and propagate steps call
it for every action, so one bad action is reported on its own and never stops the
others). ``gated_features`` reads a checked ``features`` param.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["PARAMS", "action_problem", "gated_features", "param_problem"]

_LOAD: Final = ("reduce_load", "redistribute")

#: action type -> param name -> one-line description of what it must be
PARAMS: Final[dict[str, dict[str, str]]] = {
    "reduce_load": {"target_load": "a number >= 0", "moves": "set by the orchestrator"},
    "redistribute": {"target_load": "a number >= 0", "moves": "set by the orchestrator"},
    "gate_feature": {"features": "a list of feature names, or one string of names separated by commas"},
    "revoke": {"licence_id": "a non-empty string", "node": "a string"},
}


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number >= 0, got {value!r:.40}"
    if not math.isfinite(value) or value < 0:
        return f"must be a finite number >= 0, got {value!r:.40}"
    return None


def _features(value: Any) -> str | None:
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
        if not all(names):
            return f"must name features separated by commas, got {value!r:.60}"
        return None
    if not isinstance(value, list) or not value:
        return f"must be a non-empty list of feature names (or '*' for all), got {value!r:.40}"
    for item in value:
        if not isinstance(item, str) or not item.strip():
            return f"must hold feature names (non-empty strings), got {item!r:.40}"
    return None


def param_problem(action_type: str, name: str, value: Any, *, templated: bool = False) -> str | None:
    """What is wrong with param ``name`` = ``value`` of an ``action_type`` action, or None.

    :param templated: the value is a message template (it renders to a string when the
        action is made): only params that may be strings can be templates.
    """
    if action_type in _LOAD:
        if name == "moves":
            return "is set by the orchestrator (the load plan), not by whoever proposes the action"
        if name == "target_load":
            if templated:
                return "must be a number >= 0; a template renders text"
            return _number(value)
    elif action_type == "gate_feature" and name == "features":
        return None if templated else _features(value)
    elif action_type == "revoke":
        if name == "licence_id" and not templated and (not isinstance(value, str) or not value):
            return f"must be a non-empty string, got {value!r:.40}"
        if name == "node" and not templated and not isinstance(value, str):
            return f"must be a string, got {value!r:.40}"
    return None


def action_problem(action_type: str, params: Mapping[str, Any]) -> str | None:
    """The first unusable param of an action, as ``"params.NAME VALUE-PROBLEM"``, or None."""
    known = PARAMS.get(action_type)
    if not known:
        return None
    for name in known:
        if name in params:
            problem = param_problem(action_type, name, params[name])
            if problem is not None:
                return f"params.{name} {problem}"
    return None


def gated_features(params: Mapping[str, Any]) -> list[str]:
    """The features a (checked) ``gate_feature`` action gates; ``["*"]`` when it names none."""
    value = params.get("features")
    if value is None:
        return ["*"]
    if isinstance(value, str):
        return sorted({part.strip() for part in value.split(",")})
    return sorted({str(item).strip() for item in value})
