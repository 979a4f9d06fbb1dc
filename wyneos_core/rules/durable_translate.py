"""The IR translated into durable-rules conditions (at load time), for ``DurableEngine``
(``wyneos_core.rules.durable``).

Every *value term* of a condition (a field such as ``node.load`` or
``node.metadata.region``, or a helper call such as ``heartbeat_age(node)``) becomes a set of typed slots in the fact asserted for each node:
``t3_p`` (present), ``t3_n`` (its value if a number), ``t3_s`` (if a string), ``t3_b``
(``"true"``/``"false"`` if a boolean), ``t3_t`` (present only when truthy). Typed slots
keep durable-rules from comparing a string with a number, or ``true`` with ``1``
(it does both). Numbers and strings never reach durable-rules as themselves: each
literal a term is compared with gets a rank among that term's sorted literals, and a
node's value is sent as its rank code (``2k+1`` when equal to the k-th literal, ``2k``
when it falls between literals k-1 and k), a small integer. Every comparison with a
literal then gives exactly what Python's comparison gives (no float formatting, no
precision loss past 2**53, no exponent forms the engine's JSON parser refuses, no lone
surrogates or NUL bytes in strings), and the facts stay small. A NaN has no rank:
like a value of another kind, it is present, truthy, unequal to every number and
unordered. The boolean structure is pushed into negation normal form, every
leaf with an exact negative form, so the shared semantics (a comparison with a missing
value is false, ``not`` of it is true) hold. Helper values are computed in Python when
the facts are built; durable-rules matches the comparisons and the logic.

Refused for this engine at load time (``DurableUnsupported``; use ``engine: native``):
arithmetic, comparing two fields with each other, ``in`` over a field rather than a
literal list, a condition whose disjunctive normal form has more than ``MAX_DNF``
alternatives (durable-rules expands ``or`` into one rule path per alternative), more
than ``MAX_DURABLE_RULES`` rules in one ruleset, and (found by loading the rules into a
worker, ``DurableEngine.start``) anything the C extension's fixed limits refuse.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from wyneos_core.rules.ir import (
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
    walk,
)

__all__ = [
    "DurableUnsupported",
    "CHUNK_PROPERTIES",
    "CHUNK_RULES",
    "CHUNK_TESTS",
    "MAX_DNF",
    "MAX_DURABLE_RULES",
    "Translation",
    "chunk_rules",
    "properties_of",
    "rank_code",
    "translate",
]

#: alternatives one condition may expand to in disjunctive normal form
MAX_DNF: Final = 256
#: durable-rules 2.0.28 has fixed limits inside its C extension: it walks its alpha
#: network with a stack of 64 entries and fails a fact that matches more branches at
#: once (error 303), stops answering past 512 rules in one ruleset, refuses long lists
#: of "does not exist" tests (error 107) and long expressions (error 113). The rules
#: are therefore spread over several small durable-rules rulesets in the worker (each
#: fact is asserted into every one), none with more than ``CHUNK_RULES`` rules or
#: ``CHUNK_TESTS`` leaf tests; a ruleset the engine still refuses is refused at load
#: time (``DurableEngine.start``), naming the rule.
CHUNK_RULES: Final = 16
CHUNK_TESTS: Final = 256
#: fact properties one chunk may read (durable-rules refuses facts with more than 255)
CHUNK_PROPERTIES: Final = 120
#: rules one durable ruleset file may hold
MAX_DURABLE_RULES: Final = 500

_TRUE: Final = {"$ex": {"nid": 1}}
_FALSE: Final = {"$nex": {"nid": 1}}
_NEG_ORDER = {"<": "$gte", "<=": "$gt", ">": "$lte", ">=": "$lt"}
_ORDER = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


class DurableUnsupported(ValueError):
    """A condition durable-rules cannot express faithfully; refused at load time."""


def _is_term(e: Expr) -> bool:
    return type(e) in (Ref, Call)


def _literal_kind(c: Any) -> str | None:
    t = type(c)
    if t is int or t is float:
        return "n"
    if t is str:
        return "s"
    return None


def rank_code(table: Sequence[Any], value: Any) -> int:
    """The rank code of ``value`` among the sorted literals ``table``.

    ``2k+1`` when ``value`` equals ``table[k]``, ``2k`` when it lies between
    ``table[k-1]`` and ``table[k]``: for every literal ``c = table[k]`` and every
    ``op``, ``value op c`` is ``rank_code(value) op 2k+1``.
    """
    i = bisect.bisect_left(table, value)
    return 2 * i + 1 if i < len(table) and table[i] == value else 2 * i


def _literal_tables(conditions: Sequence[Expr]) -> dict[tuple[Expr, str], list[Any]]:
    """Per (term, kind): the sorted literals the term is compared with anywhere."""
    found: dict[tuple[Expr, str], set[Any]] = {}

    def add(term: Expr, c: Any) -> None:
        kind = _literal_kind(c)
        if kind is not None:
            found.setdefault((term, kind), set()).add(c)

    for cond in conditions:
        for e in walk(cond):
            if type(e) is Cmp:
                if _is_term(e.left) and type(e.right) is Const:
                    add(e.left, e.right.value)
                elif _is_term(e.right) and type(e.left) is Const:
                    add(e.right, e.left.value)
            elif type(e) is In and type(e.container) is ListLit and _is_term(e.item):
                for c in e.container.items:
                    add(e.item, c)
    return {key: sorted(values) for key, values in found.items()}


class _Translator:
    def __init__(self, tables: dict[tuple[Expr, str], list[Any]]) -> None:
        self.terms: list[Expr] = []
        self.slots: list[set[str]] = []
        self._index: dict[Expr, int] = {}
        self.tables = tables

    def code(self, t: Expr, kind: str, c: Any) -> int:
        """The rank code of literal ``c`` in the table of term ``t`` (always odd)."""
        return rank_code(self.tables[(t, kind)], c)

    def term(self, e: Expr, slot: str) -> str:
        i = self._index.get(e)
        if i is None:
            i = self._index[e] = len(self.terms)
            self.terms.append(e)
            self.slots.append(set())
        self.slots[i].add(slot)
        return f"t{i}_{slot}"

    # -- leaves -------------------------------------------------------------------------------

    def eq(self, t: Expr, c: Any, positive: bool) -> dict:
        kind = "b" if type(c) is bool else ("n" if type(c) in (int, float) else "s")
        slot = self.term(t, kind)
        value = ("true" if c else "false") if kind == "b" else self.code(t, kind, c)
        if positive:
            return {slot: value}
        return {"$or": [{"$nex": {slot: 1}}, {"$neq": {slot: value}}]}

    def present(self, t: Expr, positive: bool) -> dict:
        return {"$ex" if positive else "$nex": {self.term(t, "p"): 1}}

    def ne(self, t: Expr, c: Any, positive: bool) -> dict:
        if positive:
            return {"$and": [self.present(t, True), self.eq(t, c, False)]}
        return {"$or": [self.present(t, False), self.eq(t, c, True)]}

    # -- structure ----------------------------------------------------------------------------

    def tr(self, e: Expr, positive: bool) -> dict:
        t = type(e)
        if t is Const:
            return _TRUE if bool(e.value) == positive else _FALSE
        if t is BoolOp:
            parts = [self.tr(x, positive) for x in e.items]
            is_and = (e.op == "and") == positive
            return {"$and" if is_and else "$or": parts}
        if t is Not:
            return self.tr(e.operand, not positive)
        if t is IsMissing:
            if not _is_term(e.operand):
                raise DurableUnsupported("'is missing' applies to a field or helper here, not to a computed value")
            return self.present(e.operand, e.negated == positive)
        if t is Cmp:
            return self.cmp(e, positive)
        if t is In:
            return self.member(e, positive)
        if t in (Ref, Call):
            return {"$ex" if positive else "$nex": {self.term(e, "t"): 1}}
        if t in (Arith, Neg):
            raise DurableUnsupported("arithmetic is not supported by the durable engine")
        raise DurableUnsupported(f"{type(e).__name__} is not supported by the durable engine")

    def cmp(self, e: Cmp, positive: bool) -> dict:
        left, right, op = e.left, e.right, e.op
        if type(left) is Const and type(right) is not Const:
            left, right, op = right, left, _FLIP[op]
        if type(left) is Const:
            from wyneos_core.rules.interp import compare

            return _TRUE if compare(op, left.value, right.value) == positive else _FALSE  # type: ignore[union-attr]
        if type(right) is not Const:
            if type(left) in (Arith, Neg) or type(right) in (Arith, Neg):
                raise DurableUnsupported("arithmetic is not supported by the durable engine")
            raise DurableUnsupported("the durable engine compares a field with a literal, not two values")
        if not _is_term(left):
            if type(left) in (Arith, Neg):
                raise DurableUnsupported("arithmetic is not supported by the durable engine")
            raise DurableUnsupported("the durable engine compares a field or helper with a literal, "
                                     "not the result of a comparison or of boolean logic")
        c = right.value
        if op == "==":
            return self.eq(left, c, positive)
        if op == "!=":
            return self.ne(left, c, positive)
        kind = "n" if type(c) in (int, float) else "s"
        slot = self.term(left, kind)
        code = self.code(left, kind, c)
        if positive:
            return {_ORDER[op]: {slot: code}}
        return {"$or": [{"$nex": {slot: 1}}, {_NEG_ORDER[op]: {slot: code}}]}

    def member(self, e: In, positive: bool) -> dict:
        if type(e.container) is not ListLit:
            raise DurableUnsupported("the durable engine supports 'in' over a literal list only")
        if not _is_term(e.item):
            raise DurableUnsupported("the durable engine supports 'in' for a field or helper only")
        items = list(dict.fromkeys((type(c), c) for c in e.container.items))
        found = {"$or": [self.eq(e.item, c, True) for _, c in items]} if items else _FALSE
        none_eq = {"$and": [self.eq(e.item, c, False) for _, c in items]} if items else _TRUE
        if not e.negated:
            return found if positive else none_eq
        if positive:  # present and equal to none
            return {"$and": [self.present(e.item, True), none_eq]}
        return {"$or": [self.present(e.item, False), found]}


def _shape(cond: dict) -> tuple[int, int]:
    """(alternatives, tests) of ``cond`` in disjunctive normal form.

    ``tests`` counts every leaf test of every alternative: an upper bound of the
    alpha nodes durable-rules builds for the condition.
    """
    if "$and" in cond:
        alts, tests = 1, 0
        for part in cond["$and"]:
            a, t = _shape(part)
            alts, tests = alts * a, tests * a + t * alts
            if alts > MAX_DNF:
                return alts, max(tests, alts)
        return alts, tests
    if "$or" in cond:
        alts = tests = 0
        for part in cond["$or"]:
            a, t = _shape(part)
            alts, tests = alts + a, tests + t
        return alts, tests
    return 1, 1


def properties_of(cond: dict) -> set[str]:
    """The fact properties (slot names) a durable-rules condition reads."""
    out: set[str] = set()
    stack = [cond]
    while stack:
        d = stack.pop()
        for key, value in d.items():
            if key in ("$and", "$or"):
                stack.extend(value)
            elif key.startswith("$"):
                out.update(value)
            else:
                out.add(key)
    return out


def chunk_rules(costs: Sequence[int], properties: Sequence[set[str]], max_rules: int = CHUNK_RULES,
                max_tests: int = CHUNK_TESTS, max_properties: int = CHUNK_PROPERTIES) -> list[list[int]]:
    """Consecutive rule indexes grouped: at most ``max_rules`` per group, tests adding up
    to at most ``max_tests`` and at most ``max_properties`` fact properties read (a rule
    alone past a limit is alone in its group)."""
    chunks: list[list[int]] = []
    total = max_tests + 1
    props: set[str] = set()
    for index, (cost, own) in enumerate(zip(costs, properties)):
        if (not chunks or total + cost > max_tests or len(chunks[-1]) >= max_rules
                or len(props | own) > max_properties):
            chunks.append([])
            total = 0
            props = set()
        chunks[-1].append(index)
        total += cost
        props |= own
    return chunks


class Translation(NamedTuple):
    """What ``translate`` gives: the durable-rules conditions and how to build facts."""

    #: the durable-rules condition of each rule
    conditions: list[dict]
    #: the value terms a fact carries, in slot order (``t0_``, ``t1_``...)
    terms: list[Expr]
    #: the slots of each term (``p``, ``t``, ``b``, ``n``, ``s``)
    slots: list[set[str]]
    #: per term, the sorted number literals and string literals its rank codes refer to
    tables: list[tuple[list[Any], list[Any]]]
    #: rule indexes grouped into the durable-rules rulesets the worker builds
    chunks: list[list[int]]


def translate(conditions: Sequence[Expr]) -> Translation:
    """The durable-rules condition of each rule, and the value terms the facts carry.

    :raises DurableUnsupported: naming the rule (by index, ``rule #N``) and the reason.
    """
    tables = _literal_tables(conditions)
    tr = _Translator(tables)
    out: list[dict] = []
    costs: list[int] = []
    for index, cond in enumerate(conditions):
        try:
            json_cond = tr.tr(cond, True)
        except DurableUnsupported as exc:
            raise DurableUnsupported(f"rule #{index + 1}: {exc}") from None
        full = {"$and": [_TRUE, json_cond]}
        alts, tests = _shape(full)
        if alts > MAX_DNF:
            raise DurableUnsupported(
                f"rule #{index + 1}: condition expands to more than {MAX_DNF} alternatives for durable-rules")
        out.append(full)
        costs.append(tests)
    if len(out) > MAX_DURABLE_RULES:
        raise DurableUnsupported(f"more than {MAX_DURABLE_RULES} rules for the durable engine; split the ruleset")
    per_term = [(tables.get((t, "n"), []), tables.get((t, "s"), [])) for t in tr.terms]
    return Translation(out, tr.terms, tr.slots, per_term,
                       chunk_rules(costs, [properties_of(c) for c in out]))
