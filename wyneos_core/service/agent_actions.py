"""What an agent does with the actions it is handed (``wyneos_core.service.agent``).

Each action is an envelope signed by the orchestrator key (``signed_actions``); the
agent verifies it, applies it and acknowledges it with an acknowledgement signed by
the node key. It refuses, logs and reports to the server (with its next
acknowledgement) every action that is unsigned, badly signed, signed by another key,
malformed or expired. A validly signed action addressed to another node, of a type it
does not know, or seen before (a replay, or a redelivery after a lost
acknowledgement) is not applied: it is acknowledged as ``ignored`` (a replay: with the
outcome it had) saying why. Each issuance (action id and ``issued_at``) is remembered
in the state file (bounded: the oldest are forgotten once expired, or past the bound,
after which anything issued before them is refused as a replay). The actions of one
answer are applied in the order they were issued, and an ``isolate`` or ``reinstate``
issued before the one that last changed the node's isolation is not applied
(``superseded``), so reordering or holding back envelopes cannot undo a later
decision. As a witness of the mesh, the agent also carries signed actions to
neighbours the orchestrator cannot reach, and applies those a neighbour carries to it,
exactly as those handed over directly. Every applied action is logged to
``<state-dir>/actions.log`` (JSON lines).

``AgentActions`` is the part of ``Agent`` that does this.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wyneos_core.service import signed_actions as sa

log = logging.getLogger("wyneos.agent")


@dataclass(slots=True)
class AgentStats:
    """What an agent did since it started; the lists keep only their latest ``KEPT`` entries."""

    KEPT: ClassVar[int] = 1000

    sent: int = 0
    accepted: int = 0
    refused: int = 0
    failures: int = 0
    enrolments: int = 0
    applied: list[str] = field(default_factory=list)
    #: the latest waits (seconds) before retrying an unreachable server
    backoffs: list[float] = field(default_factory=list)
    #: actions failed or ignored, as ``type:target:status``
    not_applied: list[str] = field(default_factory=list)
    #: the latest actions refused before use (unsigned, bad signature, expired...), as
    #: ``reason:action id`` (the last ``KEPT`` of them: a hostile server cannot grow it)
    refused_actions: list[str] = field(default_factory=list)
    #: every refusal made since start (``refused_actions`` keeps only the latest)
    refusals_made: int = 0
    #: issuances delivered again (replays, redeliveries): not applied twice
    replayed: int = 0
    #: heartbeat attempts (sent or not): what ``count`` counts
    attempts: int = 0
    #: answers refused as malformed, too big or too slow
    bad_answers: int = 0
    #: signed actions pushed to neighbours as a relay
    relayed: int = 0


class AgentActions:
    """Verifying, applying, acknowledging and relaying signed actions (a part of ``Agent``,
    which provides the attributes below, ``_save_state`` and ``_request``)."""

    #: issuances remembered for replay protection
    MAX_SEEN = 4096
    #: refusal reports kept until the server has them
    MAX_REPORTS = 100

    node_id: str
    key: Any
    state: dict[str, Any]
    state_dir: Path
    stats: AgentStats
    trusted: sa.TrustedKeys
    hook: str | None
    hook_types: frozenset[str]
    clock_tolerance: float
    peer: Any
    _apply_lock: threading.RLock

    def _report(self, reason: str, detail: str, action_id: str | None) -> None:
        """Log a refusal and keep it for the server (sent with the next acknowledgement)."""
        if action_id is not None and not sa.ID_PATTERN.match(action_id):
            action_id = None  # whatever the sender put there, the report must be one the server takes
        detail = detail[:1000].encode("utf-8", "replace").decode("utf-8")
        log.warning("refused an action%s (%s): %s", f" {action_id}" if action_id else "", reason, detail)
        self.stats.refusals_made += 1
        self.stats.refused_actions.append(f"{reason}:{action_id}")
        del self.stats.refused_actions[:-AgentStats.KEPT]
        reports = self.state["reports"]
        reports.append({"reason": reason, "detail": detail, "action_id": action_id})
        del reports[:-self.MAX_REPORTS]

    def _remember(self, key: str, status: str, detail: str, expires_at: int) -> None:
        seen = self.state["seen"]
        seen.pop(key, None)
        seen[key] = [status, detail, expires_at]
        now_ms = sa.now_ms() - int(self.clock_tolerance * 1000)
        for old in [k for k, v in seen.items() if v[2] < now_ms]:  # expired: refused as such anyway
            del seen[old]
        while len(seen) > self.MAX_SEEN:
            oldest = next(iter(seen))
            del seen[oldest]
            issued = int(oldest.rpartition("@")[2])
            self.state["horizon"] = max(self.state["horizon"], issued)

    def apply(self, actions: list[Any]) -> None:
        """Verify, apply and acknowledge signed actions; send the acknowledgements and any
        refusal reports to the server."""
        self._retire_due()  # a key retired meanwhile signs nothing any more
        with self._apply_lock:
            acks = self._take(actions)
        self._send_acks(acks)

    def _take(self, actions: list[Any]) -> list[dict[str, Any]]:
        """Verify and apply signed actions (each issuance once): the signed acks."""
        acks = []
        verified = []
        for item in actions:
            try:
                verified.append(sa.open_action(item, self.trusted, tolerance=self.clock_tolerance))
            except sa.Refused as exc:
                self._report(exc.reason, exc.detail, exc.action_id)
        verified.sort(key=lambda a: a["issued_at"])  # in the order decided, however they arrived
        for action in verified:
            key = f"{action['id']}@{action['issued_at']}"
            earlier = self.state["seen"].get(key)
            if earlier is None and action["issued_at"] <= self.state["horizon"]:
                self._report("replayed", f"{action['type']} of {action['target']} issued before the oldest "
                                         "issuance the agent still remembers", action["id"])
                continue
            if earlier is not None:  # delivered again: a lost acknowledgement, or a replay
                self.stats.replayed += 1
                status, detail = earlier[0], f"{earlier[1]} (delivered again: not applied twice)"
                if action["expires_at"] > earlier[2]:
                    earlier[2] = action["expires_at"]
                log.warning("action %s (%s of %s, issued %s) delivered again (a lost acknowledgement or a replay): "
                            "not applied twice", action["id"], action["type"], action["target"], action["issued_at"])
                acks.append(sa.seal_ack(self.key, self.node_id, action["id"], action["issued_at"], status,
                                        detail[:1000]))
                continue
            status, detail = self._apply_one(action)
            self._remember(key, status, detail, action["expires_at"])
            self._save_state()
            kept = self.stats.applied if status == "applied" else self.stats.not_applied
            kept.append(f"{action['type']}:{action['target']}:{status}" if status != "applied"
                        else f"{action['type']}:{action['target']}")
            del kept[:-AgentStats.KEPT]
            entry = {"time": time.time(), "action": action, "status": status, "detail": detail}
            with open(self.state_dir / "actions.log", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            log.warning("action %s %s (%s): %s - %s", action["type"], action["target"], action["reason"], status,
                        detail)
            acks.append(sa.seal_ack(self.key, self.node_id, action["id"], action["issued_at"], status, detail))
        return acks

    def _send_acks(self, acks: list[dict[str, Any]], relayed: list[dict[str, Any]] | None = None) -> None:
        """Send acks, the refusal reports kept, and (as a relay) the answers of relayed nodes."""
        reports = list(self.state["reports"])
        if acks or reports:
            self._save_state()
        parts = _batches(acks, reports)
        if relayed:
            if not parts:
                parts = [{"acks": [], "refusals": []}]
            parts[0] = {**parts[0], "relayed": relayed}
        for part in parts:  # each request well under the server's body limit
            body = json.dumps(part).encode()
            status, data, _ = self._request("POST", f"/v1/nodes/{self.node_id}/actions/ack", body)
            if status == 200:
                if part["refusals"]:
                    del self.state["reports"][:len(part["refusals"])]
                    self._save_state()
            else:
                log.warning("acknowledgement refused (%s): %s", status, data.get("error"))

    # -- relay (``wyneos_core.service.action_relay``) -------------------------------------------------

    def relay_actions(self, work: Any) -> int:
        """Carry signed actions the orchestrator hands over for neighbours it cannot reach.

        ``work``: ``[{"to": node, "envelopes": [...]}]`` from the answer to a heartbeat.
        Each envelope is verified with the pinned orchestrator key first and must be
        addressed to ``to`` (or ``*``); what does not verify is never forwarded. The
        envelopes go unchanged to the neighbour's peer endpoint (its address from the
        signed neighbour list); the neighbour's answer (its signed acks, its refusal
        reports) goes to the orchestrator with this node's own acknowledgement request.
        Returns the number of envelopes pushed. Test switches in the state directory:
        ``relay-tamper`` flips a byte of each envelope pushed, ``relay-drop`` pushes
        nothing, ``relay-quiet`` pushes but keeps the neighbour's answer from the
        orchestrator (a relay that misbehaves, for the detection tests).
        """
        if not isinstance(work, list):
            return 0
        answers = []
        pushed = 0
        for item in work[:16]:
            if not isinstance(item, dict) or not isinstance(item.get("to"), str) \
                    or not isinstance(item.get("envelopes"), list):
                continue
            target = item["to"]
            neighbour = self.peer.neighbour(target)
            if neighbour is None:
                log.warning("relay for %s refused: not a neighbour in the signed list", target[:128])
                continue
            good = []
            for envelope in item["envelopes"][:32]:
                try:
                    payload = sa.open_action(envelope, self.trusted, tolerance=self.clock_tolerance)
                except sa.Refused as exc:
                    log.warning("not relaying an action for %s that does not verify (%s): %s", target, exc.reason,
                                exc.detail)
                    continue
                if payload["target"] not in (target, "*"):
                    log.warning("not relaying action %s addressed to %s as one for %s", payload["id"],
                                payload["target"], target)
                    continue
                good.append(envelope)
            if not good or (self.state_dir / "relay-drop").exists():
                continue
            if (self.state_dir / "relay-tamper").exists():
                good = [_flip(e) for e in good]
            try:
                answer = self.peer.push(neighbour, good)
                if not (self.state_dir / "relay-quiet").exists():
                    answers.append(answer)
                pushed += len(good)
                self.stats.relayed += len(good)
            except ConnectionError as exc:
                log.warning("%s", exc)
        for answer in answers:  # one request each: each well under the server's body limit
            self._send_acks([], [answer])
        return pushed

    def receive_relayed(self, sender: str, envelopes: list[Any]) -> dict[str, Any]:
        """Signed actions a neighbour relays: verified and applied exactly as those the
        orchestrator hands over directly; the answer carries the signed acks and the
        refusal reports (kept too, for the orchestrator directly once it is reachable)."""
        with self._apply_lock:
            before = self.stats.refusals_made
            acks = self._take(envelopes)
            made = self.stats.refusals_made - before
            new = self.state["reports"][-made:] if made else []
            for report in new:  # which relay pushed it (the node checked its push was signed by its key)
                report["via"] = sender
            refusals = [dict(r) for r in new]
            self._save_state()
        log.info("%d relayed action(s) from %s: %d acknowledged, %d refused", len(envelopes), sender[:128],
                 len(acks), len(refusals))
        return {"node": self.node_id, "acks": acks, "refusals": refusals}

    def _apply_one(self, action: dict[str, Any]) -> tuple[str, str]:
        """Apply one action: ``(status, detail)``. The isolation flag changes only when
        the action is applied (a failing hook leaves it as it was)."""
        kind, target = action["type"], action["target"]
        if target == "*" and kind not in sa.BROADCAST_TYPES:
            return "ignored", f"refused: {kind} cannot be addressed to every node ('*'); not applied"
        if target not in (self.node_id, "*"):
            return "ignored", f"addressed to {target}, not to {self.node_id}: not applied"
        if kind not in sa.KNOWN_TYPES and kind not in self.hook_types:
            return "ignored", f"unknown action type {kind!r}: not applied and not handed to the hook"
        if kind in ("isolate", "reinstate") and action["issued_at"] < self.state["isolation_at"]:
            return "ignored", (f"superseded: an isolate or reinstate issued later "
                               f"({self.state['isolation_at']}) was applied already; not applied")
        if kind == "isolate":
            isolated: bool | None = True
            detail = "node marked isolated until reinstated"
        elif kind == "reinstate":
            isolated = False
            detail = "node reinstated"
        elif self.hook is None:
            return "ignored", f"no handler for {kind!r} (give --hook)"
        else:
            isolated = None
            detail = f"{kind} handed to the hook"
        if self.hook is not None:
            try:
                done = subprocess.run([self.hook, str(kind), str(target)], input=json.dumps(action).encode(),
                                      capture_output=True, timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return "failed", f"hook failed: {exc}"
            if done.returncode != 0:
                return "failed", f"hook exited {done.returncode}: {done.stderr[-200:].decode(errors='replace')}"
            if isolated is not None:
                detail += "; hook applied it"
        elif isolated is not None:
            detail += " (recorded only: give --hook to act on the machine)"
        if isolated is not None:
            self.state["isolated"] = isolated
            self.state["isolation_at"] = action["issued_at"]
        return "applied", detail


#: the largest acknowledgement request the agent sends (the server's default limit is 64 KiB)
MAX_ACK_REQUEST = 48 * 1024


def _batches(acks: list[dict[str, Any]], reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Acknowledgement request bodies of at most ``MAX_ACK_REQUEST`` bytes each (reports
    go with the first)."""
    parts: list[dict[str, Any]] = []
    current: dict[str, Any] = {"acks": [], "refusals": reports}
    size = len(json.dumps(reports))
    for ack in acks:
        length = len(json.dumps(ack)) + 2
        if current["acks"] and size + length > MAX_ACK_REQUEST:
            parts.append(current)
            current, size = {"acks": [], "refusals": []}, 0
        current["acks"].append(ack)
        size += length
    if current["acks"] or current["refusals"]:
        parts.append(current)
    return parts


def _flip(envelope: Any) -> Any:
    """A copy of ``envelope`` with one character of its reason changed (test switch)."""
    try:
        copy = json.loads(json.dumps(envelope))
        reason = copy["payload"]["reason"]
        copy["payload"]["reason"] = ("X" if reason[:1] != "X" else "Y") + reason[1:]
        return copy
    except (KeyError, TypeError, ValueError):
        return envelope
