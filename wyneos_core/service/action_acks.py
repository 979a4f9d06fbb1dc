"""Acknowledgements of the actions handed to agents, and their reports of actions they
refused, directly or carried by a relay. ``ActionAcks`` is a part of ``core.Service``
(``acknowledge``, ``signed_ack``)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from wyneos_core.builtin.trust import record_acks
from wyneos_core.service import signed_actions as sa
from wyneos_core.service.identity import AuthError
from wyneos_core.service.outcomes import Unprocessable, json_object

if TYPE_CHECKING:
    from wyneos_core.service.core import Service

__all__ = ["MAX_ACK_DETAIL", "MAX_ACTION_ID", "MAX_REFUSALS", "ActionAcks"]

log = logging.getLogger("wyneos.service")

MAX_ACTION_ID = 128
MAX_ACK_DETAIL = 1000
MAX_REFUSALS = 100  # refusal reports per request
_KEEP_REFUSALS = 10_000  # refusal reports kept in the state file
_REFUSAL_CODES = frozenset(("malformed", "unsigned", "unknown_key", "bad_signature", "expired", "not_yet_valid",
                            "replayed", "other_node", "unknown_type", "bad_answer"))


class ActionAcks:
    """``Service.acknowledge`` and ``Service.signed_ack`` (a base of ``Service``)."""


    def acknowledge(self: Service, node_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Store a node's signed acknowledgements of actions delivered to it, and its
        reports of actions it refused.

        Body: ``{"acks": [ack envelope, ...], "refusals": [report, ...]}``. Each ack is a
        ``wyneos.ack/1`` envelope signed by the node's enrolled key (``signed_actions``);
        one that is unsigned, signed by another key, or speaks for another node makes
        the whole request a 422 that changes nothing. Only an action waiting in the
        node's outbox, in force against the node, or acknowledged by it before (a
        status update) can be acknowledged; others are refused one by one (``refused``
        in the answer) and leave no trace. A report (``{"reason", "detail",
        "action_id"}``) says the node refused something handed to it as an action
        (unsigned, bad signature, expired, replayed...): it is logged, counted and kept
        (``/v1/actions`` ``refusals``). The status: 200 when something was acknowledged
        or reported (or nothing was asked), else 422. Writes the state file: call it
        from a worker thread.

        ``relayed`` (optional): what this node, as a relay of signed actions (``action_relay``), brings
        back from nodes it pushed signed actions to: ``[{"node", "acks", "refusals"}]``.
        Each node's acks are checked with *that node's* enrolled key, as if it had sent
        them itself (a relay cannot forge them), and only from a relay that was handed
        an action for that node; a relayed part that does not verify is refused on its
        own (its ``error`` in the answer's ``relayed``) and the relay named ``forged``
        (``RelayDesk``); the rest of the request is taken as usual.
        """
        data = json_object(body)
        relayed = data.get("relayed", [])
        if not isinstance(relayed, list) or len(relayed) > 16:
            raise Unprocessable("relayed", "expected a list of at most 16 relayed answers")
        for index, part in enumerate(relayed):
            if not isinstance(part, dict) or not isinstance(part.get("node"), str) \
                    or not set(part) <= {"node", "acks", "refusals"}:
                raise Unprocessable(f"relayed[{index}]", "expected {node, acks, refusals}")
        status, answer = self._acknowledge(node_id, data, None)
        if relayed:
            answer["relayed"] = self._relayed(node_id, relayed)
            if status == 422 and any(r.get("acknowledged") or r.get("reported") for r in answer["relayed"]):
                status = 200
                answer = {k: v for k, v in answer.items() if k not in ("status", "code", "error", "field")}
        self.relay_desk.flush()
        return status, answer

    def _relayed(self: Service, relay: str, relayed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Take the answers ``relay`` brought back from the nodes it relayed to."""
        out = []
        for part in relayed:
            target = part["node"]
            if target == relay or not self.relay_desk.was_handed(relay, target):
                out.append({"node": target[:128], "error": f"nothing was handed to {relay} for this node"})
                continue
            try:
                _, answer = self._acknowledge(target, {"acks": part.get("acks", []),
                                                       "refusals": part.get("refusals", [])}, relay)
            except (Unprocessable, AuthError) as exc:
                self.relay_desk.forged(relay, target, str(exc))
                out.append({"node": target, "error": str(exc)})
                continue
            out.append({"node": target, **{k: v for k, v in answer.items()
                                           if k in ("acknowledged", "refused", "reported", "relay_named")}})
        return out

    def _acknowledge(self: Service, node_id: str, data: dict[str, Any], via: str | None) -> tuple[int, dict[str, Any]]:
        """``acknowledge`` of one node's acks and reports (``via``: the relay that carried them)."""
        acks = data.get("acks", [])
        if not isinstance(acks, list) or len(acks) > 1000:
            raise Unprocessable("acks", "expected a list of at most 1000 acknowledgements")
        reports = data.get("refusals", [])
        if not isinstance(reports, list) or len(reports) > MAX_REFUSALS:
            raise Unprocessable("refusals", f"expected a list of at most {MAX_REFUSALS} reports")
        raw_key = self.keys.get(node_id)
        if raw_key is None:
            raise AuthError(401, f"node {node_id!r} is not enrolled", "not_enrolled")
        opened: list[dict[str, Any]] = []
        for index, ack in enumerate(acks):
            try:
                opened.append(sa.open_ack(ack, node_id, raw_key))
            except sa.Refused as exc:
                raise Unprocessable(f"acks[{index}]", f"{exc.reason}: {exc.detail}"
                                     + (" (acknowledgements are wyneos.ack/1 envelopes signed by the node key)"
                                        if exc.reason == "unsigned" else "")) from None
        cleaned: list[tuple[str, str | None, str]] = []
        pushers: list[str | None] = []
        for index, report in enumerate(reports):
            if not isinstance(report, dict) or report.get("reason") not in _REFUSAL_CODES:
                raise Unprocessable(f"refusals[{index}].reason", "expected one of " + ", ".join(sorted(_REFUSAL_CODES)))
            action_id, detail = report.get("action_id"), report.get("detail", "")
            if action_id is not None and (not isinstance(action_id, str) or not 0 < len(action_id) <= MAX_ACTION_ID):
                raise Unprocessable(f"refusals[{index}].action_id", f"expected a string of 1-{MAX_ACTION_ID} characters")
            if not isinstance(detail, str) or len(detail) > MAX_ACK_DETAIL:
                raise Unprocessable(f"refusals[{index}].detail", f"expected a string of at most {MAX_ACK_DETAIL} characters")
            try:
                (action_id or "").encode("utf-8")
                detail.encode("utf-8")
            except UnicodeEncodeError:
                raise Unprocessable(f"refusals[{index}]", "not valid Unicode text") from None
            pusher = report.get("via")  # the relay that pushed what the node refused (it checked the push's signature)
            if pusher is not None and (not isinstance(pusher, str) or not 0 < len(pusher) <= 128):
                raise Unprocessable(f"refusals[{index}].via", "expected a node id of 1-128 characters")
            cleaned.append((report["reason"], action_id, detail))
            pushers.append(pusher)
        issuances = {a["id"]: a.get("issued_at") for a in self.outbox.pending(node_id)}
        known = set(issuances) | self.view.in_force.get(node_id, frozenset())
        asked = [a["action_id"] for a in opened]
        with self.db_lock:
            known |= self.db.action_acks_of(node_id, (a for a in asked if a not in known))
        done: list[str] = []
        refused: list[dict[str, Any]] = []
        named: list[str] = []
        now = time.time()
        with self.db_lock:
            for index, (ack, envelope) in enumerate(zip(opened, acks)):
                action_id = ack["action_id"]
                if action_id not in known:
                    refused.append({"index": index, "action_id": action_id, "field": f"acks[{index}].action_id",
                                    "error": f"no action {action_id!r} was delivered to node {node_id!r}"})
                    continue
                waiting = issuances.get(action_id)
                if waiting is not None and ack["issued_at"] != waiting:  # an old ack of an earlier issuance
                    refused.append({"index": index, "action_id": action_id, "field": f"acks[{index}].issued_at",
                                    "error": f"acknowledges the issuance of {ack['issued_at']} of {action_id!r}, "
                                             f"not the one waiting ({waiting})"})
                    continue
                status = ack["status"]
                self.db.record_action_ack(action_id, node_id, status, ack["detail"], now)
                self.db.put_signed_ack(action_id, node_id, ack["issued_at"], envelope, now)
                if status != "ignored":
                    record_acks(self.orchestrator, [(node_id, status == "applied")])
                self.outbox.ack(node_id, action_id)
                self.relay_desk.acked(node_id, action_id, via)
                self.metrics.acks.labels(status).inc()
                log.info("node %s acknowledged action %s: %s%s", node_id, action_id, status,
                         f" (through relay {via})" if via else "")
                done.append(action_id)
            if cleaned:  # through a relay: said so; a refusal that means the relay altered it names the relay
                named_cleaned = []
                for (reason, action_id, detail), pusher in zip(cleaned, pushers):
                    if via is not None:
                        detail = f"(reported through relay {via}) {detail}"[:MAX_ACK_DETAIL]
                    culprit = self.relay_desk.refused(node_id, action_id, reason, detail, via, pusher)
                    if culprit is not None:
                        named.append(culprit)
                        detail = f"{detail} [relay {culprit} named: it altered the action]"[:MAX_ACK_DETAIL]
                    named_cleaned.append((reason, action_id, detail))
                cleaned = named_cleaned
                self.db.add_action_refusals(node_id, now, cleaned, _KEEP_REFUSALS)
            for reason, action_id, detail in cleaned:
                self.metrics.refusals.labels(reason).inc()
                log.warning("node %s refused an action handed to it (%s, action %s): %s", node_id, reason,
                            action_id, detail)
        self.metrics.outbox.set(self.outbox.depth())
        answer: dict[str, Any] = {"acknowledged": done, "refused": refused, "reported": len(cleaned)}
        if named:
            answer["relay_named"] = sorted(set(named))
        if refused and not done and not cleaned:
            first = refused[0]
            return 422, {"status": 422, "code": "unknown_action", "error": first["error"], "field": first["field"],
                         **answer}
        return 200, answer

    def signed_ack(self: Service, action_id: str, node_id: str) -> dict[str, Any] | None:
        """The node-signed acknowledgement kept for ``action_id`` (None when there is none)."""
        with self.db_lock:
            return self.db.signed_ack(action_id, node_id)

