"""The native engine: the IR compiled once into Python closures.

Each condition becomes one closure ``f(node, licence, env)``; the common shapes (a field
compared with a literal, a metadata key compared with a literal, ``in`` a literal list)
get closures that do no more work than a hand-written predicate would, and everything
else falls back to closures over the shared semantics of ``wyneos_core.rules.interp``.
Evaluation runs each rule over all nodes with ``map`` (the loop itself stays in C).
A condition the node table's columns can answer is evaluated over them instead, for the
whole fleet at once (``wyneos_core.rules.vector``), when the nodes are the registry's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from itertools import compress, repeat
from typing import Any

import numpy as np

from wyneos_core.model import LicenceResult, Node, NodeStatus
from wyneos_core.rules.expr import arith
from wyneos_core.rules.helpers import PREDICTIVE, predicted
from wyneos_core.rules.interp import (
    EvalEnv,
    _descend,
    compare,
    contains,
    drift_age,
    drift_of,
    helper_function,
    prediction_args,
)
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
)
from wyneos_core.rules.vector import Columns, MaskFn, NoColumn, compile_mask

__all__ = ["NativeEngine", "compile_test", "compile_value"]

Fn = Callable[[Node, LicenceResult, EvalEnv], Any]

_NUM = (int, float)
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_STATUS_VALUE = {s: s.value for s in NodeStatus}
_STATUS_BY_VALUE = {s.value: s for s in NodeStatus}
#: node fields whose Python type is fixed by the model (None means missing)
_LICENCE_KINDS = {"valid": "b", "reason": "s", "detail": "s", "licence_id": "s", "customer": "s", "product": "s",
                  "tier": "s", "expires": "n", "in_grace": "b", "source": "s", "features": "o"}
_TYPED_NODE = {"load": "n", "last_seen": "n", "id": "s", "isolated": "b", "licence_ref": "s", "fingerprint": "s"}


def compile_value(expr: Expr) -> Fn:
    """A closure giving the value of ``expr`` (MISSING included)."""
    t = type(expr)
    if t is Const:
        value = expr.value
        return lambda n, l, e: value
    if t is ListLit:
        items = list(expr.items)
        return lambda n, l, e: items
    if t is Ref:
        return _compile_ref(expr)
    if t is Arith:
        a, b, op = compile_value(expr.left), compile_value(expr.right), expr.op
        return lambda n, l, e: arith(op, a(n, l, e), b(n, l, e))
    if t is Neg:
        a = compile_value(expr.operand)

        def neg(n: Node, l: LicenceResult, e: EvalEnv) -> Any:
            v = a(n, l, e)
            return -v if type(v) in _NUM else MISSING

        return neg
    if t is Call:
        return _compile_call(expr)
    return compile_test(expr)  # comparisons and boolean logic are booleans


def _compile_ref(ref: Ref) -> Fn:
    field, path = ref.field, ref.path
    if ref.root == "node":
        if field == "status":
            sv = _STATUS_VALUE
            return lambda n, l, e: sv[n.status]
        if field == "metrics":
            metric = path[0]
            return lambda n, l, e: predicted("latest", e.predictions, n.id, metric, None)  # type: ignore[arg-type]
        if field == "drift":
            if path:
                return lambda n, l, e: _descend(drift_of(e, n.id), path)
            return lambda n, l, e: drift_of(e, n.id)
        if field == "metadata":
            if not path:
                return lambda n, l, e: n.metadata
            if len(path) == 1 and isinstance(path[0], str):
                key = path[0]

                def md1(n: Node, l: LicenceResult, e: EvalEnv) -> Any:
                    v = n.metadata.get(key)
                    return MISSING if v is None else v

                return md1
            return lambda n, l, e: _descend(n.metadata, path)
        getter = operator.attrgetter(field)

        def node_field(n: Node, l: LicenceResult, e: EvalEnv) -> Any:
            v = getter(n)
            return MISSING if v is None else v

        return node_field
    if ref.root == "licence":
        if field == "features":
            if path:
                return lambda n, l, e: _descend(list(l.features), path)
            return lambda n, l, e: list(l.features)
        getter = operator.attrgetter(field)

        def lic_field(n: Node, l: LicenceResult, e: EvalEnv) -> Any:
            v = getter(l)
            return MISSING if v is None else v

        return lic_field
    return lambda n, l, e: e.cluster.get(field, MISSING)


def _compile_call(expr: Call) -> Fn:
    name = expr.name
    if name == "heartbeat_age":
        def age(n: Node, l: LicenceResult, e: EvalEnv) -> Any:
            seen = n.last_seen
            return MISSING if seen is None else e.now - seen

        return age
    if name == "entitled":
        feature = expr.args[0].value  # type: ignore[union-attr]
        return lambda n, l, e: bool(l.valid) and feature in l.features
    if name == "violated":
        rule_id = expr.args[0].value  # type: ignore[union-attr]
        return lambda n, l, e: n.id in e.violated.get(rule_id, ())
    if name == "trust_at_least":
        at_least = helper_function(name, expr.args[0].value)  # type: ignore[union-attr]
        return lambda n, l, e: at_least(n.trust_tier)
    if name in PREDICTIVE:
        metric, arg = prediction_args(expr)
        return lambda n, l, e: predicted(name, e.predictions, n.id, metric, arg)
    if name == "drift_age":
        return lambda n, l, e: drift_age(e, n.id)
    const = expr.args[1].value if len(expr.args) > 1 else None  # type: ignore[union-attr]
    fn = helper_function(name, const)
    arg = compile_value(expr.args[0])
    return lambda n, l, e: fn(arg(n, l, e))


def compile_test(expr: Expr) -> Fn:
    """A closure giving the truthiness of ``expr`` as a bool."""
    t = type(expr)
    if t is Cmp:
        return _compile_cmp(expr)
    if t is BoolOp:
        fns = [compile_test(e) for e in expr.items]
        if expr.op == "and":
            return _chain_and(fns)
        return _chain_or(fns)
    if t is Not:
        inner = _negatable(expr.operand)
        if inner is not None:
            return inner
        f = compile_test(expr.operand)
        return lambda n, l, e: not f(n, l, e)
    if t is IsMissing:
        get = compile_value(expr.operand)
        if expr.negated:
            return lambda n, l, e: get(n, l, e) is not MISSING
        return lambda n, l, e: get(n, l, e) is MISSING
    if t is In:
        return _compile_in(expr)
    if t is Const:
        value = bool(expr.value)
        return lambda n, l, e: value
    if t is Call and expr.name == "entitled":
        feature = expr.args[0].value  # type: ignore[union-attr]
        return lambda n, l, e: bool(l.valid) and feature in l.features
    if t is Ref and not expr.path and (expr.root == "node" and expr.field in _TYPED_NODE
                                       or expr.root == "licence" and _LICENCE_KINDS.get(expr.field) in "nsb"):
        g = operator.attrgetter(expr.field)
        if expr.root == "node":
            return lambda n, l, e: bool(g(n))
        return lambda n, l, e: bool(g(l))
    get = compile_value(expr)
    return lambda n, l, e: bool(get(n, l, e))  # MISSING is falsy


def _negatable(expr: Expr) -> Fn | None:
    """``not (x op c)`` compiled directly (no extra closure layer)."""
    if type(expr) is Cmp:
        return _compile_cmp(expr, negate=True)
    return None


def _chain_and(fns: list[Fn]) -> Fn:
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        a, b = fns
        return lambda n, l, e: a(n, l, e) and b(n, l, e)
    if len(fns) == 3:
        a, b, c = fns
        return lambda n, l, e: a(n, l, e) and b(n, l, e) and c(n, l, e)
    head, rest = fns[0], _chain_and(fns[1:])
    return lambda n, l, e: head(n, l, e) and rest(n, l, e)


def _chain_or(fns: list[Fn]) -> Fn:
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        a, b = fns
        return lambda n, l, e: a(n, l, e) or b(n, l, e)
    if len(fns) == 3:
        a, b, c = fns
        return lambda n, l, e: a(n, l, e) or b(n, l, e) or c(n, l, e)
    head, rest = fns[0], _chain_or(fns[1:])
    return lambda n, l, e: head(n, l, e) or rest(n, l, e)


def _compile_cmp(expr: Cmp, negate: bool = False) -> Fn:
    """``x op literal``, specialised on the literal's kind; ``negate`` gives ``not (x op c)``."""
    left, right, op = expr.left, expr.right, expr.op
    if type(left) is Const and type(right) is not Const:
        left, right, op = right, left, _FLIP[op]
    if type(right) is not Const or type(left) is Const:
        a, b = compile_value(left), compile_value(right)
        if negate:
            return lambda n, l, e: not compare(op, a(n, l, e), b(n, l, e))
        return lambda n, l, e: compare(op, a(n, l, e), b(n, l, e))
    c = right.value
    ck = "b" if type(c) is bool else ("n" if type(c) in _NUM else "s")

    # node.status against a status name: an identity test on the enum member (never missing)
    if type(left) is Ref and left.root == "node" and left.field == "status" and op in ("==", "!="):
        member = _STATUS_BY_VALUE.get(c) if ck == "s" else None
        if (op == "==") != negate:
            return lambda n, l, e: n.status is member
        return lambda n, l, e: n.status is not member

    # typed node fields (load, last_seen, id, ...): the model fixes their type, None is missing
    if type(left) is Ref and left.root == "node" and left.field in _TYPED_NODE and not left.path:
        getter = operator.attrgetter(left.field)
        if _TYPED_NODE[left.field] != ck:  # never equal, never ordered; != true when present
            if op == "!=":
                if negate:
                    return lambda n, l, e: getter(n) is None
                return lambda n, l, e: getter(n) is not None
            return lambda n, l, e: negate
        if op == "!=":
            if negate:
                return lambda n, l, e: (v := getter(n)) is None or v == c
            return lambda n, l, e: (v := getter(n)) is not None and v != c
        f = _OPS[op]
        if negate:
            return lambda n, l, e: (v := getter(n)) is None or not f(v, c)
        if left.field == "load":
            if op == "<":
                return lambda n, l, e: (v := n.load) is not None and v < c
            if op == ">":
                return lambda n, l, e: (v := n.load) is not None and v > c
        return lambda n, l, e: (v := getter(n)) is not None and f(v, c)

    # licence fields of a fixed kind: as for node fields, on the licence
    if type(left) is Ref and left.root == "licence" and not left.path and _LICENCE_KINDS.get(left.field) in "nsb":
        return _licence_cmp(operator.attrgetter(left.field), _LICENCE_KINDS[left.field], ck, op, c, negate)

    # heartbeat_age(node) against a number
    if type(left) is Call and left.name == "heartbeat_age" and ck == "n":
        f = _OPS.get(op)
        if op == "!=" or f is None:
            pass
        elif negate:
            return lambda n, l, e: (s := n.last_seen) is None or not f(e.now - s, c)
        else:
            return lambda n, l, e: (s := n.last_seen) is not None and f(e.now - s, c)

    # a top-level metadata key against a literal: the lookup inlined
    if type(left) is Ref and left.root == "node" and left.field == "metadata" and len(left.path) == 1 \
            and isinstance(left.path[0], str):
        fast = _metadata_cmp(left.path[0], ck, op, c, negate)
        if fast is not None:
            return fast
    get = compile_value(left)

    if ck == "b":  # == / != only (ordering booleans is refused by the parser)
        if op == "==":
            if negate:
                return lambda n, l, e: get(n, l, e) is not c
            return lambda n, l, e: get(n, l, e) is c
        if negate:
            return lambda n, l, e: not _present(v := get(n, l, e)) or v is c
        return lambda n, l, e: _present(v := get(n, l, e)) and v is not c
    kinds = (str,) if ck == "s" else _NUM
    if op == "==":
        if negate:
            return lambda n, l, e: not (type(v := get(n, l, e)) in kinds and v == c)
        return lambda n, l, e: type(v := get(n, l, e)) in kinds and v == c
    if op == "!=":
        if negate:
            return lambda n, l, e: not _present(v := get(n, l, e)) or (type(v) in kinds and v == c)
        return lambda n, l, e: _present(v := get(n, l, e)) and not (type(v) in kinds and v == c)
    f = _OPS[op]
    if ck == "s":
        if negate:
            return lambda n, l, e: not (type(v := get(n, l, e)) is str and f(v, c))
        return lambda n, l, e: type(v := get(n, l, e)) is str and f(v, c)
    if negate:
        return lambda n, l, e: not (type(v := get(n, l, e)) in _NUM and f(v, c))
    return lambda n, l, e: type(v := get(n, l, e)) in _NUM and f(v, c)


