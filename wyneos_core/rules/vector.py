"""Rule conditions compiled to masks over the node table's columns.

The native engine (``rules.native``) hands each condition here first. A condition made
only of what the columns hold becomes one function that evaluates it for the whole
fleet at once with numpy: a boolean mask, of which only the true positions become
Python integers. Anything else (nested metadata, ``violated``, predictions, drift,
arithmetic) is left to the closures, node by node; so is every condition when the nodes
are not the registry's (a list of ``Node`` in a test).

What the columns answer (a *term*):

* numbers, a float column each (NaN: missing): ``node.load``, ``node.last_seen``,
  ``node.last_rollback``, ``node.trust``, ``node.registered_at`` (never missing: a NaN
  there is a present NaN, as ``Node.registered_at`` gives it) and ``heartbeat_age(node)``;
* fields of a few values, a code column each with the Python value of every code:
  ``node.status``, ``node.isolated``, ``node.trust_tier`` and ``trust_at_least(...)``,
  a top-level metadata key (``NodeTable.metadata_codes``: dictionary codes, stable as
  values are appended) and ``version_at_least`` / ``version_below`` / ``matches`` /
  ``regex`` / ``length`` of one, the licence fields and ``entitled(...)`` (codes into
  the licence step's pool of distinct results, when the runner has them: ``NoColumn``
  otherwise, and the closures answer);
* ``cluster.x``, one value for the tick, and literals.

and over them: comparisons of a term with a literal or ``cluster.x``, of two number
columns with each other, ``in`` / ``not in`` a literal list, ``is missing``, a term's
truthiness, ``and``, ``or`` and ``not``.

Semantics are the reference interpreter's (``rules.interp``), exactly: a code column
is compared through a lookup table built with the interpreter's own ``compare`` /
``contains`` / ``truthy`` (and helper) for each value the column can hold; a number column against
a number compares the float64 values as Python compares them, also with integers past
2**53 (compared with their float neighbours, so ``v < 2**63 + 1`` is what Python says),
NaN literals and infinities; a missing value makes every comparison false.

Chosen by measurement (docs/performance.md, "Rulesets": numpy, numexpr and polars on the
same rules and nodes in one run, ``bench/bench_vector_rules.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from wyneos_core.nodetable import STATUSES
from wyneos_core.model import LicenceResult
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, compare, contains, evaluate, helper_function, truthy
from wyneos_core.rules.ir import MISSING, BoolOp, Call, Cmp, Const, Expr, In, IsMissing, ListLit, Not, Ref, kind_of

__all__ = ["Columns", "MaskFn", "NoColumn", "compile_mask"]


class NoColumn(LookupError):
    """The table at hand does not hold a column a mask needs (the closures answer instead)."""


class Columns:
    """The node table's columns for the nodes at ``slots``, each gathered once per
    evaluation (a view, not a copy, when the slots are all the first ones)."""

    __slots__ = ("table", "slots", "lics", "_cache", "_whole")

    def __init__(self, table: Any, slots: np.ndarray, lics: Any = None) -> None:
        self.table = table
        self.slots = slots
        #: the nodes' licence results; answer ``columns()`` when they are the licence step's
        self.lics = lics
        self._cache: dict[str, np.ndarray] = {}
        n = len(slots)
        # slots 0..n-1 in order: strictly increasing from 0 to n - 1
        self._whole = n == 0 or (int(slots[0]) == 0 and int(slots[-1]) == n - 1 and bool(np.all(slots[1:] > slots[:-1])))

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, name: str) -> np.ndarray:
        out = self._cache.get(name)
        if out is None:
            column = getattr(self.table, name)
            out = self._cache[name] = column[:len(self.slots)] if self._whole else column[self.slots]
        return out

    def age(self, env: EvalEnv) -> np.ndarray:
        """``heartbeat_age(node)``: seconds since the last heartbeat (NaN: never heard from)."""
        out = self._cache.get("age")
        if out is None:
            out = self._cache["age"] = env.now - self["last_seen"]
        return out

    def metadata(self, key: str) -> tuple[np.ndarray, list[Any], int]:
        """Metadata ``key`` dictionary-encoded (``NodeTable.metadata_codes``): the code of
        each node plus one (0: no such key), the values by code, and that shift."""
        out = self._cache.get(("metadata", key))  # type: ignore[call-overload]
        if out is None:
            encode = getattr(self.table, "metadata_codes", None)
            if encode is None:
                raise NoColumn("metadata")
            codes, values = encode(key)
            c = codes[:len(self.slots)] if self._whole else codes[self.slots]
            out = self._cache[("metadata", key)] = (c.astype(np.intp) + 1, values, 1)  # type: ignore[index]
        return out  # type: ignore[return-value]

    def licences(self) -> tuple[np.ndarray, list[Any], int]:
        """The licence results as codes into their pool of distinct results (code 0: none)."""
        out = self._cache.get("licences")  # type: ignore[call-overload]
        if out is None:
            columns = getattr(self.lics, "columns", None)
            got = columns() if columns is not None else None
            if got is None:
                raise NoColumn("licence")
            codes, fields = got
            out = self._cache["licences"] = (codes.astype(np.intp) + 1, fields, 1)  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def codes(self, name: str, offset: int = 0) -> np.ndarray:
        """A small-integer column as indexes (``offset`` added: -1 codes become 0)."""
        key = f"{name}+{offset}"
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self[name].astype(np.intp) + offset if offset else self[name].astype(np.intp)
        return out


#: ``f(columns, env)`` -> a boolean mask over the columns' nodes
MaskFn = Callable[[Columns, EvalEnv], np.ndarray]
#: a number column: ``f(columns, env)`` -> float64 values (NaN: missing unless ``nan_present``)
NumFn = Callable[[Columns, EvalEnv], np.ndarray]
#: a code column: ``f(columns, env)`` -> (codes, values, shift): ``codes - shift`` indexes ``values``
#: (whose None is missing); with ``shift`` 1, code 0 is missing
CodeFn = Callable[[Columns, EvalEnv], tuple[np.ndarray, Sequence[Any], int]]

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_UFUNC = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal,
          "!=": np.not_equal}
#: node fields held as float columns with NaN for missing
_NUMERIC = ("load", "last_seen", "last_rollback", "trust")
_STATUS_VALUES = [s.value for s in STATUSES]
_BOOLS = [False, True]


class _Num:
    """A number column; ``nan_present``: a NaN is a value (not missing)."""

    __slots__ = ("get", "nan_present")

    def __init__(self, get: NumFn, nan_present: bool = False) -> None:
        self.get = get
        self.nan_present = nan_present

    def present(self, v: np.ndarray) -> np.ndarray:
        return np.ones(len(v), bool) if self.nan_present else ~np.isnan(v)


class _Codes:
    """A column of codes; ``transform`` (a helper) applies to the value of every code."""

    __slots__ = ("get", "transform")

    def __init__(self, get: CodeFn, transform: Callable[[Any], Any] | None = None) -> None:
        self.get = get
        self.transform = transform


class _Scalar:
    """One value for the whole tick: a literal (``constant``) or a ``cluster`` value."""

    __slots__ = ("get", "constant")

    def __init__(self, get: Callable[[EvalEnv], Any], constant: bool = False) -> None:
        self.get = get
        self.constant = constant


class _Lookup:
    """``f`` of the value of every code of a code column, as a boolean array indexed by
    code; kept from tick to tick and extended as the values grow (dictionary codes are
    stable: values are only ever appended)."""

    __slots__ = ("f", "transform", "values", "shift", "array")

    def __init__(self, f: Callable[[Any], bool], transform: Callable[[Any], Any] | None) -> None:
        self.f = f
        self.transform = transform
        self.values: Any = None
        self.shift = 0
        self.array = np.zeros(0, bool)

    def _of(self, value: Any) -> bool:
        value = MISSING if value is None else value
        if self.transform is not None:
            value = self.transform(value)
        return bool(self.f(value))

    def __call__(self, codes: np.ndarray, values: Sequence[Any], shift: int) -> np.ndarray:
        done = len(self.array) - self.shift
        if values is not self.values or shift != self.shift or done > len(values):
            self.values, self.shift, done = values, shift, 0
            self.array = np.array([self._of(MISSING)] * shift, bool)
        if done < len(values):
            more = np.fromiter((self._of(v) for v in values[done:]), bool, len(values) - done)
            self.array = np.concatenate([self.array, more])
        return self.array[codes]


#: helpers of one value and a literal, applied to each value of a code column
_VALUE_HELPERS = frozenset({"matches", "regex", "version_at_least", "version_below", "length"})


def _licence_value(expr: Expr) -> Callable[[Any], Any]:
    """The value of a licence field or ``entitled`` for one distinct licence result."""
    def value(fields: Any) -> Any:
        lic = NO_LICENCE if fields is MISSING else LicenceResult("", *fields)
        return evaluate(expr, None, lic, None)  # type: ignore[arg-type]

    return value


def _term(expr: Expr) -> _Num | _Codes | _Scalar | None:
    t = type(expr)
    if t is Ref and expr.root == "licence" or t is Call and expr.name == "entitled":
        return _Codes(lambda cols, env: cols.licences(), _licence_value(expr))
    if t is Const:
        value = expr.value
        return _Scalar(lambda env: value, constant=True)
    if t is Ref:
        if expr.root == "node" and expr.field == "metadata" and len(expr.path) == 1 and type(expr.path[0]) is str:
            key = expr.path[0]
            return _Codes(lambda cols, env: cols.metadata(key))
        if expr.path:
            return None
        if expr.root == "cluster":
            name = expr.field
            return _Scalar(lambda env: _present(env.cluster.get(name, MISSING)))
        if expr.root != "node":
            return None
        field = expr.field
        if field in _NUMERIC:
            return _Num(lambda cols, env: cols[field])
        if field == "registered_at":
            return _Num(lambda cols, env: cols["registered_at"], nan_present=True)
        if field == "status":
            return _Codes(lambda cols, env: (cols.codes("status"), _STATUS_VALUES, 0))
        if field == "isolated":
            return _Codes(lambda cols, env: (cols.codes("isolated"), _BOOLS, 0))
        if field == "trust_tier":  # code -1: none yet (missing); the names grow as tiers appear
            return _Codes(lambda cols, env: (cols.codes("tier", 1), cols.table.tier_names, 1))
        return None
    if t is Call:
        if expr.name == "heartbeat_age":
            return _Num(lambda cols, env: cols.age(env))
        if expr.name == "trust_at_least":
            at_least = helper_function("trust_at_least", expr.args[0].value)  # type: ignore[union-attr]
            return _Codes(lambda cols, env: (cols.codes("tier", 1), cols.table.tier_names, 1),
                          lambda v: at_least(None if v is MISSING else v))
        if expr.name in _VALUE_HELPERS:
            inner = _term(expr.args[0])
            if type(inner) is not _Codes:
                return None
            const = expr.args[1].value if len(expr.args) > 1 else None  # type: ignore[union-attr]
            fn, first = helper_function(expr.name, const), inner.transform
            return _Codes(inner.get, fn if first is None else (lambda v: fn(first(v))))
    return None


def _present(value: Any) -> Any:
    return MISSING if value is None else value


def compile_mask(expr: Expr) -> MaskFn | None:
    """A function giving ``expr``'s truth for every slot, or None when the columns cannot."""
    t = type(expr)
    if t is BoolOp:
        parts = [compile_mask(e) for e in expr.items]
        if any(p is None for p in parts):
            return None
        combine = np.logical_and if expr.op == "and" else np.logical_or

        def boolop(cols: Columns, env: EvalEnv) -> np.ndarray:
            out = parts[0](cols, env)  # type: ignore[misc]
            for part in parts[1:]:
                out = combine(out, part(cols, env))  # type: ignore[misc]
            return out

        return boolop
    if t is Not:
        inner = compile_mask(expr.operand)
        if inner is None:
            return None
        return lambda cols, env: ~inner(cols, env)
    if t is Cmp:
        return _compare(expr)
    if t is In:
        return _member(expr)
    if t is IsMissing:
        return _lookup(_term(expr.operand), lambda v: (v is MISSING) != expr.negated,
                       lambda num, v: np.full(len(v), expr.negated) if num.nan_present else np.isnan(v) != expr.negated)
    # a term alone: its truthiness (missing, 0, "", false are false; NaN is true)
    return _lookup(_term(expr), truthy, lambda num, v: num.present(v) & (v != 0) if not num.nan_present else v != 0)


