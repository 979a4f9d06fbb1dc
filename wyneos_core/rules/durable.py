"""The durable-rules engine: rules evaluated by durable-rules in a worker process.

Translation (at load time, ``wyneos_core.rules.durable_translate``): every value term of
a condition becomes typed slots of the fact asserted for each node, numbers and strings
sent as rank codes among the literals they are compared with, the boolean structure in
negation normal form. Refused for this engine at load time (``DurableUnsupported``; use
``engine: native``): what that module's docstring lists, and (found by loading the rules
into a worker, ``DurableEngine.start``) anything the C extension's fixed limits refuse.

Execution (per tick) follows ``notes/durable-rules.md``: the rules spread over a few
small durable-rules rulesets (``CHUNK_RULES`` says why), one session each, facts
asserted one at a time, ``MessageNotHandledException`` caught for facts no rule
matches, a unique function name per rule, all facts retracted after the tick. It runs
in a worker process (``wyneos_core.rules.durable_worker``) spoken to over JSON lines,
so a segmentation fault or a hang inside the C extension is detected (process exit,
timeout), reported as ``DurableEngineError`` and never takes the orchestrator down.
"""

from __future__ import annotations

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
from typing import Any, Final

from wyneos_core.model import LicenceResult, Node
from wyneos_core.rules.durable_translate import (CHUNK_PROPERTIES, CHUNK_RULES, CHUNK_TESTS, MAX_DNF,
                                                MAX_DURABLE_RULES, DurableUnsupported, Translation, chunk_rules,
                                                properties_of, rank_code, translate)
from wyneos_core.rules.interp import EvalEnv
from wyneos_core.rules.ir import MISSING, Expr
from wyneos_core.rules.native import compile_value

#: the engine; and, as before the translation moved to ``durable_translate``, its names
__all__ = ["DurableEngine", "DurableEngineError", "DurableRefused", "DurableUnsupported", "CHUNK_PROPERTIES",
           "CHUNK_RULES", "CHUNK_TESTS", "MAX_DNF", "MAX_DURABLE_RULES", "Translation", "chunk_rules", "properties_of",
           "rank_code", "translate"]


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
