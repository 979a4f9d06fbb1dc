"""Heartbeat sessions: one signed handshake, then heartbeats authenticated by a MAC.

Verifying an Ed25519 signature costs 40-65 µs; a keyed BLAKE2b MAC about 1 µs. So, as
kubelets authenticate the connection once and then send plain lease renewals, an agent
proves who it is once per session and then MACs its heartbeats with a key only it and
the orchestrator know.

**Handshake** (two requests, ``docs/sessions.md`` has the whole picture):

1. ``POST /v1/sessions/nonce`` → ``{"nonce": ...}``: a fresh server nonce, valid
   ``NONCE_TTL`` seconds and usable once. It is stateless until used (a timestamp and
   16 random bytes under a keyed BLAKE2b tag only this process can make), so handing
   out nonces costs no memory.
2. ``POST /v1/sessions`` with ``{"node_id", "nonce", "agent_key", "signature"}``:
   ``agent_key`` is the agent's fresh X25519 public key (base64url, 32 bytes) and
   ``signature`` its Ed25519 node key's signature of :func:`handshake_bytes`. The
   server checks the nonce, the node's enrolled (not revoked) key and the signature,
   makes its own ephemeral X25519 key, a session id and an expiry, and answers with a
   ``wyneos.session/1`` envelope signed by the orchestrator key (node id, nonce, both
   X25519 keys, session id, expiry). Both sides derive the 32-byte session key with
   HKDF-SHA256 over the X25519 shared secret (:func:`derive_key`); it never travels.

**Heartbeats** then carry the session id, a sequence number that strictly increases
within the session and a MAC: keyed BLAKE2b-128 (``hashlib``) of
:func:`mac_message` (the sequence number and the exact body bytes), hex. The server
refuses, changing nothing: an unknown session (401 ``unknown_session``), an expired one
(401 ``session_expired``), a revoked node key (403 ``revoked``), a wrong MAC (401
``bad_mac``), a sequence number not above the last accepted one (409 ``replay``), a
node over its rate (429 ``rate_limited``).

**Rate limits hold per node, not per session**: a node's sessions share one token
bucket (a session opened after a 429 inherits the emptied bucket of the node's open
ones). Handshakes are limited too: per node, successful handshakes
(``HANDSHAKE_RATE``/``HANDSHAKE_BURST``, counted after the signature checked out, so
nobody else can spend a node's budget); per client address, *failed* handshakes
(``FAILED_RATE``/``FAILED_BURST``): an address whose budget is spent is refused (429)
before its nonce or signature is checked, so a flood of junk handshakes costs a dict
lookup each, and the agents of an honest relay (one address) are not held back.

**Renewal without a gap**: an agent opens its next session before the current one
expires (at two thirds of its life); a node may hold ``MAX_PER_NODE`` sessions at once,
so both stay valid until the old one expires. Opening one more ends the oldest.
**Revocation** ends every session of the node at once (:meth:`SessionTable.end_node`),
and every session heartbeat checks the key's revocation too.

The table is bounded (``max_sessions``): expired sessions are purged when it is full;
when it is still full a handshake is refused (503 ``sessions_full``).

**Session tickets** (as TLS session tickets): the session id the agent sends is
``HANDLE.TICKET``, where the ticket is the session's key, node and expiry sealed
(ChaCha20-Poly1305, the handle as associated data) under a ticket key derived from a
secret every replica shares (the service derives it from the orchestrator key, which
lives on each replica's disk). The session key is derived over the handle only, so
the ticket can carry it. A server that does not hold the session in its table (it
restarted, or the agent moved to another replica) opens the ticket on first sight and
takes the session up: no new handshake after a restart or a failover, and a follower
can forward session heartbeats to the leader as they are (MAC intact), which checks
them with the same ticket. Server nonces are made under a key derived from the same
secret, so the two requests of a handshake may reach different replicas. What a
ticket cannot carry is the last sequence number: a server taking a session up accepts
any sequence number above 0 once (a heartbeat captured on the wire could be replayed
once to each server that has not seen its session yet; it only repeats what the node
said, and the heartbeat's own timestamp must still pass the registry's checks).
"""

from __future__ import annotations

import hashlib
import hmac
import operator
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wyneos_core.service.identity import AuthError, KeyCache, b64d, b64e, verify_signature
from wyneos_core.service.limits import RateLimiter

