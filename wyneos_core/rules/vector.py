"""Rule conditions compiled to masks over the node table's columns.

The native engine (``rules.native``) hands each condition here first. A condition made
only of what the columns hold (``node.status``, ``node.load``, ``node.last_seen``,
``node.isolated``, ``heartbeat_age(node)``, compared with literals, under ``and``,
``or``, ``not`` and ``is missing``) becomes one function that evaluates it for the
whole fleet at once with numpy: a boolean mask, of which only the true positions become
Python integers. Anything else (metadata, licences, helpers, cluster values) is left to
the closures, node by node; so is every condition when the nodes are not the
registry's (a list of ``Node`` in a test).

Semantics are the reference interpreter's (``rules.interp``), column by column: a
missing value (NaN in a float column: never reported) makes every comparison false; a
field of a small domain (status, isolation) is compared through a lookup table built
with the interpreter's own ``compare`` for each of its values.

Chosen by measurement (docs/performance.md, "Rules over columns"): numpy, because the
columns already are numpy arrays and a condition is a handful of ufuncs over them;
numexpr would save temporaries only on long arithmetic expressions, which rules do not
have, and polars would need the columns copied into a frame every tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from wyneos_core.nodetable import STATUSES
from wyneos_core.rules.interp import EvalEnv, compare
from wyneos_core.rules.ir import BoolOp, Call, Cmp, Const, Expr, IsMissing, Not, Ref, kind_of

__all__ = ["MaskFn", "compile_mask"]

#: ``f(table, slots, env)`` -> a boolean mask over ``slots``
MaskFn = Callable[[Any, np.ndarray, EvalEnv], np.ndarray]

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NUMERIC = {"load": "load", "last_seen": "last_seen"}
_UFUNC = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal,
          "!=": np.not_equal}
#: integers beyond this are not exact as float64: left to the closures
_EXACT = 2 ** 53


def compile_mask(expr: Expr) -> MaskFn | None:
    """A function giving ``expr``'s truth for every slot, or None when the columns cannot."""
    t = type(expr)
    if t is BoolOp:
        parts = [compile_mask(e) for e in expr.items]
        if any(p is None for p in parts):
            return None
        combine = np.logical_and if expr.op == "and" else np.logical_or

        def boolop(table: Any, slots: np.ndarray, env: EvalEnv) -> np.ndarray:
            out = parts[0](table, slots, env)  # type: ignore[misc]
            for part in parts[1:]:
                out = combine(out, part(table, slots, env))  # type: ignore[misc]
            return out

        return boolop
    if t is Not:
        inner = compile_mask(expr.operand)
        if inner is None:
            return None
        return lambda table, slots, env: ~inner(table, slots, env)
    if t is Const:
        value = bool(expr.value)
        return lambda table, slots, env: np.full(len(slots), value)
    if t is IsMissing:
        values = _numeric(expr.operand)
        if values is None:
            if _small_domain(expr.operand) is not None:  # status and isolation are never missing
                never = bool(expr.negated)
                return lambda table, slots, env: np.full(len(slots), never)
            return None
        negated = expr.negated
        return lambda table, slots, env: np.isnan(values(table, slots, env)) != negated
    if t is Ref and expr.root == "node" and not expr.path and expr.field == "isolated":
        return lambda table, slots, env: table.isolated[slots].copy()
    if t is Cmp:
        return _compare(expr)
    return None


def _numeric(expr: Expr) -> Callable[[Any, np.ndarray, EvalEnv], np.ndarray] | None:
    """A float column (NaN: missing) for ``node.load``, ``node.last_seen``, ``heartbeat_age(node)``."""
    if type(expr) is Ref and expr.root == "node" and not expr.path and expr.field in _NUMERIC:
        name = _NUMERIC[expr.field]
        return lambda table, slots, env: getattr(table, name)[slots]
    if type(expr) is Call and expr.name == "heartbeat_age":
        return lambda table, slots, env: env.now - table.last_seen[slots]
    return None


def _small_domain(expr: Expr) -> tuple[str, list[Any]] | None:
    """``(column, value of each code)`` for a field of a few values."""
    if type(expr) is Ref and expr.root == "node" and not expr.path:
        if expr.field == "status":
            return "status", [s.value for s in STATUSES]
        if expr.field == "isolated":
            return "isolated", [False, True]
    return None


def _compare(expr: Cmp) -> MaskFn | None:
    left, right, op = expr.left, expr.right, expr.op
    if type(left) is Const and type(right) is not Const:
        left, right, op = right, left, _FLIP[op]
    if type(right) is not Const or type(left) is Const:
        return None
    c = right.value
    domain = _small_domain(left)
    if domain is not None:  # the interpreter's answer for each value the column can hold
        column, values = domain
        lookup = np.array([compare(op, v, c) for v in values], dtype=bool)
        return lambda table, slots, env: lookup[getattr(table, column)[slots].astype(np.intp)]
    values = _numeric(left)
    if values is None:
        return None
    if kind_of(c) is None:  # null: nothing compares with it
        return lambda table, slots, env: np.zeros(len(slots), bool)
    number = type(c) in (int, float)
    if number and (type(c) is int and abs(c) > _EXACT or c != c):
        return None
    ufunc = _UFUNC[op]

    def cmp(table: Any, slots: np.ndarray, env: EvalEnv) -> np.ndarray:
        v = values(table, slots, env)
        present = ~np.isnan(v)
        if not number:  # another kind: never equal, never ordered; "!=" holds when present
            return present if op == "!=" else np.zeros(len(v), bool)
        with np.errstate(invalid="ignore"):
            return present & ufunc(v, c)

    return cmp
