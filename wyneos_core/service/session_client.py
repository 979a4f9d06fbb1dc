"""The agent's side of heartbeat sessions: handshake, MACed heartbeats, gapless renewal.

>>> # client = SessionClient("http://127.0.0.1:8420", "node-1", node_key)
>>> # status, answer = client.heartbeat(b'{"load": 0.5}')

The client keeps one HTTP/1.1 connection open (keep-alive) and sends every heartbeat on
it. It opens a session on first use, verifies the server's answer (an envelope signed by
the orchestrator key: pinned, or trusted on first use and then kept), and derives the
session key. At two thirds of the session's life it opens the next one before the
current one expires, so there is never a moment without a valid session; when the
server forgets a session (restart, expiry, table full) the client opens a new one and
sends the heartbeat again. Answers to session heartbeats carry the session key's MAC:
straight from the orchestrator, over the answer's exact bytes; through a relay, the
orchestrator's acknowledgement over the sequence number and the server time (and only
those are kept of a relay's answer). An answer without a valid one is refused
(:class:`SessionError`).

:meth:`SessionClient.item` builds a batch item (``session``, ``seq``, ``mac``, ``body``)
instead, for a relay to forward.
"""

from __future__ import annotations

import hmac
import http.client
import json
import math
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from wyneos_core.licensing.envelope import EnvelopeError, open_envelope
from wyneos_core.licensing.keys import fingerprint, key_id
from wyneos_core.service.bounded_http import AnswerTooLarge, AnswerTooSlow, exchange
from wyneos_core.service.identity import b64d, b64e
from wyneos_core.service.sessions import (
    HANDSHAKE_FORMAT,
    NONCE_PATH,
    SESSION_PATH,
    ack_mac,
    answer_mac,
    derive_key,
    handshake_bytes,
    mac,
    x25519_public,
)

__all__ = ["ClientSession", "SessionClient", "SessionError"]

HEARTBEAT_PATH = "/v1/heartbeats"
MAX_ANSWER = 4 * 1024 * 1024  # bytes of an answer read at most
_RENEW_AT = 2 / 3  # of a session's life
_REOPEN = frozenset({"unknown_session", "session_expired"})


