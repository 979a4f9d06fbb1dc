"""The durable-rules worker process: JSON lines in on stdin, JSON lines out on stdout.

Run by ``wyneos_core.rules.durable.DurableEngine`` as ``python -m
wyneos_core.rules.durable_worker``; never imported by the orchestrator itself, so the
C extension of durable-rules only ever runs in here. Messages:

``{"op": "load", "rules": [condition, ...]}``  define the ruleset (once)
``{"op": "eval", "facts": [fact, ...]}``       assert each fact, collect firings, retract
                                               them; answers ``{"ok": true, "fired":
                                               [[rule, nid], ...]}``
``{"op": "quit"}``                             answer and exit

The driving follows notes/durable-rules.md: one session, ``assert_fact`` one at a time,
``MessageNotHandledException`` caught per fact, one uniquely named function per rule,
facts retracted after every evaluation.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO

__all__ = ["main"]

RULESET = "wyneos"


class _Worker:
    def __init__(self) -> None:
        self.host: Any = None
        self.fired: set[tuple[int, int]] = set()
        self.count = 0

    def load(self, rules: list[dict]) -> dict:
        from durable.engine import Host

        definition = {}
        for index, condition in enumerate(rules):
            definition[f"r{index}"] = {"all": [{"m": condition}], "run": self._action(index)}
        self.count = len(rules)
        self.host = Host()
        if definition:
            self.host.set_rulesets({RULESET: definition})
        return {"ok": True, "rules": len(rules)}

    def _action(self, index: int) -> Any:
        fired = self.fired

        def action(c: Any) -> None:
            fired.add((index, int(c.m["nid"])))

        action.__name__ = f"wyneos_rule_{index}"  # durable-rules names actions by function name
        return action

    def evaluate(self, facts: list[dict]) -> dict:
        from durable.engine import MessageNotHandledException

        self.fired.clear()
        if self.count == 0:
            return {"ok": True, "fired": []}
        host = self.host
        for fact in facts:
            try:
                host.assert_fact(RULESET, fact)
            except MessageNotHandledException:
                pass
        for fact in facts:
            try:
                host.retract_fact(RULESET, fact)
            except MessageNotHandledException:
                pass
        return {"ok": True, "fired": sorted(self.fired)}


def _serve(inp: BinaryIO, out: BinaryIO) -> int:
    worker = _Worker()
    for raw in inp:
        try:
            message = json.loads(raw)
            op = message.get("op")
            if op == "load":
                reply = worker.load(message["rules"])
            elif op == "eval":
                reply = worker.evaluate(message["facts"])
            elif op == "quit":
                out.write(b'{"ok":true}\n')
                out.flush()
                return 0
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:  # noqa: BLE001 - answered, the parent decides
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        out.flush()
    return 0


def main() -> int:
    # keep the protocol channel for ourselves: anything the engine prints goes to stderr
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    code = _serve(sys.stdin.buffer, protocol)
    protocol.close()
    os._exit(code)  # durable-rules leaves timer threads behind


if __name__ == "__main__":
    main()