def _metadata_cmp(key: str, ck: str, op: str, c: Any, negate: bool) -> Fn | None:
    """``node.metadata.key op c`` with the dict lookup inlined (None means absent)."""
    if ck == "s":
        if op == "==":
            if negate:
                return lambda n, l, e: not (type(v := n.metadata.get(key)) is str and v == c)
            return lambda n, l, e: type(v := n.metadata.get(key)) is str and v == c
        if op == "!=":
            if negate:
                return lambda n, l, e: (v := n.metadata.get(key)) is None or (type(v) is str and v == c)
            return lambda n, l, e: (v := n.metadata.get(key)) is not None and not (type(v) is str and v == c)
        f = _OPS[op]
        if negate:
            return lambda n, l, e: not (type(v := n.metadata.get(key)) is str and f(v, c))
        return lambda n, l, e: type(v := n.metadata.get(key)) is str and f(v, c)
    if ck == "n":
        if op == "==":
            if negate:
                return lambda n, l, e: not ((t := type(v := n.metadata.get(key))) in _NUM and v == c)
            return lambda n, l, e: type(v := n.metadata.get(key)) in _NUM and v == c
        if op == "!=":
            if negate:
                return lambda n, l, e: (v := n.metadata.get(key)) is None or (type(v) in _NUM and v == c)
            return lambda n, l, e: (v := n.metadata.get(key)) is not None and not (type(v) in _NUM and v == c)
        f = _OPS[op]
        if negate:
            return lambda n, l, e: not (type(v := n.metadata.get(key)) in _NUM and f(v, c))
        return lambda n, l, e: type(v := n.metadata.get(key)) in _NUM and f(v, c)
    return None


