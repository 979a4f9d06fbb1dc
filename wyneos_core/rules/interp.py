"""The reference semantics: a tree-walking interpreter of the IR, and ``explain``.

This is the slow, obvious definition of what a condition means. The native engine's
compiled closures and the durable-rules translation are tested against it; ``wyneos
explain`` uses it to show the value of every part of a condition for one node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from wyneos_core.model import LicenceResult, Node, NodeStatus
from wyneos_core.rules import helpers
from wyneos_core.rules.expr import arith
from wyneos_core.sharing import FrozenMetadata
from wyneos_core.rules.ir import (
    MISSING,
    Arith,
    BoolOp,
    Call,
    Cmp,
    Const,
    Expr,
    In,
    IsMissing,
    ListLit,
    Neg,
    Not,
    Ref,
    kind_of,
)

__all__ = [
    "NO_LICENCE",
    "EvalEnv",
    "cluster_summary",
    "compare",
    "contains",
    "drift_age",
    "drift_of",
    "prediction_args",
    "equal",
    "evaluate",
    "explain",
    "helper_function",
    "read_ref",
    "render",
    "truthy",
]

#: What a node without a licence result sees as ``licence``.
NO_LICENCE = LicenceResult("", False, "not_evaluated",
                           "not evaluated: no licence step answered for this node (switched off?)")


@dataclass(slots=True)
class EvalEnv:
    """What a condition sees besides the node and its licence, fixed for one tick."""

    now: float
    cluster: dict[str, Any] = field(default_factory=dict)
    #: governance rule id -> ids of nodes on which it fires (for ``violated``)
    violated: Mapping[str, frozenset[str] | set[str]] = field(default_factory=dict)
    #: what the predict step left (``wyneos_core.predict.interface.Predictions``), if anything
    predictions: Any = None
    #: node id -> its drift record (``node.drift``, docs/drift.md); anything with ``get``
    drift: Any = None

    def staged(self, violated: Mapping[str, frozenset[str] | set[str]]) -> EvalEnv:
        """This environment for a later step, with that step's ``violated``."""
        return EvalEnv(self.now, self.cluster, violated, self.predictions, self.drift)


def drift_of(env: EvalEnv, node_id: str) -> Any:
    """The node's drift record (a dict) or MISSING when nothing was declared for it."""
    if env.drift is None:
        return MISSING
    record = env.drift.get(node_id)
    return MISSING if record is None else record


def drift_age(env: EvalEnv, node_id: str) -> Any:
    """Seconds since the node first differed from its declared state (MISSING while it does not)."""
    record = drift_of(env, node_id)
    if record is MISSING:
        return MISSING
    since = record.get("since")
    return MISSING if since is None else max(0.0, env.now - since)


def cluster_summary(nodes: Sequence[Node], now: float) -> dict[str, Any]:
    """The ``cluster`` values: size, status counts, isolated, mean load, now."""
    table = getattr(nodes, "table", None)
    if table is not None:  # the node table's columns (same sums, in the same order)
        slots = nodes.slots  # type: ignore[attr-defined]
        counted = table.status_counts(slots)
        loads = table.load[slots]
        present = loads[loads == loads].tolist()
        return {
            "size": len(nodes), **{s.value: counted[s.value] for s in NodeStatus}, "isolated": counted["isolated"],
            "mean_load": (sum(present) / len(present)) if present else MISSING, "now": now,
        }
    counts = {s.value: 0 for s in NodeStatus}
    isolated = 0
    loads = 0.0
    with_load = 0
    for n in nodes:
        counts[n.status.value] += 1
        if n.isolated:
            isolated += 1
        if n.load is not None:
            loads += n.load
            with_load += 1
    return {
        "size": len(nodes), **counts, "isolated": isolated,
        "mean_load": (loads / with_load) if with_load else MISSING, "now": now,
    }


