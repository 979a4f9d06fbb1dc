"""The durable-rules engine: the IR translated into durable-rules conditions.

Translation (at load time). Every *value term* of a condition (a field such as
``node.load`` or ``node.metadata.region``, or a helper call such as
``heartbeat_age(node)``) becomes a set of typed slots in the fact asserted for each node:
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

Execution (per tick) follows ``notes/durable-rules.md``: the rules spread over a few
small durable-rules rulesets (``CHUNK_RULES`` says why), one session each, facts
asserted one at a time, ``MessageNotHandledException`` caught for facts no rule
matches, a unique function name per rule, all facts retracted after the tick. It runs
in a worker process (``wyneos_core.rules.durable_worker``) spoken to over JSON lines,
so a segmentation fault or a hang inside the C extension is detected (process exit,
timeout), reported as ``DurableEngineError`` and never takes the orchestrator down.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from wyneos_core.model import LicenceResult, Node
from wyneos_core.rules.interp import EvalEnv
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
    walk,
)
from wyneos_core.rules.native import compile_value

__all__ = [
    "DurableEngine",
    "DurableEngineError",
    "DurableRefused",
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


class DurableEngineError(RuntimeError):
    """The durable-rules worker crashed, hung or answered nonsense during a tick."""


class DurableRefused(DurableEngineError):
    """durable-rules refused to build the rules (a limit of its C extension).

    ``rule`` is the 0-based index of the rule it refused, when known.
    """

    def __init__(self, message: str, rule: int | None = None) -> None:
        super().__init__(message)
        self.rule = rule


#: durable-rules 2.0.28 error codes (its rules.h) in plain words
_ERROR_CODES: Final = {
    "101": "out of memory",
    "106": "too many tests on one property",
    "107": "too many 'is missing' tests side by side",
    "108": "too many joins",
    "113": "the condition is longer than durable-rules' expression limit",
    "201": "a value it cannot parse", "202": "a string it cannot parse", "203": "a number it cannot parse",
    "204": "an object it cannot parse", "205": "an array it cannot parse",
    "302": "a fact with too many properties",
    "303": "a fact matching more branches at once than its evaluation stack holds",
}


def explain_error(text: str) -> str:
    """``text`` with durable-rules' numeric error code explained, when it has one."""
    m = re.search(r"error code: (\d+)", text)
    if m and m.group(1) in _ERROR_CODES:
        return f"{text} ({_ERROR_CODES[m.group(1)]})"
    return text


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


