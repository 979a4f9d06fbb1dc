"""Enrolment: a node's key stored with a one-time token (or a fingerprint the config
pins), proven by a request signed with that very key; the node joins the registry and
the mesh, all or nothing. ``Enrolment`` is a part of ``core.Service`` (``enrol``)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wyneos_core.licensing.keys import fingerprint
from wyneos_core.registry import NODE_ID_PATTERN, RESERVED_NODE_IDS
from wyneos_core.service.identity import AuthError, KeyCache, SignedItem, b64d, verify_item
from wyneos_core.service.outcomes import ENROL_PATH, Unprocessable, json_object

if TYPE_CHECKING:
    from wyneos_core.service.core import Service

__all__ = ["Enrolment", "hash_token", "new_token"]

log = logging.getLogger("wyneos.service")


def new_token() -> str:
    """A fresh enrolment token (shown once; only its hash is stored)."""
    return "wyn_" + secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()



class Enrolment:
    """``Service.enrol`` (a base of ``Service``)."""


    def enrol(self: Service, item: SignedItem) -> tuple[int, dict[str, Any]]:
        """Enrol the key in an enrolment request (signed by that very key).

        Body: ``{"node_id", "public_key" (base64url raw 32 bytes), "token", "licence_ref"}``;
        the token may be left out when the config pins the node's fingerprint;
        ``licence_ref`` (optional) names the node's licence from the start.

        All or nothing: every check runs before anything changes; the node joins, the
        token is spent and the key is stored under the service lock, and a failure of
        any of them undoes the others. Takes the tick lock: call it from a worker thread.
        """
        body = json_object(item.body)
        node_id, pub_text, token = body.get("node_id"), body.get("public_key"), body.get("token")
        licence_ref = body.get("licence_ref")
        if node_id != item.node_id:
            raise AuthError(403, f"the body enrols {node_id!r} but the request is signed as {item.node_id!r}",
                            "node_mismatch")
        if node_id in RESERVED_NODE_IDS:
            raise Unprocessable("node_id", f"{node_id!r} is reserved (the orchestrator's own id)")
        try:
            raw = b64d(pub_text) if isinstance(pub_text, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise Unprocessable("public_key", "not a base64url raw Ed25519 public key (32 bytes)")
        if token is not None and (not isinstance(token, str) or len(token) > 200):
            raise Unprocessable("token", "not a string of at most 200 characters")
        if licence_ref is not None and (not isinstance(licence_ref, str) or not 0 < len(licence_ref) <= 256):
            raise Unprocessable("licence_ref", "not a string of 1-256 characters")
        fp = fingerprint(raw)
        if self.ha is not None and node_id not in self.keys:
            self._catch_up_keys()  # enrolled at another replica: this is a re-enrolment, not a new one
        existing = self.keys.get(node_id)
        if existing is not None:
            same = existing == raw
            if self.keys.is_revoked(node_id):
                raise AuthError(403, f"the key of node {node_id!r} is revoked", "revoked")
            if not same:
                raise AuthError(409, f"node {node_id!r} is enrolled with another key ({self.keys.fingerprint(node_id)})",
                                "key_conflict")
        # proof of possession: the request is signed by the key being enrolled
        probe = KeyCache()
        probe.set(node_id, raw)
        now = time.time()
        ts = verify_item(item, "POST", ENROL_PATH, probe, now)
        self.nonces.check_time(ts, now)
        self.nonces.claim(node_id, item.nonce, ts, now)
        if existing is not None:
            return 200, self._enrolled(node_id, fp, created=False)
        pinned = self._pinned_fingerprint(node_id)
        if pinned is not None and pinned != fp:
            raise AuthError(403, f"the config pins node {node_id!r} to {pinned}, not {fp}", "fingerprint_mismatch")
        if pinned is None and not token:
            raise AuthError(401, "enrolment needs a token (`wyneos enrol token`) or a fingerprint pinned "
                                 "in the config", "token_required")
        registry = self.orchestrator.registry
        if node_id not in registry:
            if not self.settings.register_on_enrol:
                raise AuthError(403, f"node {node_id!r} is not in the config (service.register_on_enrol is false)",
                                "not_registered")
            if not NODE_ID_PATTERN.match(node_id):
                raise Unprocessable("node_id", "not a valid node id")
            if len(registry) >= registry.max_nodes:
                raise Unprocessable("node_id", f"registry full: heartbeat.max_nodes ({registry.max_nodes}) nodes")
        undo: list[Callable[[], None]] = []
        with self.lock:
            # the token is checked (and spent) in the same transaction that stores the key;
            # only once it is good does the node join, and a failure of any step undoes all
            try:
                with self.db_lock:
                    why = self.db.enrol_with_token(None if pinned is not None else hash_token(token), node_id, raw,
                                                   fp, now, lambda customer: undo.append(
                                                       self._join(node_id, fp, licence_ref, customer)))
            except BaseException:
                for step in undo:
                    step()
                raise
            if why is not None:
                raise AuthError(403, why, "bad_token")
            self.keys.set(node_id, raw)
            self._publish(None)
        self.refresh_keys()
        log.info("enrolled node %s with key %s", node_id, fp)
        return 201, self._enrolled(node_id, fp, created=True)

    def _configured_metadata(self: Service, node_id: str) -> dict[str, Any]:
        for spec in self.orchestrator.config["nodes"]:
            if spec["id"] == node_id:
                return spec.get("metadata") or {}
        return {}

    def _pinned_fingerprint(self: Service, node_id: str) -> str | None:
        for spec in self.orchestrator.config["nodes"]:
            if spec["id"] == node_id:
                return spec.get("fingerprint")
        return None

    def _enrolled(self: Service, node_id: str, fp: str, created: bool) -> dict[str, Any]:
        hb = self.orchestrator.config["heartbeat"]
        return {"node_id": node_id, "fingerprint": fp, "enrolled": created, "server_time": time.time(),
                "heartbeat_interval": hb["interval"], "replay_window": self.settings.replay_window,
                "orchestrator_key": self.key_info()}