def _licence_cmp(getter: Callable[[Any], Any], fk: str, ck: str, op: str, c: Any, negate: bool) -> Fn:
    """A licence field of kind ``fk`` (None means missing) against a literal of kind ``ck``."""
    if fk != ck:
        if op == "!=":
            if negate:
                return lambda n, l, e: getter(l) is None
            return lambda n, l, e: getter(l) is not None
        return lambda n, l, e: negate
    if op == "!=":
        if negate:
            return lambda n, l, e: (v := getter(l)) is None or v == c
        return lambda n, l, e: (v := getter(l)) is not None and v != c
    f = _OPS[op]
    if negate:
        return lambda n, l, e: (v := getter(l)) is None or not f(v, c)
    if op == "==":
        return lambda n, l, e: getter(l) == c
    return lambda n, l, e: (v := getter(l)) is not None and f(v, c)


def _present(v: Any) -> bool:
    return v is not None and v is not MISSING


def _compile_in(expr: In) -> Fn:
    item = compile_value(expr.item)
    negated = expr.negated
    if type(expr.container) is ListLit:
        values = expr.container.items
        strs = frozenset(v for v in values if type(v) is str)
        nums = frozenset(v for v in values if type(v) in _NUM)
        bools = frozenset(v for v in values if type(v) is bool)
        if not nums and not bools:
            if negated:
                return lambda n, l, e: _present(v := item(n, l, e)) and not (type(v) is str and v in strs)
            return lambda n, l, e: type(v := item(n, l, e)) is str and v in strs

        def found(v: Any) -> bool:
            t = type(v)
            return (t is str and v in strs) or (t in _NUM and v in nums) or (t is bool and v in bools)

        if negated:
            return lambda n, l, e: _present(v := item(n, l, e)) and not found(v)
        return lambda n, l, e: found(item(n, l, e))
    container = compile_value(expr.container)
    return lambda n, l, e: contains(item(n, l, e), container(n, l, e), negated)