class DurableEngine:
    """Evaluates conditions with durable-rules in a worker process.

    :param conditions: the IR of each rule's active condition.
    :param timeout: seconds one tick's evaluation may take before the worker is
        declared hung and killed.
    :raises DurableUnsupported: at construction, for a condition it cannot express.
    """

    name = "durable"

    def __init__(self, conditions: Sequence[Expr], timeout: float = 60.0) -> None:
        translation = translate(conditions)
        self.conditions = translation.conditions
        self.chunks = [{"rules": [[i, self.conditions[i]] for i in chunk],
                        "properties": sorted(set().union(*(properties_of(self.conditions[i]) for i in chunk)))}
                       for chunk in translation.chunks]
        self.timeout = timeout
        self._terms = [(compile_value(t), frozenset(s), numbers, strings)
                       for t, s, (numbers, strings) in zip(translation.terms, translation.slots, translation.tables)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._buffer = b""

    # -- facts --------------------------------------------------------------------------------

    def facts(self, nodes: Sequence[Node], lics: Sequence[LicenceResult], env: EvalEnv) -> list[dict]:
        """One durable-rules fact per node: its index and the typed slots of every term.

        Numbers and strings are sent as rank codes (see the module docstring); a NaN
        gets no number slot.
        """
        out = []
        code = rank_code
        terms = [(f"t{i}_", fn, "p" in slots, "t" in slots, "b" in slots, "n" in slots, "s" in slots,
                  numbers, strings)
                 for i, (fn, slots, numbers, strings) in enumerate(self._terms)]
        for index, (node, lic) in enumerate(zip(nodes, lics)):
            fact: dict[str, Any] = {"nid": index}
            for prefix, fn, p_slot, t_slot, b_slot, n_slot, s_slot, numbers, strings in terms:
                v = fn(node, lic, env)
                if v is MISSING:
                    continue
                if p_slot:
                    fact[prefix + "p"] = 1
                if t_slot and v:
                    fact[prefix + "t"] = 1
                tv = type(v)
                if tv is bool:
                    if b_slot:
                        fact[prefix + "b"] = "true" if v else "false"
                elif tv is int or tv is float:
                    if n_slot and v == v:  # NaN: no rank, like a value of another kind
                        fact[prefix + "n"] = code(numbers, v)
                elif tv is str:
                    if s_slot:
                        fact[prefix + "s"] = code(strings, v)
            out.append(fact)
        return out

    # -- the worker ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "wyneos_core.rules.durable_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
        )
        self._buffer = b""
        reply = self._exchange({"op": "load", "chunks": self.chunks}, timeout=max(30.0, self.timeout))
        if not reply.get("ok"):
            self._kill()
            rule = reply.get("rule")
            where = f"rule #{rule + 1}: " if isinstance(rule, int) else ""
            raise DurableRefused(f"{where}durable-rules refused the ruleset: {explain_error(str(reply.get('error')))}",
                                 rule if isinstance(rule, int) else None)

    def start(self) -> None:
        """Start the worker and load the rules into durable-rules now (not at the first tick).

        :raises DurableRefused: durable-rules refused a rule (``rule`` is its index).
        :raises DurableEngineError: the worker crashed or hung while loading.
        """
        if self._proc is not None and self._proc.poll() is None:
            return
        self._start()

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before the first evaluation)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _exchange(self, message: dict, timeout: float) -> dict:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        write_error: list[BaseException] = []

        def write() -> None:
            try:
                proc.stdin.write(data)  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError, ValueError) as exc:
                write_error.append(exc)

        writer = threading.Thread(target=write, name="wyneos-durable-writer", daemon=True)
        writer.start()
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._kill()
                    raise DurableEngineError(f"durable-rules worker did not answer within {timeout:g}s (hung); "
                                             "it was killed")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise DurableEngineError(f"durable-rules worker died ({self._death()})")
                self._buffer += chunk
        writer.join(timeout=1.0)
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            self._kill()
            raise DurableEngineError(f"durable-rules worker answered garbage: {line[:80]!r}") from None
        if not isinstance(reply, dict):
            self._kill()
            raise DurableEngineError("durable-rules worker answered garbage")
        return reply

    def _death(self) -> str:
        proc = self._proc
        code = proc.wait(timeout=5) if proc is not None else None
        self._proc = None
        if code is not None and code < 0:
            try:
                what = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                what = f"killed by signal {-code}"
        else:
            what = f"exit status {code}"
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip().splitlines()
            tail = f"; last output: {text[-1][:200]}" if text else ""
        return what + tail

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def evaluate(self, nodes: Sequence[Node], lics: Sequence[LicenceResult], env: EvalEnv) -> list[list[int]]:
        """For each condition, the indexes of the nodes on which durable-rules fired it.

        :raises DurableEngineError: the worker crashed, hung or failed; it is restarted
            at the next call.
        """
        facts = self.facts(nodes, lics, env)
        if self._proc is not None and self._proc.poll() is not None:
            raise DurableEngineError(f"durable-rules worker died between ticks ({self._death()})")
        if self._proc is None:
            self._start()
        reply = self._exchange({"op": "eval", "facts": facts}, timeout=self.timeout)
        if not reply.get("ok"):
            self._kill()
            raise DurableEngineError(f"durable-rules failed: {explain_error(str(reply.get('error')))}")
        out: list[set[int]] = [set() for _ in self.conditions]
        for rule, nid in reply.get("fired", []):
            out[rule].add(nid)
        return [sorted(s) for s in out]

    def close(self) -> None:
        """Stop the worker process."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._exchange({"op": "quit"}, timeout=2.0)
            except DurableEngineError:
                pass
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self._kill()
        except Exception:  # noqa: BLE001
            pass