class SessionError(RuntimeError):
    """A handshake or an answer did not check out; ``status`` and ``code`` when the
    server refused."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ClientSession:
    """An open session as the agent holds it."""

    __slots__ = ("id", "key", "expires_at", "renew_at", "seq")

    def __init__(self, session_id: str, key: bytes, expires_at: float, renew_at: float) -> None:
        self.id = session_id
        self.key = key
        self.expires_at = expires_at
        self.renew_at = renew_at
        self.seq = 0


class SessionClient:
    """Heartbeat sessions for one node.

    :param server: base URL of the orchestrator (or of a relay in front of it).
    :param node_id: this node's id (enrolled).
    :param key: this node's Ed25519 private key (the enrolled one).
    :param orchestrator_fingerprints: fingerprints (``sha256:...``) of orchestrator keys
        to trust; empty: trust the first key seen (then :attr:`orchestrator_fingerprint`
        holds it: keep it to pin it next time).
    """

    def __init__(self, server: str, node_id: str, key: Ed25519PrivateKey, *,
                 orchestrator_fingerprints: tuple[str, ...] | list[str] = (), timeout: float = 10.0,
                 clock: Any = time.time) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL {server!r} must look like http://HOST:PORT")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.node_id = node_id
        self.key = key
        self.pinned = tuple(orchestrator_fingerprints)
        self.orchestrator_fingerprint: str | None = self.pinned[0] if self.pinned else None
        self.timeout = timeout
        self.clock = clock
        #: ``time.monotonic()`` past which no request may run (the end of the agent's run)
        self.deadline: float | None = None
        self.session: ClientSession | None = None
        self.opened = 0
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    # -- HTTP -----------------------------------------------------------------------------

    def _post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        # one deadline for the request, answer included (a trickled answer cannot hold the
        # agent), never past ``deadline`` (the end of the agent's run)
        deadline = time.monotonic() + self.timeout
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        for attempt in (0, 1):
            if self._conn is None:
                cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self.host, self.port, timeout=self.timeout)
            try:  # an answer is hostile until checked: bounded in size and time
                response, raw = exchange(self._conn, "POST", path, body,
                                         {"content-type": "application/json", **(headers or {})},
                                         deadline=deadline, max_bytes=MAX_ANSWER)
                return response.status, raw, response
            except (AnswerTooLarge, AnswerTooSlow) as exc:
                self.close()
                raise SessionError(str(exc)) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()  # a keep-alive connection the server closed: once more on a new one
                if attempt:
                    raise ConnectionError(str(exc)) from None
            except (OSError, http.client.HTTPException):
                self.close()
                raise
        raise ConnectionError("unreachable")  # pragma: no cover

    def move_to(self, scheme: str, host: str, port: int | None) -> None:
        """Talk to another server from now on (a replica of the same cluster: the
        session's ticket is good there too; a server that does not take it answers
        ``unknown_session`` and a new session is opened)."""
        self.close()
        self.scheme, self.host, self.port = scheme, host, port

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- handshake ------------------------------------------------------------------------

    def open(self) -> ClientSession:
        """Open a new session (the current one stays usable until it expires)."""
        status, raw, _ = self._post(NONCE_PATH, b"")
        data = _json(raw)
        if status != 200 or not isinstance(data.get("nonce"), str):
            raise SessionError(f"no nonce from the server ({status}): {data.get('error')}", status, data.get("code", ""))
        nonce = data["nonce"]
        ephemeral = X25519PrivateKey.generate()
        agent_key = b64e(x25519_public(ephemeral))
        signature = b64e(self.key.sign(handshake_bytes(self.node_id, nonce, agent_key)))
        body = json.dumps({"node_id": self.node_id, "nonce": nonce, "agent_key": agent_key,
                           "signature": signature}).encode()
        started = self.clock()
        status, raw, _ = self._post(SESSION_PATH, body)
        data = _json(raw)
        if status != 201:
            raise SessionError(f"session refused ({status} {data.get('code')}): {data.get('error')}", status,
                               str(data.get("code", "")))
        payload = self._verify_answer(data)
        if payload.get("node_id") != self.node_id or payload.get("nonce") != nonce \
                or payload.get("agent_key") != agent_key:
            raise SessionError("the session answer is not for this handshake (node, nonce or key differ)")
        try:
            server_key = payload["server_key"]
            session_id = payload["session_id"]
            ttl = float(payload["ttl"])
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(b64d(server_key)))
        except (KeyError, TypeError, ValueError):
            raise SessionError("the session answer lacks a usable server_key, session_id or ttl") from None
        key = derive_key(shared, nonce=nonce, session_id=session_id, node_id=self.node_id, agent_key=agent_key,
                         server_key=server_key)
        # expiry on our own clock: the server's ttl from when we asked (never later than the server's)
        session = ClientSession(session_id, key, started + ttl, started + ttl * _RENEW_AT)
        self.session = session
        self.opened += 1
        return session

    def _verify_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        raw_key = data.get("orchestrator_key")
        try:
            public = Ed25519PublicKey.from_public_bytes(b64d(raw_key)) if isinstance(raw_key, str) else None
        except ValueError:
            public = None
        if public is None:
            raise SessionError("the session answer names no usable orchestrator key")
        fp = fingerprint(public)
        if self.pinned and fp not in self.pinned:
            raise SessionError(f"the orchestrator key {fp} is not among the pinned ones")
        if self.orchestrator_fingerprint is not None and fp != self.orchestrator_fingerprint and not self.pinned:
            raise SessionError(f"the orchestrator key changed from {self.orchestrator_fingerprint} to {fp}")
        try:
            payload = open_envelope(data.get("session"), HANDSHAKE_FORMAT, {key_id(public): public})
        except EnvelopeError as exc:
            raise SessionError(f"the session answer's signature does not check out: {exc}") from None
        self.orchestrator_fingerprint = fp
        return payload

    # -- heartbeats -----------------------------------------------------------------------

    def current(self) -> ClientSession:
        """The session to use now: opened or renewed as needed."""
        session = self.session
        now = self.clock()
        if session is None or now >= session.expires_at:
            return self.open()
        if now >= session.renew_at:
            try:
                return self.open()
            except (OSError, http.client.HTTPException, SessionError):
                return session  # still valid: renewal is tried again next time
        return session

    def frame(self, body: bytes) -> tuple[str, int, str]:
        """Session id, next sequence number and MAC for ``body`` (the exact bytes sent)."""
        with self._lock:
            session = self.current()
            session.seq += 1
            return session.id, session.seq, mac(session.key, session.seq, body)

    def item(self, body: bytes) -> dict[str, Any]:
        """A batch item for ``body`` (what a relay forwards unchanged)."""
        sid, seq, tag = self.frame(body)
        return {"session": sid, "seq": seq, "mac": tag, "body": body.decode()}

    def heartbeat(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Send one session heartbeat; (status, answer). A forgotten or expired session
        is opened again and the heartbeat sent once more.

        :raises SessionError: a 202 answer whose MAC does not check out, or a handshake
            that failed.
        """
        for attempt in (0, 1):
            sid, seq, tag = self.frame(body)
            session = self.session
            status, raw, response = self._post(HEARTBEAT_PATH, body, {"x-wyneos-session": sid,
                                                                        "x-wyneos-seq": str(seq),
                                                                        "x-wyneos-mac": tag})
            data = _json(raw)
            if status == 202:
                got = response.getheader("x-wyneos-mac")
                if got is not None:  # straight from the orchestrator: the MAC of the whole answer
                    ok = session is not None and hmac.compare_digest(answer_mac(session.key, seq, raw), got)
                else:  # through a relay: the orchestrator's acknowledgement of this heartbeat and of
                    # the server time it gives (the rest of a relay's answer is the relay's own)
                    ack, at = data.get("ack"), data.get("server_time")
                    ok = session is not None and isinstance(ack, str) and type(at) in (int, float) \
                        and math.isfinite(at) and hmac.compare_digest(ack_mac(session.key, seq, at), ack)
                    data = {"accepted": 1, "relayed": True, "server_time": at, "ack": ack}
                if not ok:
                    raise SessionError("the answer to a session heartbeat carries no valid MAC of the session key")
                return status, data
            if status == 401 and data.get("code") in _REOPEN and not attempt:
                with self._lock:
                    if self.session is not None and self.session.id == sid:
                        self.session = None  # forgotten by the server: open a new one
                continue
            return status, data
        return status, data  # pragma: no cover


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {"error": raw[:200].decode(errors="replace")}
    return data if isinstance(data, dict) else {}