def _descend(value: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        if isinstance(step, str):
            if type(value) is not dict and type(value) is not FrozenMetadata:  # a JSON object (a node's own: frozen)
                return MISSING
            value = value.get(step, MISSING)
        else:
            if type(value) not in (list, tuple) or not -len(value) <= step < len(value):
                return MISSING
            value = value[step]
    return MISSING if value is None else value


def read_ref(ref: Ref, node: Node, lic: LicenceResult, env: EvalEnv) -> Any:
    """The value of ``node.x`` / ``licence.x`` / ``cluster.x`` (MISSING when absent)."""
    if ref.root == "node":
        if ref.field == "metrics":
            return helpers.predicted("latest", env.predictions, node.id, ref.path[0], None)  # type: ignore[arg-type]
        value = drift_of(env, node.id) if ref.field == "drift" else getattr(node, ref.field)
        if ref.field == "status":
            value = value.value
    elif ref.root == "licence":
        value = getattr(lic, ref.field)
        if ref.field == "features":
            value = list(value)
    else:
        value = env.cluster.get(ref.field, MISSING)
    if ref.path:
        return _descend(value, ref.path)
    return MISSING if value is None else value


def truthy(value: Any) -> bool:
    return value is not MISSING and bool(value)


def equal(a: Any, b: Any) -> bool:
    ka = kind_of(a)
    return ka is not None and ka == kind_of(b) and a == b


def compare(op: str, a: Any, b: Any) -> bool:
    """``a op b`` under the shared semantics: false with MISSING or mixed kinds."""
    ka, kb = kind_of(a), kind_of(b)
    if ka is None or kb is None:
        return False
    if op == "==":
        return ka == kb and a == b
    if op == "!=":
        return not (ka == kb and a == b)
    if ka != kb or ka not in ("n", "s"):
        return False
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def contains(item: Any, container: Any, negated: bool) -> bool:
    """``item in container`` (or ``not in``); false whenever either side is missing."""
    if kind_of(item) is None:
        return False
    t = type(container)
    if t is str:
        if type(item) is not str:
            return False
        found = item in container
    elif t in (list, tuple):
        found = any(equal(item, x) for x in container)
    elif t is dict or t is FrozenMetadata:
        if type(item) is not str:
            return False
        found = item in container
    else:
        return False
    return not found if negated else found


@lru_cache(maxsize=512)
def helper_function(name: str, const: str | None) -> Callable[..., Any]:
    """A one-value function for a helper whose constant argument is ``const``."""
    if name == "matches":
        return helpers.glob_matcher(const or "")
    if name == "regex":
        return helpers.regex_matcher(const or "")
    if name == "version_at_least":
        return helpers.version_comparer(const or "0", True)
    if name == "version_below":
        return helpers.version_comparer(const or "0", False)
    if name == "length":
        return helpers.length_of
    if name == "trust_at_least":
        return helpers.trust_at_least(const or "")
    raise KeyError(name)


def evaluate(expr: Expr, node: Node, lic: LicenceResult, env: EvalEnv) -> Any:
    """The value of ``expr`` for one node (MISSING possible); never raises on data."""
    t = type(expr)
    if t is Const:
        return expr.value
    if t is Ref:
        return read_ref(expr, node, lic, env)
    if t is Cmp:
        return compare(expr.op, evaluate(expr.left, node, lic, env), evaluate(expr.right, node, lic, env))
    if t is BoolOp:
        if expr.op == "and":
            return all(truthy(evaluate(e, node, lic, env)) for e in expr.items)
        return any(truthy(evaluate(e, node, lic, env)) for e in expr.items)
    if t is Not:
        return not truthy(evaluate(expr.operand, node, lic, env))
    if t is Arith:
        return arith(expr.op, evaluate(expr.left, node, lic, env), evaluate(expr.right, node, lic, env))
    if t is Neg:
        v = evaluate(expr.operand, node, lic, env)
        return -v if type(v) in (int, float) else MISSING
    if t is In:
        container = expr.container.items if type(expr.container) is ListLit else evaluate(expr.container, node, lic, env)
        return contains(evaluate(expr.item, node, lic, env), container, expr.negated)
    if t is IsMissing:
        missing = evaluate(expr.operand, node, lic, env) is MISSING
        return not missing if expr.negated else missing
    if t is ListLit:
        return list(expr.items)
    if t is Call:
        return call_helper(expr, node, lic, env)
    raise TypeError(f"not an expression: {expr!r}")


def call_helper(expr: Call, node: Node, lic: LicenceResult, env: EvalEnv) -> Any:
    name = expr.name
    if name == "heartbeat_age":
        return MISSING if node.last_seen is None else env.now - node.last_seen
    if name == "entitled":
        return bool(lic.valid) and expr.args[0].value in lic.features  # type: ignore[union-attr]
    if name == "violated":
        return node.id in env.violated.get(expr.args[0].value, ())  # type: ignore[union-attr]
    if name == "trust_at_least":
        return helper_function(name, expr.args[0].value)(node.trust_tier)  # type: ignore[union-attr]
    if name in helpers.PREDICTIVE:
        return helpers.predicted(name, env.predictions, node.id, *prediction_args(expr))
    if name == "drift_age":
        return drift_age(env, node.id)
    const = expr.args[1].value if len(expr.args) > 1 else None  # type: ignore[union-attr]
    return helper_function(name, const)(evaluate(expr.args[0], node, lic, env))


def prediction_args(expr: Call) -> tuple[str, Any]:
    """(metric name, constant argument) of a prediction helper's call: the horizon in
    seconds for ``forecast``, the level for ``time_to``."""
    metric = expr.args[0].path[0]  # type: ignore[union-attr]
    if len(expr.args) < 2:
        return metric, None  # type: ignore[return-value]
    value = expr.args[1].value  # type: ignore[union-attr]
    if expr.name == "forecast":
        value = helpers.duration_seconds(value)
    return metric, value  # type: ignore[return-value]


# -- rendering and explaining ---------------------------------------------------------------

_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6, "neg": 7}