def _lookup(term: Any, of_value: Callable[[Any], bool],
            of_numbers: Callable[[_Num, np.ndarray], np.ndarray]) -> MaskFn | None:
    """A mask from ``of_value`` of each value a code column or scalar can hold, or
    ``of_numbers`` over a number column."""
    if term is None:
        return None
    if type(term) is _Scalar:
        return lambda cols, env: np.full(len(cols), bool(of_value(term.get(env))))
    if type(term) is _Codes:
        lookup = _Lookup(of_value, term.transform)
        return lambda cols, env: lookup(*term.get(cols, env))
    return lambda cols, env: of_numbers(term, term.get(cols, env))


def _compare(expr: Cmp) -> MaskFn | None:
    op = expr.op
    left, right = _term(expr.left), _term(expr.right)
    if left is None or right is None:
        return None
    if type(left) is _Scalar and type(right) is not _Scalar:
        left, right, op = right, left, _FLIP[op]
    if type(left) is _Scalar:  # two values of the tick (a literal, cluster.x): the same for every node
        return lambda cols, env: np.full(len(cols), compare(op, left.get(env), right.get(env)))
    if type(right) is _Scalar:
        if type(left) is _Codes:
            return _codes_vs(left, op, right)
        return _numbers_vs(left, op, right)
    if type(left) is _Num and type(right) is _Num:
        ufunc = _UFUNC[op]

        def both(cols: Columns, env: EvalEnv) -> np.ndarray:
            a, b = left.get(cols, env), right.get(cols, env)
            with np.errstate(invalid="ignore"):
                return left.present(a) & right.present(b) & ufunc(a, b)

        return both
    return None  # two code columns, or a code column against a number column: the closures


