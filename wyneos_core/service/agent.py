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

Trust: the agent pins the orchestrator's public key and follows its rotations
(``wyneos_core.service.agent_keys``); it verifies every action before use, applies
each issuance once and in the order decided, and reports what it refuses
(``wyneos_core.service.agent_actions``).

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
is down.
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
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wyneos_core import __version__
from wyneos_core.service.agent_metrics import MetricSource
from wyneos_core.service.integrity import FileDigest
from wyneos_core.licensing.keys import fingerprint, generate_key, load_private_key, public_bytes, write_private_key
from wyneos_core.licensing.envelope import FormatError, load_json
from wyneos_core.registry import NODE_ID_PATTERN
from wyneos_core.safeio import read_regular_file
from wyneos_core.service import signed_actions as sa
from wyneos_core.service.agent_actions import AgentActions, AgentStats
from wyneos_core.service.agent_errors import AgentError, BadAnswer
from wyneos_core.service.agent_keys import AgentKeys, _read_pin
from wyneos_core.service.bounded_http import AnswerTooLarge, AnswerTooSlow, exchange
from wyneos_core.service.identity import b64d, b64e, sign_request

__all__ = ["Agent", "AgentError", "AgentStats", "os_load"]

log = logging.getLogger("wyneos.agent")


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


class Agent(AgentKeys, AgentActions):
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
