"""The node agent (``wyneos agent``): enrol, heartbeat, apply actions, acknowledge.

An agent runs on a node. It keeps the node's Ed25519 key (created on first start,
owner-only permissions), enrols it with the orchestrator, then every interval sends a
signed heartbeat carrying the operating system's load (1-minute load average divided
by the CPU count) and metadata about the machine. The answer to each heartbeat
carries the actions waiting for the node, each an envelope signed by the orchestrator
key (``signed_actions``); the agent verifies them, applies them and acknowledges each
one with an acknowledgement signed by the node key:

``isolate``    the node marks itself isolated (kept in its state file and reported in
               its heartbeat metadata) and runs the ``--hook`` program if one is given:
               the agent only records the isolation, the hook is what actually cuts
               the machine off (firewall rules, stopping services...);
``reinstate``  the isolation ends (and the hook runs);
other known types (``reduce_load``, ``revoke``...) are handed to the hook (or
               acknowledged as ``ignored`` without one); a type the agent does not
               know (nor was told with ``hook_types``) never reaches the hook.

Trust: the agent pins the orchestrator's public key at its first enrolment (from the
enrolment answer), or in advance (``orchestrator_key``: a fingerprint or a key file),
and then refuses an enrolment answer that carries another key. It refuses, logs and
reports to the server (with its next acknowledgement) every action that is unsigned,
badly signed, signed by another key, malformed or expired. A validly signed action
addressed to another node, of a type it does not know, or seen before (a replay, or a
redelivery after a lost acknowledgement) is not applied: it is acknowledged as
``ignored`` (a replay: with the outcome it had) saying why. Each issuance (action id
and ``issued_at``) is remembered in the state file (bounded: the oldest are forgotten
once expired, or past the bound, after which anything issued before them is refused as
a replay). The actions of one answer are applied in the order they were issued, and an
``isolate`` or ``reinstate`` issued before the one that last changed the node's
isolation is not applied (``superseded``), so reordering or holding back envelopes
cannot undo a later decision. After a key rotation the agent follows the old key's
signed hand-over to the new key and keeps trusting the old one for what it signed
before.

``licence`` names the node's licence (``licence_ref`` in the enrolment and in every
heartbeat); the orchestrator pairs it with the fingerprint of the node's enrolled key.

With ``peer_port`` the agent is also a witness of the compliance mesh
(``wyneos_core.service.peer``, ``docs/mesh.md``): it serves a peer endpoint, takes the
neighbour list the orchestrator signs into each answer (verified against the pinned
orchestrator key), probes its neighbours and sends what it saw with its next
heartbeat. Test switch: while a file ``cut-orchestrator`` exists in the state
directory the agent does not contact the orchestrator at all (its link to it is
"lost") but keeps answering and probing its peers.

While the server cannot be reached the agent backs off exponentially (with jitter,
up to ``max_backoff`` seconds) and keeps trying.

Answers are hostile until checked: an answer is read with a cap (``MAX_ANSWER_BYTES``;
a longer one is cut off, never read whole first), each request (connect, send, every
byte of the answer) has one deadline (``timeout``, and never past the end of
``run``'s ``duration``), a server time that is not finite or more than
``max_clock_offset`` seconds from this machine's clock is ignored, a heartbeat interval
outside ``MIN_INTERVAL``-``MAX_INTERVAL`` seconds is clamped (one that is not a positive
number is ignored), and every malformed answer (not JSON, ``{"actions": 5}``, an
unexpected status...) is logged and retried with backoff, never fatal. ``count`` counts
heartbeat attempts, so ``count`` and ``duration`` end the agent also while the server
is down. Every applied action is logged to
``<state-dir>/actions.log`` (JSON lines).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import platform
import random
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from wyneos_core import __version__
from wyneos_core.service.agent_metrics import MetricSource
from wyneos_core.service.integrity import FileDigest
from wyneos_core.licensing.keys import (
    KeyFileError,
    fingerprint,
    generate_key,
    load_private_key,
    load_public_key,
    public_bytes,
    write_private_key,
)
from wyneos_core.licensing.envelope import FormatError, load_json
from wyneos_core.registry import NODE_ID_PATTERN
from wyneos_core.safeio import read_regular_file
from wyneos_core.service import signed_actions as sa
from wyneos_core.service.bounded_http import AnswerTooLarge, AnswerTooSlow, exchange
from wyneos_core.service.identity import b64d, b64e, sign_request

__all__ = ["Agent", "AgentError", "AgentStats", "os_load"]

log = logging.getLogger("wyneos.agent")


class AgentError(RuntimeError):
    """The agent cannot go on (enrolment refused, bad key file, ...)."""


class BadAnswer(ConnectionError):
    """The server's answer cannot be used (too big, too slow, malformed): retried."""