def render(expr: Expr, parent: int = 0) -> str:
    """The IR back as expression text (normalised)."""
    t = type(expr)
    if t is Const:
        return repr(expr.value)
    if t is ListLit:
        return "[" + ", ".join(repr(v) for v in expr.items) + "]"
    if t is Ref:
        return expr.text()
    if t is Call:
        args = [render(a) for a in expr.args]
        if expr.name == "heartbeat_age":
            args = ["node"]
        elif expr.name == "entitled":
            args = ["licence", *args]
        return f"{expr.name}({', '.join(args)})"
    if t is Cmp:
        p = _PRECEDENCE["cmp"]
        text = f"{render(expr.left, p + 1)} {expr.op} {render(expr.right, p + 1)}"
    elif t is In:
        p = _PRECEDENCE["cmp"]
        text = f"{render(expr.item, p + 1)} {'not in' if expr.negated else 'in'} {render(expr.container, p + 1)}"
    elif t is IsMissing:
        p = _PRECEDENCE["cmp"]
        text = f"{render(expr.operand, p + 1)} is {'not ' if expr.negated else ''}missing"
    elif t is BoolOp:
        p = _PRECEDENCE[expr.op]
        text = f" {expr.op} ".join(render(e, p + 1) for e in expr.items)
    elif t is Not:
        p = _PRECEDENCE["not"]
        text = f"not {render(expr.operand, p)}"
    elif t is Arith:
        p = _PRECEDENCE[expr.op]
        text = f"{render(expr.left, p)} {expr.op} {render(expr.right, p + 1)}"
    elif t is Neg:
        p = _PRECEDENCE["neg"]
        text = f"-{render(expr.operand, p)}"
    else:
        raise TypeError(f"not an expression: {expr!r}")
    return f"({text})" if p < parent else text


def _show(value: Any) -> str:
    if value is MISSING:
        return "missing"
    if isinstance(value, float):
        return f"{value:.6g}"
    if type(value) is list and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.6g}" for v in value) + "]"  # a band, a recent history
    return repr(value)


def _evidence(env: EvalEnv, node_id: str, metric: str) -> str:
    """The predict step's explanation of a metric's finding, on one line."""
    if env.predictions is None:
        return "missing (no predict step ran)"
    try:
        found = env.predictions.evidence(node_id, metric)
    except Exception as exc:  # noqa: BLE001 - explain shows the failure, never raises
        return f"missing ({type(exc).__name__}: {exc})"
    if not found:
        return "missing (no history for this metric)"
    return ", ".join(f"{key}={_show(value)}" for key, value in found.items())


def explain(expr: Expr, node: Node, lic: LicenceResult, env: EvalEnv, indent: str = "") -> list[str]:
    """One line per part of ``expr``: its text and its value for this node, as a tree."""
    lines = [f"{indent}{render(expr)}  =>  {_show(evaluate(expr, node, lic, env))}"]
    t = type(expr)
    children: list[Expr] = []
    if t in (Cmp, Arith):
        children = [expr.left, expr.right]
    elif t is BoolOp:
        children = list(expr.items)
    elif t in (Not, Neg, IsMissing):
        children = [expr.operand]
    elif t is In:
        children = [expr.item, expr.container]
    elif t is Call:
        children = [a for a in expr.args if type(a) is not Const]
        if expr.name == "heartbeat_age":
            lines.append(f"{indent}  node.last_seen  =>  {_show(node.last_seen)}; now = {env.now:.6g}")
        elif expr.name == "entitled":
            lines.append(f"{indent}  licence.valid  =>  {lic.valid!r}; licence.features  =>  {list(lic.features)!r}")
        elif expr.name == "trust_at_least":
            lines.append(f"{indent}  node.trust_tier  =>  {_show(node.trust_tier) if node.trust_tier else 'missing'}")
        elif expr.name in helpers.PREDICTIVE:
            lines.append(f"{indent}  evidence  =>  {_evidence(env, node.id, prediction_args(expr)[0])}")
        elif expr.name == "drift_age":
            lines.append(f"{indent}  node.drift  =>  {_show(drift_of(env, node.id))}")
    for child in children:
        if type(child) in (Const, ListLit):
            continue
        lines.extend(explain(child, node, lic, env, indent + "  "))
    return lines
