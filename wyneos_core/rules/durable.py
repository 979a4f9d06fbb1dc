"""The durable-rules engine: the IR translated into durable-rules conditions.

Translation (at load time). Every *value term* of a condition (a field such as
``node.load`` or ``node.metadata.region``, or a helper call such as
``heartbeat_age(node)``) becomes a set of typed slots in the fact asserted for each node:
``t3_p`` (present), ``t3_n`` (its value if a number), ``t3_s`` (if a string), ``t3_b``
(``"true"``/``"false"`` if a boolean), ``t3_t`` (present only when truthy). Typed slots
keep durable-rules from comparing a string with a number, or ``true`` with ``1``
(it does both). The boolean structure is pushed into negation normal form, every
leaf with an exact negative form, so the shared semantics (a comparison with a missing
value is false, ``not`` of it is true) hold. Helper values are computed in Python when
the facts are built; durable-rules matches the comparisons and the logic.

Refused for this engine at load time (``DurableUnsupported``; use ``engine: native``):
arithmetic, comparing two fields with each other, ``in`` over a field rather than a
literal list, and conditions whose disjunctive normal form exceeds ``MAX_DNF`` terms
(durable-rules expands ``or`` into one rule path per term).

Execution (per tick) follows ``notes/durable-rules.md``: one ruleset and one session,
facts asserted one at a time, ``MessageNotHandledException`` caught for facts no rule
matches, a unique function name per rule, all facts retracted after the tick. It runs
in a worker process (``wyneos_core.rules.durable_worker``) spoken to over JSON lines,
so a segmentation fault or a hang inside the C extension is detected (process exit,
timeout), reported as ``DurableEngineError`` and never takes the orchestrator down.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

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
)
from wyneos_core.rules.native import compile_value

__all__ = ["DurableEngine", "DurableEngineError", "DurableUnsupported", "MAX_DNF", "translate"]

MAX_DNF: Final = 256

_TRUE: Final = {"$ex": {"nid": 1}}
_FALSE: Final = {"$nex": {"nid": 1}}
_NEG_ORDER = {"<": "$gte", "<=": "$gt", ">": "$lte", ">=": "$lt"}
_ORDER = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


class DurableUnsupported(ValueError):
    """A condition durable-rules cannot express faithfully; refused at load time."""


class DurableEngineError(RuntimeError):
    """The durable-rules worker crashed, hung or answered nonsense during a tick."""


def _is_term(e: Expr) -> bool:
    return type(e) in (Ref, Call)


class _Translator:
    def __init__(self) -> None:
        self.terms: list[Expr] = []
        self.slots: list[set[str]] = []
        self._index: dict[Expr, int] = {}

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
        value = ("true" if c else "false") if kind == "b" else c
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
        if positive:
            return {_ORDER[op]: {slot: c}}
        return {"$or": [{"$nex": {slot: 1}}, {_NEG_ORDER[op]: {slot: c}}]}

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


def _dnf_size(cond: dict) -> int:
    if "$and" in cond:
        size = 1
        for part in cond["$and"]:
            size *= _dnf_size(part)
            if size > MAX_DNF:
                return size
        return size
    if "$or" in cond:
        return sum(_dnf_size(part) for part in cond["$or"])
    return 1


def translate(conditions: Sequence[Expr]) -> tuple[list[dict], list[Expr], list[set[str]]]:
    """The durable-rules condition of each rule, and the value terms the facts carry.

    :raises DurableUnsupported: naming the rule (by index, ``rule #N``) and the reason.
    """
    tr = _Translator()
    out = []
    for index, cond in enumerate(conditions):
        try:
            json_cond = tr.tr(cond, True)
        except DurableUnsupported as exc:
            raise DurableUnsupported(f"rule #{index + 1}: {exc}") from None
        size = _dnf_size(json_cond)
        if size > MAX_DNF:
            raise DurableUnsupported(
                f"rule #{index + 1}: condition expands to more than {MAX_DNF} alternatives for durable-rules")
        out.append({"$and": [_TRUE, json_cond]})
    return out, tr.terms, tr.slots


class DurableEngine:
    """Evaluates conditions with durable-rules in a worker process.

    :param conditions: the IR of each rule's active condition.
    :param timeout: seconds one tick's evaluation may take before the worker is
        declared hung and killed.
    :raises DurableUnsupported: at construction, for a condition it cannot express.
    """

    name = "durable"

    def __init__(self, conditions: Sequence[Expr], timeout: float = 60.0) -> None:
        self.conditions, terms, slots = translate(conditions)
        self.timeout = timeout
        self._terms = [(compile_value(t), frozenset(s)) for t, s in zip(terms, slots)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._buffer = b""

    # -- facts --------------------------------------------------------------------------------

    def facts(self, nodes: Sequence[Node], lics: Sequence[LicenceResult], env: EvalEnv) -> list[dict]:
        """One durable-rules fact per node: its index and the typed slots of every term."""
        out = []
        terms = [(f"t{i}_", fn, slots) for i, (fn, slots) in enumerate(self._terms)]
        for index, (node, lic) in enumerate(zip(nodes, lics)):
            fact: dict[str, Any] = {"nid": index}
            for prefix, fn, slots in terms:
                v = fn(node, lic, env)
                if v is MISSING:
                    continue
                if "p" in slots:
                    fact[prefix + "p"] = 1
                if "t" in slots and v:
                    fact[prefix + "t"] = 1
                tv = type(v)
                if tv is bool:
                    if "b" in slots:
                        fact[prefix + "b"] = "true" if v else "false"
                elif tv is int or tv is float:
                    if "n" in slots:
                        fact[prefix + "n"] = v
                elif tv is str:
                    if "s" in slots:
                        fact[prefix + "s"] = v
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
        reply = self._exchange({"op": "load", "rules": self.conditions}, timeout=max(30.0, self.timeout))
        if not reply.get("ok"):
            self._kill()
            raise DurableEngineError(f"durable-rules refused the ruleset: {reply.get('error')}")

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
            raise DurableEngineError(f"durable-rules failed: {reply.get('error')}")
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