#: the largest answer the agent reads (a longer one is refused unread)
MAX_ANSWER_BYTES = 8 * 1024 * 1024
#: marks (in the headers ``_send_heartbeat`` returns) an answer whose MAC checked out
_VERIFIED = "x-wyneos-verified-by-agent"
#: most actions one answer may carry
MAX_ACTIONS = 1000
#: bounds on the heartbeat interval a server may ask for (seconds)
MIN_INTERVAL = 0.05
MAX_INTERVAL = 3600.0
DEFAULT_INTERVAL = 6.0


def os_load() -> float:
    """The 1-minute load average per CPU (1.0: every CPU busy)."""
    try:
        one, _, _ = os.getloadavg()
    except OSError:  # pragma: no cover - platforms without getloadavg
        return 0.0
    return round(one / (os.cpu_count() or 1), 4)


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


class Agent:
    """One node's agent.

    :param server: base URL of ``wyneos serve`` (``http://127.0.0.1:8420``); with replicas
        on etcd, several separated by commas (any of them: the next one when one fails).
    :param node_id: this node's id.
    :param state_dir: where the key (``node.key``), the state file and the action log live.
    :param token: enrolment token (``wyneos enrol token``), needed on first enrolment
        unless the orchestrator's config pins this node's fingerprint.
    :param interval: seconds between heartbeats (default: what the server says).
    :param hook: a program run for each action, as ``hook TYPE TARGET`` with the action
        as JSON on its standard input; exit status 0 means applied.
    :param licence: the node's licence reference (sent as ``licence_ref``).
    :param orchestrator_key: pin the orchestrator key in advance: its fingerprint
        (``sha256:...``) or a file holding its PEM public key (or its fingerprint).
    :param hook_types: action types beyond the builtin ones to hand to the hook.
    :param clock_tolerance: seconds of clock difference allowed when checking the
        validity times of signed actions.
    :param timeout: the deadline of each request, from connecting to the last byte of
        the answer (seconds).
    :param max_clock_offset: a server time further than this from the local clock is
        ignored (seconds).

    ``interval`` and ``max_backoff`` below ``MIN_INTERVAL`` are raised to it (with a log
    line): no setting removes the delay between requests.
    :param sessions: send heartbeats in a session (one signed handshake, then a MAC
        per heartbeat: docs/sessions.md); False: sign every heartbeat.
    """

    #: issuances remembered for replay protection
    MAX_SEEN = 4096
    #: refusal reports kept until the server has them
    MAX_REPORTS = 100

    def __init__(self, server: str, node_id: str, state_dir: str | Path, *, token: str | None = None,
                 interval: float | None = None, metadata: dict[str, Any] | None = None, hook: str | None = None,
                 max_backoff: float = 60.0, timeout: float = 10.0, licence: str | None = None,
                 orchestrator_key: str | None = None, hook_types: tuple[str, ...] | list[str] = (),
                 clock_tolerance: float = 300.0, max_clock_offset: float = 86400.0,
                 peer_port: int | None = None, peer_host: str = "127.0.0.1",
                 peer_relay_rate: float = 2.0, peer_relay_burst: int = 8,
                 sessions: bool = True, integrity_file: str | Path | None = None,
                 metrics: MetricSource | None = None) -> None:
        self.servers: list[tuple[str, str, int | None]] = []
        for url in server.split(","):  # replicas on etcd: any of them, the next one when one fails
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise AgentError(f"server URL {url!r} must look like http://HOST:PORT")
            try:
                self.servers.append((parts.scheme, parts.hostname, parts.port))
            except ValueError as exc:
                raise AgentError(f"server URL {url!r}: {exc}") from None
        if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
            raise AgentError(f"node id {node_id!r} is not valid: 1-128 letters, digits, '_', '.', ':' or '-', "
                             "starting with a letter or digit")
        for name, value in (("interval", interval), ("max_backoff", max_backoff), ("timeout", timeout)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise AgentError(f"{name} must be a finite number of seconds above 0, got {value!r}")
        if licence is not None and not 0 < len(licence) <= 256:
            raise AgentError("licence must be a reference of 1-256 characters")
        for kind in hook_types:
            if not isinstance(kind, str) or not sa.TYPE_PATTERN.match(kind):
                raise AgentError(f"hook type {kind!r} is not an action type (lower-case letters and '_')")
        pin = None if orchestrator_key is None else _read_pin(orchestrator_key)
        self._server = 0
        self.scheme, self.host, self.port = self.servers[0]
        self.node_id = node_id
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        if interval is not None and interval < MIN_INTERVAL:
            log.warning("interval %gs is below %gs; using %gs", interval, MIN_INTERVAL, MIN_INTERVAL)
            interval = MIN_INTERVAL
        if max_backoff < MIN_INTERVAL:
            log.warning("max_backoff %gs is below %gs; using %gs", max_backoff, MIN_INTERVAL, MIN_INTERVAL)
            max_backoff = MIN_INTERVAL
        self.interval = interval
        self.extra_metadata = dict(metadata or {})
        #: the licensed artefact whose digest each heartbeat reports (``integrity``)
        self.integrity = None if integrity_file is None else FileDigest(integrity_file)
        #: telemetry read for every heartbeat (``--metric``, ``--metrics-file``; docs/prediction.md)
        self.metrics = metrics
        self.hook = hook
        self.licence = licence
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.key = self._load_key()
        self.fingerprint = fingerprint(public_bytes(self.key))
        self.offset = 0.0  # server clock minus ours
        self.max_clock_offset = float(max_clock_offset)
        self._deadline: float | None = None  # monotonic end of the current run
        self.enrolled = False
        self.stats = AgentStats()
        self._conn: http.client.HTTPConnection | None = None
        self.hook_types = frozenset(hook_types)
        self.clock_tolerance = float(clock_tolerance)
        self.sessions = sessions
        self._sessions: Any = None
        self._state_path = self.state_dir / "agent-state.json"
        self.state = self._load_state()
        self.trusted = sa.TrustedKeys(self.state["orchestrator_keys"])
        self._keyring_seen: str | None = None  # signature of the last keyring statement applied
        if pin is not None:
            if isinstance(pin, bytes):
                pin_fp = fingerprint(pin)
            else:
                pin_fp = pin
            if len(self.trusted) and pin_fp not in self.trusted.fingerprints():
                raise AgentError(f"--orchestrator-key {pin_fp} is not the key this agent pinned before "
                                 f"({', '.join(self.trusted.fingerprints())}); to trust another orchestrator, "
                                 f"remove {self._state_path}")
            if isinstance(pin, bytes) and not len(self.trusted):
                self._pin(pin)
        self.pin = pin
        self.peer: Any = None
        if peer_port is not None:
            from wyneos_core.service.peer import PeerNode

            try:
                self.peer = PeerNode(node_id, self.key, self._orchestrator_keyring, host=peer_host, port=peer_port,
                                     interval=interval or 5.0, relay_rate=peer_relay_rate,
                                     relay_burst=peer_relay_burst)
            except OSError as exc:
                raise AgentError(f"peer endpoint {peer_host}:{peer_port} cannot be bound: {exc}") from None
            except ValueError as exc:  # the relay rate limit's settings
                raise AgentError(f"--peer-relay-rate/--peer-relay-burst: {exc}") from None
            self.peer.on_relay = self.receive_relayed  # signed actions a neighbour relays to us
        self._apply_lock = threading.RLock()  # the heartbeat loop and relayed actions apply one at a time

    # -- files ---------------------------------------------------------------------------

    def _load_key(self) -> Any:
        path = self.state_dir / "node.key"
        if path.exists():
            try:
                return load_private_key(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable key file is fatal
                text = str(exc)
                raise AgentError(text if str(path) in text else f"{path}: {text}") from None
        key = generate_key()
        write_private_key(path, key)
        log.info("created node key %s (%s)", path, fingerprint(public_bytes(key)))
        return key

    def _load_state(self) -> dict[str, Any]:
        """``isolated`` (and ``isolation_at``: the ``issued_at`` of the isolate or reinstate
        that set it; an older one is not applied), ``seen``
        (``{"id@issued_at": [status, detail, expires_at]}``),
        ``horizon`` (issuances up to this ``issued_at`` are forgotten: refused as replays),
        ``orchestrator_keys`` (pinned, base64url raw) and ``reports`` (refusals not yet
        delivered to the server)."""
        if not self._state_path.exists():
            state: Any = {}
        else:  # damaged: refused, never silently reset (it holds the pinned orchestrator key)
            try:  # a regular file opened without blocking (a FIFO or a device there would hang us)
                state = json.loads(read_regular_file(self._state_path, 64 * 1024 * 1024))
                if not isinstance(state, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                raise AgentError(f"{self._state_path}: damaged ({exc}); move it away to start afresh (the agent "
                                 "then forgets the orchestrator key it pinned and the actions it handled)") from None
        seen: dict[str, list[Any]] = {}
        raw = state.get("seen")
        if isinstance(raw, dict):
            for key, value in raw.items():
                if isinstance(value, list) and len(value) == 3 and value[0] in sa.ACK_STATUSES \
                        and isinstance(value[2], int):
                    seen[str(key)] = [value[0], str(value[1]), value[2]]
        keys: list[bytes] = []
        for text in state.get("orchestrator_keys", []) if isinstance(state.get("orchestrator_keys"), list) else []:
            try:
                keys.append(b64d(text))
            except ValueError:
                continue
        reports = [r for r in state.get("reports", []) if isinstance(r, dict)] \
            if isinstance(state.get("reports"), list) else []
        horizon = state.get("horizon") if isinstance(state.get("horizon"), int) else 0
        isolation_at = state.get("isolation_at") if isinstance(state.get("isolation_at"), int) else 0
        retired = state.get("retired") if isinstance(state.get("retired"), dict) else {}
        retired = {str(k)[:64]: v for k, v in list(retired.items())[-16:] if type(v) is int}
        return {"isolated": bool(state.get("isolated")), "isolation_at": isolation_at, "retired": retired,
                "seen": dict(list(seen.items())[-self.MAX_SEEN:]),
                "horizon": horizon, "orchestrator_keys": [k for k in keys if len(k) == 32],
                "reports": reports[-self.MAX_REPORTS:]}

    def _save_state(self) -> None:
        self.state["orchestrator_keys"] = [b64e(raw) for raw in self.trusted.raw()]
        tmp = self._state_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(self.state))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._state_path)

    def _pin(self, raw: bytes) -> None:
        retired_at = self.state.get("retired", {}).get(sa.key_entry(raw)["key_id"])
        if retired_at is not None and retired_at <= sa.now_ms():
            log.warning("not pinning orchestrator key %s: it is retired", fingerprint(raw))
            return
        kid = self.trusted.add(raw)
        self._save_state()
        log.warning("pinned orchestrator key %s (%s)", kid, fingerprint(raw))

    # -- HTTP ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any], dict[str, str]]:
        """One request with one deadline for all of it; the answer read with a cap.

        :raises BadAnswer: the answer is too big, too slow, or (2xx) not a JSON object.
        :raises ConnectionError, OSError, http.client.HTTPException: network failures.
        """
        headers = sign_request(self.key, self.node_id, method, path, body, timestamp=time.time() + self.offset)
        headers["content-type"] = "application/json"
        deadline = time.monotonic() + self.timeout
        if self._deadline is not None:
            deadline = min(deadline, self._deadline)
        for attempt in (0, 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._close()
                raise BadAnswer(f"no answer within the request deadline ({self.timeout:g}s or the end of the run)")
            if self._conn is None:
                cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self.host, self.port, timeout=remaining)
            try:  # one deadline for all of it, the answer capped (``bounded_http``)
                response, raw = exchange(self._conn, method, path, body or None, headers, deadline=deadline,
                                         max_bytes=MAX_ANSWER_BYTES)
                break
            except AnswerTooLarge as exc:
                self._close()
                raise BadAnswer(str(exc)) from None
            except (AnswerTooSlow, TimeoutError) as exc:
                self._close()
                raise BadAnswer(f"the answer did not arrive within the request deadline ({exc})") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._close()
                if attempt:
                    raise ConnectionError(str(exc)) from None
            except (OSError, http.client.HTTPException):
                self._close()
                raise
            except ValueError as exc:
                self._close()
                raise BadAnswer(str(exc)) from None
        try:
            data = load_json(raw) if raw.strip() else {}
        except FormatError as exc:
            if 200 <= response.status < 300:
                raise BadAnswer(f"{method} {path}: answer {response.status} is not JSON ({exc})") from None
            data = {"error": raw[:200].decode(errors="replace")}
        if not isinstance(data, dict):
            if 200 <= response.status < 300:
                raise BadAnswer(f"{method} {path}: answer {response.status} is not a JSON object")
            data = {}
        return response.status, data, {k.lower(): v for k, v in response.getheaders()}

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _sync_clock(self, data: dict[str, Any], headers: dict[str, str]) -> None:
        """Take the server's clock from its answer, unless it is absurd (logged, ignored)."""
        now = time.time()
        server_time = data.get("server_time")
        if server_time is not None:
            if type(server_time) in (int, float) and math.isfinite(server_time) \
                    and abs(server_time - now) <= self.max_clock_offset:
                self.offset = float(server_time) - now
                return
            log.warning("ignored server_time %.60r: not a finite time within %gs of this machine's clock",
                        server_time, self.max_clock_offset)
        date = headers.get("date")
        if date:
            try:
                at = parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError, OverflowError, IndexError):
                return
            if math.isfinite(at) and abs(at - now) <= self.max_clock_offset:
                self.offset = at - now
            else:
                log.warning("ignored Date header %.60r: more than %gs from this machine's clock", date,
                            self.max_clock_offset)

    def _server_interval(self, value: Any) -> float:
        """The heartbeat interval a server asks for, bounded (a bad one logged and ignored)."""
        if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
            log.warning("ignored heartbeat_interval %.60r from the server: not a positive number of seconds; "
                        "using %gs", value, DEFAULT_INTERVAL)
            return DEFAULT_INTERVAL
        bounded = min(MAX_INTERVAL, max(MIN_INTERVAL, float(value)))
        if bounded != value:
            log.warning("heartbeat_interval %r from the server is outside %g-%gs; using %gs", value, MIN_INTERVAL,
                        MAX_INTERVAL, bounded)
        return bounded

    # -- protocol ------------------------------------------------------------------------

    def enrol(self) -> dict[str, Any]:
        body = json.dumps({"node_id": self.node_id, "public_key": b64e(public_bytes(self.key)),
                           **({"token": self.token} if self.token else {}),
                           **({"licence_ref": self.licence} if self.licence else {})}).encode()
        status, data, headers = self._request("POST", "/v1/enrol", body)
        if status in (200, 201):
            self._check_enrolment_key(data.get("orchestrator_key"))
            self.enrolled = True
            self.stats.enrolments += 1
            self._sync_clock(data, headers)
            if self.interval is None:
                self.interval = self._server_interval(data.get("heartbeat_interval"))
            log.info("node %s enrolled (%s), heartbeat every %gs", self.node_id, self.fingerprint, self.interval)
            return data
        if status == 409 and data.get("code") in ("stale_timestamp", "before_start", "replay"):
            self._sync_clock(data, headers)
            raise ConnectionError(f"enrolment refused for now: {data.get('error')}")
        if status >= 500:
            raise ConnectionError(f"server error {status}")
        if status < 400:
            raise BadAnswer(f"enrolment answered with status {status}")
        code = data.get("code")
        if status not in (401, 403, 409, 422) or not isinstance(code, str) or not sa.TYPE_PATTERN.match(code):
            # a rate limit (429), or not the server's structured refusal: try again later
            raise BadAnswer(f"enrolment answered {status} {str(code)[:60] if code is not None else ''}".rstrip())
        raise AgentError(f"enrolment of {self.node_id!r} refused ({status} {code}): {str(data.get('error'))[:500]}")

    def _check_enrolment_key(self, info: Any) -> None:
        """Pin the orchestrator key of an enrolment answer, or refuse the answer
        (``AgentError``) when it carries another key than the one pinned."""
        try:
            if not isinstance(info, dict):
                raise ValueError("no orchestrator_key")
            raw = b64d(info["public_key"])
            if len(raw) != 32:
                raise ValueError("not 32 bytes")
        except (KeyError, TypeError, ValueError) as exc:
            raise BadAnswer(f"the enrolment answer carries no usable orchestrator key ({exc})") from None
        fp = fingerprint(raw)
        kid = sa.key_entry(raw)["key_id"]
        if kid in self.trusted:
            return
        handover = info.get("handover")
        if len(self.trusted) or self.pin is not None:
            if handover is not None and len(self.trusted):
                try:
                    if sa.open_rotation(handover, self.trusted) == raw:
                        self._pin(raw)
                        return
                except sa.Refused:
                    pass
            if isinstance(self.pin, str) and not len(self.trusted):
                if fp == self.pin:
                    self._pin(raw)
                    return
                for entry in info.get("previous") or []:  # rotated after the operator read the fingerprint
                    try:
                        old = b64d(entry["public_key"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    if fingerprint(old) == self.pin and handover is not None:
                        try:
                            if sa.open_rotation(handover, sa.TrustedKeys([old])) == raw:
                                self._pin(old)
                                self._pin(raw)
                                return
                        except sa.Refused:
                            pass
            pinned = ", ".join(self.trusted.fingerprints()) or str(self.pin)
            raise AgentError(f"the enrolment answer carries orchestrator key {fp}, not the pinned {pinned}: "
                             "refusing it (another orchestrator, or someone in between); if the orchestrator's key "
                             f"was replaced without `wyneos orchestrator-key rotate`, remove {self._state_path} "
                             "and pin the new key with --orchestrator-key")
        self._pin(raw)  # trust on first use: pin what the enrolment answer says

    def _follow_key(self, ref: Any) -> None:
        """Trust the successor of a pinned key after a rotation (from its signed hand-over),
        then apply the orchestrator's keyring statement (retired and dropped keys)."""
        if not isinstance(ref, dict) or not isinstance(ref.get("key_id"), str):
            return
        if ref["key_id"] not in self.trusted and "handover" in ref:
            try:
                raw = sa.open_rotation(ref["handover"], self.trusted)
            except sa.Refused as exc:
                self._report(exc.reason, f"orchestrator key hand-over refused: {exc.detail}", None)
            else:
                self._pin(raw)
        if ref.get("keyring") is not None:
            self._apply_keyring(ref["keyring"])

    def _apply_keyring(self, statement: Any) -> None:
        """Stop trusting the keys the orchestrator's keyring statement (signed by the
        newest pinned key) no longer lists, and note its retirements (``_retire_due``)."""
        signature = statement.get("signature") if isinstance(statement, dict) else None
        if signature is not None and signature == self._keyring_seen:
            self._retire_due()
            return
        try:
            listed, retired = sa.open_keyring(statement, self.trusted)
        except sa.Refused as exc:
            if exc.reason != "stale":  # an older key's statement (answers in flight during a rotation): ignored
                log.warning("orchestrator keyring statement refused (%s): %s", exc.reason, exc.detail)
            return
        self._keyring_seen = signature
        changed = False
        known = self.state.setdefault("retired", {})
        for kid, at in retired.items():
            if known.get(kid) != at:
                known[kid] = at
                changed = True
        for kid in list(known)[:-16]:  # bounded
            del known[kid]
        for kid in self.trusted.ids():
            if kid not in listed and self.trusted.remove(kid):
                log.warning("orchestrator key %s is no longer held by the orchestrator: not trusted any more", kid)
                changed = True
        if self._retire_due() or changed:
            self._save_state()

    def _retire_due(self) -> bool:
        """Stop trusting, for good, the retired keys whose date has passed; whether any was."""
        now = sa.now_ms()
        dropped = False
        for kid, at in self.state.get("retired", {}).items():
            if at <= now and kid in self.trusted and len(self.trusted) > 1 and self.trusted.remove(kid):
                log.warning("orchestrator key %s retired: actions signed by it are refused from now on", kid)
                dropped = True
        if dropped:
            self._save_state()
        return dropped

    def _orchestrator_keyring(self) -> Any:
        """The pinned orchestrator keys as a ``KeyRing`` (None while none is pinned)."""
        if not len(self.trusted):
            return None
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from wyneos_core.licensing.keys import KeyRing

        return KeyRing(Ed25519PublicKey.from_public_bytes(raw) for raw in self.trusted.raw())

    def heartbeat(self) -> int:
        """Send one heartbeat, apply and acknowledge the actions in the answer; the HTTP status."""
        metadata = {
            "hostname": socket.gethostname(), "platform": platform.system().lower(),
            "python": platform.python_version(), "cpus": os.cpu_count() or 1, "pid": os.getpid(),
            "agent": __version__, "version": __version__, "isolated": self.state["isolated"], **self.extra_metadata,
        }
        if self.integrity is not None:
            metadata["integrity"] = self.integrity.current()
        witness: dict[str, Any] = {}
        if self.peer is not None:
            metadata["peer_address"] = self.peer.address
            self.peer.seq = self.stats.sent + 1
            witness["observations"] = self.peer.report()
        body = json.dumps({"timestamp": round(time.time() + self.offset, 3), "load": os_load(),
                           "metadata": metadata, **({"licence_ref": self.licence} if self.licence else {}),
                           **witness, **({"metrics": self.metrics.read()} if self.metrics is not None else {}),
                           }).encode()
        status, data, headers = self._send_heartbeat(body)
        self.stats.sent += 1
        if status == 202:
            self.stats.accepted += 1
            if data.get("relayed") is not True or headers.get(_VERIFIED) == "1":
                # a relay's own answer to a signed heartbeat is not the orchestrator's: its
                # server time is not taken (through a relay, a session answer's is, MACed)
                self._sync_clock(data, headers)
            self._follow_key(data.get("orchestrator_key"))
            if self.peer is not None:
                self.peer.update(data.get("neighbours"))
            actions = _actions(data, "heartbeat")
            if actions or self.state["reports"]:
                self.apply(actions)
            if self.peer is not None and data.get("relay"):
                self.relay_actions(data["relay"])
            return status
        if status < 400:
            raise BadAnswer(f"heartbeat answered with status {status} (expected 202)")
        self.stats.refused += 1
        code = data.get("code")
        if status == 401 and code == "not_enrolled":
            self.enrolled = False
        elif status == 409:
            self._sync_clock({}, headers)
        elif status == 422 and str(data.get("field", "")).startswith("metrics.") and self.metrics is not None:
            self.metrics.refuse(str(data["field"])[len("metrics."):])  # one bad metric never silences the node
        elif status == 422 and data.get("field") == "timestamp" and self.offset:
            # refused for its clock: the offset learned from an earlier answer is dropped (this
            # machine's clock again) and taken anew from the next authenticated answer, so one
            # answer with a wrong server time cannot silence the agent for good
            log.warning("heartbeat refused for its timestamp with a clock offset of %.1fs: the offset is dropped",
                        self.offset)
            self.offset = 0.0
        elif status >= 500:
            raise ConnectionError(f"server error {status}: {data.get('error')}")
        if status == 403 and code == "revoked":
            raise AgentError(f"the key of {self.node_id!r} is revoked: {data.get('error')}")
        log.warning("heartbeat refused (%s %s): %s", status, code, data.get("error"))
        return status

    def _send_heartbeat(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """A session heartbeat (``wyneos_core.service.session_client``: one signed
        handshake, then MACed heartbeats on a kept-open connection); a signed one when
        sessions are off or the handshake fails for another reason than the key."""
        if not self.sessions:
            return self._signed_heartbeat(body)
        from wyneos_core.service.session_client import SessionClient, SessionError

        if self._sessions is None:
            self._sessions = SessionClient(f"{self.scheme}://{self.host}:{self.port}", self.node_id, self.key,
                                           timeout=self.timeout)
        self._sessions.pinned = tuple(self.trusted.fingerprints())  # the handshake answer: the pinned key only
        self._sessions.deadline = self._deadline  # never past the end of the run
        try:
            status, data = self._sessions.heartbeat(body)
            return status, data, {_VERIFIED: "1"} if status == 202 else {}
        except SessionError as exc:
            if exc.code in ("revoked", "not_enrolled"):
                return exc.status, {"code": exc.code, "error": str(exc)}, {}
            log.warning("heartbeat session: %s; sending a signed heartbeat instead", exc)
            return self._signed_heartbeat(body)

    def _signed_heartbeat(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        status, data, headers = self._request("POST", "/v1/heartbeats", body)
        headers.pop(_VERIFIED, None)  # only the session client vouches for an answer
        return status, data, headers

    def poll(self) -> list[dict[str, Any]]:
        """Fetch and apply the actions waiting for this node (outside a heartbeat)."""
        status, data, _ = self._request("GET", f"/v1/nodes/{self.node_id}/actions")
        if status != 200:
            raise BadAnswer(f"action poll refused ({status}): {data.get('error')}")
        self._follow_key(data.get("orchestrator_key"))
        actions = _actions(data, "action poll")
        if actions or self.state["reports"]:
            self.apply(actions)
        return actions

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

    # -- loop ----------------------------------------------------------------------------

    def run(self, *, count: int | None = None, duration: float | None = None,
            stop: threading.Event | None = None) -> AgentStats:
        """Heartbeat until ``count`` heartbeats were attempted, ``duration`` passed, or ``stop``.

        Both bounds hold while the server is down or answers slowly: no request runs
        past the end of ``duration``, and failed attempts count.
        """
        stop = stop or threading.Event()
        deadline = None if duration is None else time.monotonic() + duration
        self._deadline = deadline
        failures = 0
        if self.peer is not None:
            self.peer.start()
        cut = self.state_dir / "cut-orchestrator"
        try:
            while not stop.is_set():
                if cut.exists():  # test switch: the link to the orchestrator is "lost"; peers still see us
                    stop.wait(self.interval or 1.0)
                    continue
                if count is not None and self.stats.attempts >= count:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.stats.attempts += 1
                try:
                    if not self.enrolled:
                        self.enrol()
                    self.heartbeat()
                    failures = 0
                    wait = self.interval or DEFAULT_INTERVAL
                except AgentError:
                    raise
                except Exception as exc:  # noqa: BLE001 - whatever the server sent, never fatal
                    failures += 1
                    self.stats.failures += 1
                    base = min(self.max_backoff, (self.interval or 1.0) * 2 ** min(failures, 16))
                    wait = max(MIN_INTERVAL / 2, base * random.uniform(0.5, 1.0))
                    self.stats.backoffs = [*self.stats.backoffs[-99:], wait]
                    if isinstance(exc, BadAnswer):
                        self.stats.bad_answers += 1
                        log.warning("bad answer from %s://%s:%s (%s); retrying in %.1fs", self.scheme, self.host,
                                    self.port, exc, wait)
                    elif isinstance(exc, (ConnectionError, OSError, http.client.HTTPException)):
                        log.warning("server %s://%s:%s unreachable (%s); retrying in %.1fs",
                                    self.scheme, self.host, self.port, exc, wait)
                        if len(self.servers) > 1:  # the next replica; at once while others are untried
                            self._close()
                            self._server = (self._server + 1) % len(self.servers)
                            self.scheme, self.host, self.port = self.servers[self._server]
                            if self._sessions is not None:  # its ticket is good at every replica
                                self._sessions.move_to(self.scheme, self.host, self.port)
                            if failures <= len(self.servers) - 1:
                                wait = MIN_INTERVAL / 2
                    else:
                        self.stats.bad_answers += 1
                        log.warning("could not use the answer of %s://%s:%s (%s: %s); retrying in %.1fs",
                                    self.scheme, self.host, self.port, type(exc).__name__, exc, wait, exc_info=True)
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                if count is not None and self.stats.attempts >= count:
                    break
                stop.wait(wait)
        finally:
            self._deadline = None
            self._close()
            if self.peer is not None:
                self.peer.close()
        return self.stats


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


def _actions(data: dict[str, Any], what: str) -> list[Any]:
    """The ``actions`` of an answer: a list of at most ``MAX_ACTIONS`` (else ``BadAnswer``)."""
    actions = data.get("actions", [])
    if actions is None:
        return []
    if not isinstance(actions, list):
        raise BadAnswer(f"{what} answer: actions is {type(actions).__name__}, not a list")
    if len(actions) > MAX_ACTIONS:
        raise BadAnswer(f"{what} answer: {len(actions)} actions, more than {MAX_ACTIONS}")
    return actions


def _flip(envelope: Any) -> Any:
    """A copy of ``envelope`` with one character of its reason changed (test switch)."""
    try:
        copy = json.loads(json.dumps(envelope))
        reason = copy["payload"]["reason"]
        copy["payload"]["reason"] = ("X" if reason[:1] != "X" else "Y") + reason[1:]
        return copy
    except (KeyError, TypeError, ValueError):
        return envelope


def _read_pin(text: str) -> bytes | str:
    """``--orchestrator-key``: a fingerprint, or a file with the PEM public key or a fingerprint."""
    import re

    if re.fullmatch(r"sha256:[0-9a-f]{64}", text.strip()):
        return text.strip()
    path = Path(text)
    try:
        if not path.is_file():
            raise AgentError(f"--orchestrator-key {text!r}: neither a fingerprint (sha256:<64 hex digits>) nor a file")
        if path.stat().st_size > 16 * 1024:
            raise AgentError(f"{path}: larger than 16 KiB; not a key file")
        content = path.read_text(errors="replace").strip()
    except OSError as exc:
        raise AgentError(f"{path}: cannot read the orchestrator key: {exc.strerror or exc}") from None
    if re.fullmatch(r"sha256:[0-9a-f]{64}", content):
        return content
    try:
        return public_bytes(load_public_key(path))
    except KeyFileError as exc:
        raise AgentError(f"{exc}; expected a PEM public key or a fingerprint (sha256:...)") from None