__all__ = [
    "HANDSHAKE_FORMAT",
    "MAX_PER_NODE",
    "NONCE_PATH",
    "SESSION_PATH",
    "HandshakeRequest",
    "Session",
    "SessionTable",
    "ack_mac",
    "ack_macs",
    "answer_mac",
    "derive_key",
    "handshake_bytes",
    "mac",
    "mac_message",
    "x25519_public",
]

SESSION_PATH: Final = "/v1/sessions"
NONCE_PATH: Final = "/v1/sessions/nonce"
HANDSHAKE_FORMAT: Final = "wyneos.session/1"
NONCE_TTL: Final = 60.0
MAX_PER_NODE: Final = 2
HANDSHAKE_RATE: Final = 1.0  # successful handshakes per second per node (refill)
HANDSHAKE_BURST: Final = 10
FAILED_RATE: Final = 5.0  # failed handshakes per second per client address (refill)
FAILED_BURST: Final = 50
MAX_SEQ: Final = 2**63 - 1
MAC_BYTES: Final = 16
_HANDSHAKE_PREFIX: Final = "wyneos-session-v1"
_HB_PREFIX: Final = b"wyneos-hb-v1\n"
_ANSWER_PREFIX: Final = b"wyneos-hb-answer-v1\n"
_HKDF_INFO: Final = b"wyneos-session-key-v1"
_MAX_TICKET_ID: Final = 512  # characters of a ``HANDLE.TICKET`` session id read at most


class HandshakeRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/sessions``."""

    node_id: str
    nonce: str
    agent_key: str
    signature: str


def handshake_bytes(node_id: str, nonce: str, agent_key: str) -> bytes:
    """What the node key signs to open a session (``agent_key`` as sent, base64url)."""
    return f"{_HANDSHAKE_PREFIX}\n{node_id}\n{nonce}\n{agent_key}".encode()


def x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_key(shared: bytes, *, nonce: str, session_id: str, node_id: str, agent_key: str, server_key: str) -> bytes:
    """The 32-byte session key: HKDF-SHA256 of the X25519 shared secret, salted with the
    server nonce and bound to the node, the session and both public keys."""
    handle = session_id.split(".", 1)[0]  # ``HANDLE.TICKET``: the ticket carries the key, so only the handle
    info = b"\n".join((_HKDF_INFO, handle.encode(), node_id.encode(), agent_key.encode(), server_key.encode()))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce.encode(), info=info).derive(shared)


def mac_message(seq: int, body: bytes) -> bytes:
    """The exact bytes a session heartbeat's MAC covers."""
    return _HB_PREFIX + str(seq).encode() + b"\n" + body


def mac(key: bytes, seq: int, body: bytes) -> str:
    """The MAC of a session heartbeat: keyed BLAKE2b-128 of :func:`mac_message`, hex."""
    return hashlib.blake2b(mac_message(seq, body), key=key, digest_size=MAC_BYTES).hexdigest()


def ack_mac(key: bytes, seq: int, server_time: float) -> str:
    """The orchestrator's acknowledgement that it accepted session heartbeat ``seq`` at
    ``server_time``: what it answers, per item, to a relay that asked (``"acks": true``)
    and the relay passes on to the agent (``ack``) with the batch's ``server_time``.
    Only the orchestrator and the agent hold the key, so a relay can neither invent an
    acknowledgement nor move the server time the agent sets its clock by."""
    return answer_mac(key, seq, b"accepted " + repr(float(server_time)).encode())


def ack_macs(keys: list[bytes], seqs: list[int], server_time: float) -> list[str]:
    """:func:`ack_mac` of each (key, seq) pair, at one ``server_time``."""
    tail = b"\naccepted " + repr(float(server_time)).encode()
    blake2b = hashlib.blake2b
    return [blake2b(b"%s%d%s" % (_ANSWER_PREFIX, seq, tail), key=key, digest_size=MAC_BYTES).hexdigest()
            for key, seq in zip(keys, seqs)]


def answer_mac(key: bytes, seq: int, body: bytes) -> str:
    """The MAC the server puts on its answer to session heartbeat ``seq``
    (``x-wyneos-mac`` response header), so the agent knows the answer is the server's."""
    return hashlib.blake2b(_ANSWER_PREFIX + str(seq).encode() + b"\n" + body, key=key,
                           digest_size=MAC_BYTES).hexdigest()