def _codes_vs(term: _Codes, op: str, scalar: _Scalar) -> MaskFn:
    if scalar.constant:  # the lookup is kept from tick to tick
        c = scalar.get(None)  # type: ignore[arg-type]
        return _lookup(term, lambda v: compare(op, v, c), None)  # type: ignore[return-value]

    def codes(cols: Columns, env: EvalEnv) -> np.ndarray:
        s = scalar.get(env)  # a cluster value: this tick's
        return _Lookup(lambda v: compare(op, v, s), term.transform)(*term.get(cols, env))

    return codes


def _numbers_vs(term: _Num, op: str, scalar: _Scalar) -> MaskFn:
    def numbers(cols: Columns, env: EvalEnv) -> np.ndarray:
        v = term.get(cols, env)
        return _against(term, v, op, scalar.get(env))

    return numbers


def _against(term: _Num, v: np.ndarray, op: str, c: Any) -> np.ndarray:
    """``v op c`` for every value of a number column, as ``rules.interp.compare`` gives it."""
    kind = kind_of(c)
    if kind is None:  # missing: nothing compares with it
        return np.zeros(len(v), bool)
    if kind != "n":  # another kind: never equal, never ordered; "!=" holds when present
        return term.present(v) if op == "!=" else np.zeros(len(v), bool)
    with np.errstate(invalid="ignore"):
        exact = _as_float(c)
        if exact is not None:
            return term.present(v) & _UFUNC[op](v, exact) if op == "!=" else _UFUNC[op](v, exact)
        lo, hi = _neighbours(c)  # an integer between two floats: never equal to a float
        if op == "==":
            return np.zeros(len(v), bool)
        if op == "!=":
            return term.present(v)
        if op in ("<", "<="):
            return v <= lo
        return v >= hi