class NativeEngine:
    """Evaluates a list of conditions over a cluster; one closure per condition.

    :param conditions: the IR of each rule's *active* condition (for governance rules,
        the violation: the engine is handed ``Not(require)``).
    """

    name = "native"

    def __init__(self, conditions: Sequence[Expr]) -> None:
        #: each condition over the node table's columns, where it can be (``rules.vector``)
        self.masks: list[MaskFn | None] = [compile_mask(cond) for cond in conditions]
        self.tests: list[tuple[Fn, bool]] = []
        for cond in conditions:
            if type(cond) is Not:
                inner = _negatable(cond.operand)
                if inner is not None:
                    self.tests.append((inner, False))
                else:
                    self.tests.append((compile_test(cond.operand), True))
            else:
                self.tests.append((compile_test(cond), False))

    def evaluate(self, nodes: Sequence[Node], lics: Sequence[LicenceResult], env: EvalEnv,
                 masks: bool = False) -> list[Any]:
        """For each condition, the indexes of the nodes on which it is true (``masks``: a
        boolean array over the nodes instead)."""
        count = len(nodes)
        indexes = range(count)
        not_ = operator.not_
        table = getattr(nodes, "table", None) if hasattr(nodes, "slots") else None
        cols = None if table is None else Columns(table, nodes.slots, lics)  # type: ignore[attr-defined]
        out: list[Any] = []
        for (fn, negated), mask in zip(self.tests, self.masks):
            if cols is not None and mask is not None:  # over the columns, the whole fleet at once
                try:
                    m = mask(cols, env)
                except NoColumn:  # a table without that column: node by node
                    pass
                else:
                    out.append(m if masks else np.flatnonzero(m).tolist())
                    continue
            hits = map(fn, nodes, lics, repeat(env, count))
            if negated:
                hits = map(not_, hits)
            out.append(np.fromiter(hits, bool, count) if masks else list(compress(indexes, hits)))
        return out

    def close(self) -> None:
        """Nothing to release (the durable engine has a worker process)."""