class Bucket:
    """A node's heartbeat rate bucket, shared by all of its sessions."""

    __slots__ = ("tokens", "refilled")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.refilled = now


class Session:
    """One open session: its key, the last accepted sequence number, its node's rate
    bucket, and (``meta``) the metadata of its last accepted heartbeat, encoded (the
    intake's test for metadata that repeats itself; see ``heartbeat_api``)."""

    __slots__ = ("id", "node_id", "key", "expires", "seq", "bucket", "meta")

    def __init__(self, session_id: str, node_id: str, key: bytes, expires: float, bucket: Bucket) -> None:
        self.id = session_id
        self.node_id = node_id
        self.key = key
        self.expires = expires
        self.seq = 0
        self.bucket = bucket
        self.meta: bytes | None = None


@dataclass(slots=True)
class Checked:
    """A session heartbeat whose session, MAC and sequence number checked out."""

    session: Session
    seq: int


class SessionTable:
    """Open sessions by id (bounded; thread-safe), the handshake, and the per-message check.

    :param keys: the enrolled node keys (revocations are read from it too).
    :param sign: the orchestrator key's envelope signer (``OrchestratorKey.seal``).
    :param ttl: seconds a session lives.
    :param rate: heartbeats per second a node may send on average (all its sessions).
    :param burst: heartbeats a node may send at once above that rate.
    :param max_sessions: most sessions held at once.
    :param secret: what the nonce and ticket keys are derived from (every replica the
        same, and the same across restarts: sessions survive both); None: a secret of
        this process only (sessions end with it).
    """

    def __init__(self, keys: KeyCache, sign: Callable[[str, dict[str, Any]], dict[str, Any]], *,
                 ttl: float = 3600.0, rate: float = 10.0, burst: int = 20, max_sessions: int = 250_000,
                 clock: Callable[[], float] = time.time, secret: bytes | None = None) -> None:
        if not (ttl > 0 and rate > 0 and burst >= 1 and max_sessions >= 1):
            raise ValueError("ttl and rate must be above 0, burst and max_sessions at least 1")
        self.keys = keys
        self.sign = sign
        self.ttl = float(ttl)
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sessions = int(max_sessions)
        self.clock = clock
        self.lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._by_node: dict[str, list[str]] = {}
        self._used_nonces: dict[str, float] = {}
        base = os.urandom(32) if secret is None else secret
        self._secret = _subkey(base, b"nonce")
        self._tickets = ChaCha20Poly1305(_subkey(base, b"ticket"))
        self.taken_up = 0  # sessions taken up from their ticket (opened elsewhere or before a restart)
        self._next_purge = 0.0
        self.handshakes = RateLimiter(HANDSHAKE_RATE, HANDSHAKE_BURST)  # successful ones, per node
        self.failures = RateLimiter(FAILED_RATE, FAILED_BURST, max_keys=65_536)  # failed ones, per address

    # -- nonces ---------------------------------------------------------------------------

    def new_nonce(self, now: float | None = None) -> str:
        """A fresh server nonce (stateless until used)."""
        raw = struct.pack(">d", self.clock() if now is None else now) + os.urandom(16)
        return b64e(raw + hashlib.blake2b(raw, key=self._secret, digest_size=16).digest())

    def _check_nonce(self, nonce: str, now: float) -> None:
        try:
            raw = b64d(nonce)
        except ValueError:
            raw = b""
        if len(raw) != 40 or not hmac.compare_digest(
                raw[24:], hashlib.blake2b(raw[:24], key=self._secret, digest_size=16).digest()):
            raise AuthError(401, "not a nonce of this server (POST /v1/sessions/nonce for one)", "bad_nonce")
        issued = struct.unpack(">d", raw[:8])[0]
        if not issued <= now + 1.0 or now - issued > NONCE_TTL:
            raise AuthError(409, f"nonce older than {NONCE_TTL:g}s; ask for a fresh one", "stale_nonce")
        if nonce in self._used_nonces:
            raise AuthError(409, "nonce already used; ask for a fresh one", "replay")

    # -- handshake ------------------------------------------------------------------------

    def open(self, request: HandshakeRequest, now: float | None = None, source: str | None = None) -> dict[str, Any]:
        """Check a handshake and open its session; the signed answer. A refusal counts
        against ``source``'s (the client address's) budget of failed handshakes.

        :raises AuthError: 401 (bad nonce, not enrolled, bad signature), 403 (revoked),
            409 (stale or used nonce), 422 (agent key not X25519), 429 (too many failed
            handshakes from ``source``, too many handshakes of the node), 503 (table full).
        """
        now = self.clock() if now is None else now
        if source is not None and self.failures.retry_after(source) > 0:
            raise AuthError(429, "too many failed handshakes from this address; retry later", "rate_limited")
        try:
            return self._open(request, now)
        except AuthError as exc:
            if source is not None and exc.code != "rate_limited":
                self.failures.allow(source, now)
            raise

    def _open(self, request: HandshakeRequest, now: float) -> dict[str, Any]:
        node_id = request.node_id
        self._check_nonce(request.nonce, now)
        public = self.keys.get(node_id)
        if public is None:
            raise AuthError(401, f"node {node_id[:128]!r} is not enrolled (wyneos agent enrols it)", "not_enrolled")
        if self.keys.is_revoked(node_id):
            raise AuthError(403, f"the key of node {node_id!r} is revoked", "revoked")
        try:
            signature = b64d(request.signature)
        except ValueError:
            signature = b""
        if not verify_signature(public, signature, handshake_bytes(node_id, request.nonce, request.agent_key)):
            raise AuthError(401, f"bad handshake signature from node {node_id!r}", "bad_signature")
        if not self.handshakes.allow(node_id, now):
            raise AuthError(429, f"node {node_id!r} opens sessions too often (at most {HANDSHAKE_RATE:g}/s, burst "
                            f"{HANDSHAKE_BURST}); retry later", "rate_limited")
        try:
            agent_raw = b64d(request.agent_key)
            if len(agent_raw) != 32:
                raise ValueError
            server_private = X25519PrivateKey.generate()
            shared = server_private.exchange(X25519PublicKey.from_public_bytes(agent_raw))
        except ValueError:  # not 32 bytes, or a low-order point (all-zero shared secret)
            raise AuthError(422, "agent_key: not a usable X25519 public key (base64url, 32 bytes)",
                            "invalid") from None
        server_key = b64e(x25519_public(server_private))
        handle = secrets.token_urlsafe(18)
        expires = now + self.ttl
        key = derive_key(shared, nonce=request.nonce, session_id=handle, node_id=node_id,
                         agent_key=request.agent_key, server_key=server_key)
        session_id = self._ticket(handle, node_id, key, expires)
        with self.lock:
            if request.nonce in self._used_nonces:  # a concurrent handshake with the same nonce won
                raise AuthError(409, "nonce already used; ask for a fresh one", "replay")
            if len(self._sessions) >= self.max_sessions or len(self._used_nonces) >= self.max_sessions \
                    or now >= self._next_purge:
                self._purge(now)
            if len(self._sessions) >= self.max_sessions and not self._by_node.get(node_id):
                raise AuthError(503, f"session table full ({self.max_sessions} sessions); retry later",
                                "sessions_full")
            if len(self._used_nonces) >= self.max_sessions:
                raise AuthError(503, "too many handshakes in the last minute; retry later", "sessions_full")
            self._used_nonces[request.nonce] = now + NONCE_TTL + 1.0
            ids = self._by_node.setdefault(node_id, [])
            # the node's rate bucket outlives any one of its sessions (a new session is no fresh burst)
            bucket = self._sessions[ids[-1]].bucket if ids else Bucket(self.burst, now)
            while len(ids) >= MAX_PER_NODE or (ids and len(self._sessions) >= self.max_sessions):
                self._sessions.pop(ids.pop(0), None)  # the node's oldest session ends
            self._sessions[session_id] = Session(session_id, node_id, key, expires, bucket)
            ids.append(session_id)
        payload = {"node_id": node_id, "nonce": request.nonce, "agent_key": request.agent_key,
                   "server_key": server_key, "session_id": session_id, "issued_at": int(now),
                   "expires_at": int(expires), "ttl": int(self.ttl)}
        return self.sign(HANDSHAKE_FORMAT, payload)

    # -- tickets --------------------------------------------------------------------------

    def _ticket(self, handle: str, node_id: str, key: bytes, expires: float) -> str:
        """The session id ``HANDLE.TICKET`` (see the module docstring)."""
        nonce = os.urandom(12)
        sealed = self._tickets.encrypt(nonce, struct.pack(">d", expires) + key + node_id.encode(), handle.encode())
        return f"{handle}.{b64e(nonce + sealed)}"

    def issue_ticket(self, node_id: str, key: bytes, expires: float) -> str:
        """A session id ``HANDLE.TICKET`` for ``key`` (32 bytes), sealed as the handshake
        seals it: what a process holding the same secret (another replica; a benchmark
        that plays a fleet whose sessions were opened earlier) hands out. The server
        takes the session up on its first heartbeat (:meth:`check`)."""
        if len(key) != 32:
            raise ValueError("a session key is 32 bytes")
        return self._ticket(secrets.token_urlsafe(18), node_id, key, expires)

    def _take_up(self, session_id: str, now: float) -> Session | None:
        """The session a ticket carries, put in the table (caller holds ``lock``); None
        when ``session_id`` is no ticket of this secret."""
        if type(session_id) is not str or len(session_id) > _MAX_TICKET_ID or "." not in session_id:
            return None
        handle, _, text = session_id.partition(".")
        try:
            raw = b64d(text)
            plain = self._tickets.decrypt(raw[:12], raw[12:], handle.encode()) if len(raw) > 28 else b""
            expires = struct.unpack(">d", plain[:8])[0]
            key, node_id = plain[8:40], plain[40:].decode()
        except (ValueError, InvalidTag, struct.error, UnicodeDecodeError):
            return None
        if len(key) != 32 or not node_id or self.keys.get(node_id) is None or self.keys.is_revoked(node_id):
            return None
        if len(self._sessions) >= self.max_sessions:
            self._purge(now)
        ids = self._by_node.setdefault(node_id, [])
        if len(self._sessions) >= self.max_sessions and not ids:
            return None
        bucket = self._sessions[ids[-1]].bucket if ids else Bucket(self.burst, now)
        while len(ids) >= MAX_PER_NODE:
            self._sessions.pop(ids.pop(0), None)
        session = self._sessions[session_id] = Session(session_id, node_id, key, expires, bucket)
        ids.append(session_id)
        self.taken_up += 1
        return session

    # -- heartbeats -----------------------------------------------------------------------

    def check(self, session_id: str, seq: int, tag: str, body: bytes, now: float,
              pending: Mapping[str, Sequence[Any]] | None = None) -> Session:
        """Check one session heartbeat (caller holds ``lock``); changes nothing.

        ``pending`` maps session ids to ``(last sequence number, count, ...)`` of heartbeats
        accepted earlier in the same batch but not committed yet (see :meth:`commit`);
        the counts of all the node's sessions are taken from its one bucket.

        :raises AuthError: with the status and code of the refusal.
        """
        session = self._sessions.get(session_id)
        if session is None:
            session = self._take_up(session_id, now)  # opened at another replica, or before a restart
        if session is None:
            raise AuthError(401, "unknown session (open one: POST /v1/sessions)", "unknown_session")
        if now >= session.expires:
            raise AuthError(401, "session expired (open a new one: POST /v1/sessions)", "session_expired")
        if self.keys.is_revoked(session.node_id):
            raise AuthError(403, f"the key of node {session.node_id!r} is revoked", "revoked")
        if type(seq) is not int or not 0 < seq <= MAX_SEQ:
            raise AuthError(401, "seq: not a whole number in 1..2^63-1", "malformed")
        if type(tag) is not str or len(tag) != 2 * MAC_BYTES or not tag.isascii() or not hmac.compare_digest(
                hashlib.blake2b(_HB_PREFIX + str(seq).encode() + b"\n" + body, key=session.key,
                                digest_size=MAC_BYTES).hexdigest(), tag):
            raise AuthError(401, "bad MAC for this session", "bad_mac")
        earlier = None if pending is None else pending.get(session_id)
        last = session.seq if earlier is None else earlier[0]
        if seq <= last:
            raise AuthError(409, f"sequence number {seq} is not above {last}, the last accepted", "replay")
        used = 0
        if pending:
            for sid in self._by_node.get(session.node_id, ()):
                counted = pending.get(sid)
                if counted is not None:
                    used += counted[1]
        bucket = session.bucket
        elapsed = now - bucket.refilled
        tokens = min(self.burst, bucket.tokens + elapsed * self.rate) if elapsed > 0 else bucket.tokens
        if tokens - used < 1.0:
            raise AuthError(429, f"node {session.node_id!r} over its rate of {self.rate:g} heartbeats/s (burst "
                            f"{self.burst:g}, all its sessions together)", "rate_limited")
        return session

    def check_all(self, session_ids: list[str], seqs: list[int], tags: list[str], bodies: list[bytes],
                  now: float) -> list[Session] | None:
        """Check a whole batch of session heartbeats at once (caller holds ``lock``): their
        sessions, in order, when every one would pass :meth:`check` and no node appears
        twice; else None (then :meth:`check` one by one says which fail and why). Changes
        nothing: no session is taken up from its ticket here.

        The same checks as :meth:`check`, each over the whole batch in one pass (the MACs
        compared in one constant-time comparison of the joined hex strings: the computed
        ones hold no separator, so equal joined strings mean every MAC equal). A bucket
        with at least one token passes :meth:`check`'s rate test whatever its refill; one
        with less goes the careful way.
        """
        get = self._sessions.get
        sessions = [get(sid) for sid in session_ids]
        if None in sessions or not sessions:
            return None
        nodes = [s.node_id for s in sessions]  # type: ignore[union-attr]
        if len(set(nodes)) != len(nodes) or min([s.expires for s in sessions]) <= now:  # type: ignore[union-attr]
            return None
        if any(map(self.keys.is_revoked, nodes)) or min(seqs) < 1 or max(seqs) > MAX_SEQ \
                or any(map(operator.ge, [s.seq for s in sessions], seqs)):  # type: ignore[union-attr]
            return None
        given = "\n".join(tags)
        if not given.isascii():
            return None
        blake2b = hashlib.blake2b
        prefix = _HB_PREFIX
        made = "\n".join([blake2b(b"%s%d\n%s" % (prefix, seq, body), key=s.key, digest_size=MAC_BYTES).hexdigest()
                          for s, seq, body in zip(sessions, seqs, bodies)])  # type: ignore[union-attr]
        if not hmac.compare_digest(made, given) or min([s.bucket.tokens for s in sessions]) < 1.0:  # type: ignore
            return None
        return sessions  # type: ignore[return-value]

    def commit_all(self, sessions: list[Session], seqs: list[int], now: float) -> None:
        """:meth:`commit` one heartbeat of each of ``sessions`` (distinct nodes; caller holds ``lock``)."""
        burst, rate = self.burst, self.rate
        for session, seq in zip(sessions, seqs):
            bucket = session.bucket
            elapsed = now - bucket.refilled
            if elapsed > 0:
                bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
                bucket.refilled = now
            bucket.tokens -= 1
            if seq > session.seq:
                session.seq = seq

    def commit(self, session: Session, seq: int, now: float, count: int = 1) -> None:
        """Record accepted heartbeats of ``session`` (caller holds ``lock``): the last
        sequence number and ``count`` tokens of its node's rate bucket."""
        bucket = session.bucket
        elapsed = now - bucket.refilled
        if elapsed > 0:
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.refilled = now
        bucket.tokens -= count
        if seq > session.seq:
            session.seq = seq

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    # -- ending ---------------------------------------------------------------------------

    def end_node(self, node_id: str) -> int:
        """End every session of ``node_id`` (its key was revoked); how many ended."""
        with self.lock:
            ids = self._by_node.pop(node_id, [])
            for sid in ids:
                self._sessions.pop(sid, None)
        return len(ids)

    def _purge(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.expires <= now]:
            session = self._sessions.pop(sid)
            ids = self._by_node.get(session.node_id)
            if ids is not None:
                if sid in ids:
                    ids.remove(sid)
                if not ids:
                    del self._by_node[session.node_id]
        for nonce in [n for n, until in self._used_nonces.items() if until <= now]:
            del self._used_nonces[nonce]
        self._next_purge = now + 60.0

    def purge(self, now: float | None = None) -> None:
        with self.lock:
            self._purge(self.clock() if now is None else now)

    def __len__(self) -> int:
        return len(self._sessions)

    def of_node(self, node_id: str) -> list[str]:
        with self.lock:
            return list(self._by_node.get(node_id, ()))


def _subkey(secret: bytes, label: bytes) -> bytes:
    """A 32-byte key for ``label`` derived from ``secret`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"wyneos-sessions-v1-" + label).derive(secret)