def _as_float(c: int | float) -> float | None:
    """``c`` as the float equal to it, None for an integer no float equals."""
    if type(c) is float:
        return c
    try:
        f = float(c)
    except OverflowError:
        return None
    return f if math.isfinite(f) and int(f) == c else None


def _neighbours(c: int) -> tuple[float, float]:
    """The floats just below and just above an integer no float equals."""
    try:
        f = float(c)
    except OverflowError:
        f = math.inf if c > 0 else -math.inf
    if math.isinf(f):
        return (math.nextafter(math.inf, 0), math.inf) if f > 0 else (-math.inf, math.nextafter(-math.inf, 0))
    if int(f) > c:
        return math.nextafter(f, -math.inf), f
    return f, math.nextafter(f, math.inf)


def _member(expr: In) -> MaskFn | None:
    if type(expr.container) is not ListLit:
        return None
    items = expr.container.items
    negated = expr.negated
    term = _term(expr.item)
    if term is None:
        return None
    if type(term) is not _Num:
        return _lookup(term, lambda v: contains(v, items, negated), None)
    numbers = [c for c in items if kind_of(c) == "n"]

    def member(cols: Columns, env: EvalEnv) -> np.ndarray:
        v = term.get(cols, env)
        found = np.zeros(len(v), bool)
        for c in numbers:
            found |= _against(term, v, "==", c)
        return term.present(v) & ~found if negated else found

    return member
