"""The durable-rules worker process: JSON lines in on stdin, JSON lines out on stdout.

Run by ``wyneos_core.rules.durable.DurableEngine`` as ``python -m
wyneos_core.rules.durable_worker``; never imported by the orchestrator itself, so the
C extension of durable-rules only ever runs in here. Messages:

``{"op": "load", "chunks": [chunk, ...]}``   define the rulesets (once): each chunk is
                                               ``{"rules": [[index, condition], ...],
                                               "properties": [slot, ...]}`` and becomes
                                               one durable-rules ruleset
``{"op": "eval", "facts": [fact, ...]}``       assert each fact (cut down to the
                                               properties of each chunk) into every
                                               ruleset, collect firings, retract them;
                                               answers ``{"ok": true, "fired":
                                               [[rule, nid], ...]}``
``{"op": "quit"}``                             answer and exit

The driving follows notes/durable-rules.md: one session per ruleset, ``assert_fact``
one at a time, ``MessageNotHandledException`` caught per fact, one uniquely named
function per rule, facts retracted after every evaluation.
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
        self.chunks: list[tuple[str, list[str]]] = []

    def load(self, chunks: list[dict]) -> dict:
        """Build one durable-rules ruleset per chunk; a chunk the engine refuses is split
        in halves and tried again, down to single rules: the answer then names the rule."""
        from durable.engine import Host

        self.host = Host()
        self.chunks = []
        count = 0
        pending = [([(int(i), c) for i, c in chunk["rules"]], chunk["properties"]) for chunk in chunks]
        pending.reverse()
        while pending:
            rules, properties = pending.pop()
            if not rules:
                continue
            name = f"{RULESET}{len(self.chunks)}_{count}"
            definition = {f"r{index}": {"all": [{"m": condition}], "run": self._action(index)}
                          for index, condition in rules}
            try:
                self.host.set_rulesets({name: definition})
            except Exception as exc:  # noqa: BLE001 - the engine's refusal, answered
                if len(rules) == 1:
                    return {"ok": False, "error": f"{exc}", "rule": rules[0][0]}
                half = len(rules) // 2
                pending.append((rules[half:], properties))
                pending.append((rules[:half], properties))
                continue
            count += len(rules)
            self.chunks.append((name, [p for p in properties if p != "nid"]))
        return {"ok": True, "rules": count, "rulesets": len(self.chunks)}

    def _action(self, index: int) -> Any:
        fired = self.fired

        def action(c: Any) -> None:
            fired.add((index, int(c.m["nid"])))

        action.__name__ = f"wyneos_rule_{index}"  # durable-rules names actions by function name
        return action

    def evaluate(self, facts: list[dict]) -> dict:
        from durable.engine import MessageNotHandledException

        self.fired.clear()
        host = self.host
        for name, properties in self.chunks:
            cut = []
            for fact in facts:
                small = {"nid": fact["nid"]}
                for p in properties:
                    if p in fact:
                        small[p] = fact[p]
                cut.append(small)
            for fact in cut:
                try:
                    host.assert_fact(name, fact)
                except MessageNotHandledException:
                    pass
            for fact in cut:
                try:
                    host.retract_fact(name, fact)
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
                reply = worker.load(message["chunks"])
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
