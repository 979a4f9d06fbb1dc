"""The node agent (``wyneos agent``): enrol, heartbeat, apply actions, acknowledge.

An agent runs on a node. It keeps the node's Ed25519 key (created on first start,
owner-only permissions), enrols it with the orchestrator, then every interval sends a
signed heartbeat carrying the operating system's load (1-minute load average divided
by the CPU count) and metadata about the machine. The answer to each heartbeat
carries the actions waiting for the node; the agent applies them and acknowledges
each one:

``isolate``    the node marks itself isolated (kept in its state file and reported in
               its heartbeat metadata) and runs the ``--hook`` program if one is given:
               the agent only records the isolation, the hook is what actually cuts
               the machine off (firewall rules, stopping services...);
``reinstate``  the isolation ends (and the hook runs);
anything else  is logged and acknowledged as ``ignored`` (or handed to the hook).

Each action's outcome (``applied``, ``failed`` or ``ignored``, with its detail) is kept
in the state file; an action delivered again (its acknowledgement was lost) is not
applied twice: the stored outcome is sent again.

``licence`` names the node's licence (``licence_ref`` in the enrolment and in every
heartbeat); the orchestrator pairs it with the fingerprint of the node's enrolled key.

While the server cannot be reached the agent backs off exponentially (with jitter,
up to ``max_backoff`` seconds) and keeps trying. Every applied action is logged to
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
from typing import Any
from urllib.parse import urlsplit

from wyneos_core import __version__
from wyneos_core.licensing.keys import fingerprint, generate_key, load_private_key, public_bytes, write_private_key
from wyneos_core.registry import NODE_ID_PATTERN
from wyneos_core.service.identity import b64e, sign_request

__all__ = ["Agent", "AgentError", "AgentStats", "os_load"]

log = logging.getLogger("wyneos.agent")


class AgentError(RuntimeError):
    """The agent cannot go on (enrolment refused, bad key file, ...)."""


def os_load() -> float:
    """The 1-minute load average per CPU (1.0: every CPU busy)."""
    try:
        one, _, _ = os.getloadavg()
    except OSError:  # pragma: no cover - platforms without getloadavg
        return 0.0
    return round(one / (os.cpu_count() or 1), 4)


@dataclass(slots=True)
class AgentStats:
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


class Agent:
    """One node's agent.

    :param server: base URL of ``wyneos serve`` (``http://127.0.0.1:8420``).
    :param node_id: this node's id.
    :param state_dir: where the key (``node.key``), the state file and the action log live.
    :param token: enrolment token (``wyneos enrol token``), needed on first enrolment
        unless the orchestrator's config pins this node's fingerprint.
    :param interval: seconds between heartbeats (default: what the server says).
    :param hook: a program run for each action, as ``hook TYPE TARGET`` with the action
        as JSON on its standard input; exit status 0 means applied.
    :param licence: the node's licence reference (sent as ``licence_ref``).
    """

    def __init__(self, server: str, node_id: str, state_dir: str | Path, *, token: str | None = None,
                 interval: float | None = None, metadata: dict[str, Any] | None = None, hook: str | None = None,
                 max_backoff: float = 60.0, timeout: float = 10.0, licence: str | None = None) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AgentError(f"server URL {server!r} must look like http://HOST:PORT")
        if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
            raise AgentError(f"node id {node_id!r} is not valid: 1-128 letters, digits, '_', '.', ':' or '-', "
                             "starting with a letter or digit")
        for name, value in (("interval", interval), ("max_backoff", max_backoff), ("timeout", timeout)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise AgentError(f"{name} must be a finite number of seconds above 0, got {value!r}")
        if licence is not None and not 0 < len(licence) <= 256:
            raise AgentError("licence must be a reference of 1-256 characters")
        try:
            parts.port
        except ValueError as exc:
            raise AgentError(f"server URL {server!r}: {exc}") from None
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.node_id = node_id
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.interval = interval
        self.extra_metadata = dict(metadata or {})
        self.hook = hook
        self.licence = licence
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.key = self._load_key()
        self.fingerprint = fingerprint(public_bytes(self.key))
        self.offset = 0.0  # server clock minus ours
        self.enrolled = False
        self.stats = AgentStats()
        self._conn: http.client.HTTPConnection | None = None
        self._state_path = self.state_dir / "agent-state.json"
        self.state = self._load_state()

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
        """``isolated`` and ``outcomes`` (``{action id: [status, detail]}``, the latest 500)."""
        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            state = None
        if not isinstance(state, dict):
            return {"isolated": False, "outcomes": {}}
        outcomes: dict[str, list[str]] = {}
        raw = state.get("outcomes")
        if isinstance(raw, dict):
            for action_id, value in raw.items():
                if isinstance(value, list) and len(value) == 2 and value[0] in ("applied", "failed", "ignored"):
                    outcomes[str(action_id)] = [value[0], str(value[1])]
        for action_id in state.get("applied", []) if isinstance(state.get("applied"), list) else []:
            outcomes.setdefault(str(action_id), ["applied", ""])  # written by an earlier version
        return {"isolated": bool(state.get("isolated")), "outcomes": dict(list(outcomes.items())[-500:])}

    def _save_state(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self._state_path)

    # -- HTTP ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = sign_request(self.key, self.node_id, method, path, body, timestamp=time.time() + self.offset)
        headers["content-type"] = "application/json"
        for attempt in (0, 1):
            if self._conn is None:
                cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body or None, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._close()
                if attempt:
                    raise ConnectionError(str(exc)) from None
            except (OSError, http.client.HTTPException):
                self._close()
                raise
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw[:200].decode(errors="replace")}
        return response.status, data if isinstance(data, dict) else {}, dict(response.getheaders())

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _sync_clock(self, data: dict[str, Any], headers: dict[str, str]) -> None:
        server_time = data.get("server_time")
        if isinstance(server_time, (int, float)):
            self.offset = float(server_time) - time.time()
            return
        date = headers.get("date") or headers.get("Date")
        if date:
            try:
                self.offset = parsedate_to_datetime(date).timestamp() - time.time()
            except (TypeError, ValueError):
                pass

    # -- protocol ------------------------------------------------------------------------

    def enrol(self) -> dict[str, Any]:
        body = json.dumps({"node_id": self.node_id, "public_key": b64e(public_bytes(self.key)),
                           **({"token": self.token} if self.token else {}),
                           **({"licence_ref": self.licence} if self.licence else {})}).encode()
        status, data, headers = self._request("POST", "/v1/enrol", body)
        if status in (200, 201):
            self.enrolled = True
            self.stats.enrolments += 1
            self._sync_clock(data, headers)
            if self.interval is None:
                self.interval = float(data.get("heartbeat_interval") or 6.0)
            log.info("node %s enrolled (%s), heartbeat every %gs", self.node_id, self.fingerprint, self.interval)
            return data
        if status == 409 and data.get("code") in ("stale_timestamp", "before_start", "replay"):
            self._sync_clock(data, headers)
            raise ConnectionError(f"enrolment refused for now: {data.get('error')}")
        if status >= 500:
            raise ConnectionError(f"server error {status}")
        raise AgentError(f"enrolment of {self.node_id!r} refused ({status} {data.get('code')}): {data.get('error')}")

    def heartbeat(self) -> int:
        """Send one heartbeat, apply and acknowledge the actions in the answer; the HTTP status."""
        metadata = {
            "hostname": socket.gethostname(), "platform": platform.system().lower(),
            "python": platform.python_version(), "cpus": os.cpu_count() or 1, "pid": os.getpid(),
            "agent": __version__, "isolated": self.state["isolated"], **self.extra_metadata,
        }
        body = json.dumps({"timestamp": round(time.time() + self.offset, 3), "load": os_load(),
                           "metadata": metadata, **({"licence_ref": self.licence} if self.licence else {})}).encode()
        status, data, headers = self._request("POST", "/v1/heartbeats", body)
        self.stats.sent += 1
        if status == 202:
            self.stats.accepted += 1
            self._sync_clock(data, headers)
            actions = data.get("actions") or []
            if actions:
                self.apply(actions)
            return status
        self.stats.refused += 1
        code = data.get("code")
        if status == 401 and code == "not_enrolled":
            self.enrolled = False
        elif status == 409:
            self._sync_clock({}, headers)
        elif status >= 500:
            raise ConnectionError(f"server error {status}: {data.get('error')}")
        if status == 403 and code == "revoked":
            raise AgentError(f"the key of {self.node_id!r} is revoked: {data.get('error')}")
        log.warning("heartbeat refused (%s %s): %s", status, code, data.get("error"))
        return status

    def poll(self) -> list[dict[str, Any]]:
        """Fetch and apply the actions waiting for this node (outside a heartbeat)."""
        status, data, _ = self._request("GET", f"/v1/nodes/{self.node_id}/actions")
        if status != 200:
            raise AgentError(f"action poll refused ({status}): {data.get('error')}")
        actions = data.get("actions") or []
        if actions:
            self.apply(actions)
        return actions

    def apply(self, actions: list[dict[str, Any]]) -> None:
        acks = []
        for action in actions:
            if not isinstance(action, dict) or not isinstance(action.get("id"), str):
                continue
            earlier = self.state["outcomes"].get(action["id"])
            if earlier is not None:  # delivered again: its acknowledgement was lost
                status, detail = earlier
                acks.append({"action_id": action["id"], "status": status, "detail": f"{detail} (earlier)"[:1000]})
                continue
            status, detail = self._apply_one(action)
            outcomes = self.state["outcomes"]
            outcomes[action["id"]] = [status, detail]
            while len(outcomes) > 500:
                del outcomes[next(iter(outcomes))]
            self._save_state()
            (self.stats.applied if status == "applied" else self.stats.not_applied).append(
                f"{action.get('type')}:{action.get('target')}:{status}" if status != "applied"
                else f"{action.get('type')}:{action.get('target')}")
            entry = {"time": time.time(), "action": action, "status": status, "detail": detail}
            with open(self.state_dir / "actions.log", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            log.warning("action %s %s (%s): %s - %s", action.get("type"), action.get("target"),
                        action.get("reason"), status, detail)
            acks.append({"action_id": action["id"], "status": status, "detail": detail})
        if acks:
            body = json.dumps({"acks": acks}).encode()
            status, data, _ = self._request("POST", f"/v1/nodes/{self.node_id}/actions/ack", body)
            if status != 200:
                log.warning("acknowledgement refused (%s): %s", status, data.get("error"))

    def _apply_one(self, action: dict[str, Any]) -> tuple[str, str]:
        """Apply one action: ``(status, detail)``. The isolation flag changes only when
        the action is applied (a failing hook leaves it as it was)."""
        kind, target = action.get("type"), action.get("target")
        mine = target in (self.node_id, "*")
        if not mine:
            return "ignored", f"notice: {kind} of {target}"
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
        return "applied", detail

    # -- loop ----------------------------------------------------------------------------

    def run(self, *, count: int | None = None, duration: float | None = None,
            stop: threading.Event | None = None) -> AgentStats:
        """Heartbeat until ``count`` heartbeats were sent, ``duration`` passed, or ``stop``."""
        stop = stop or threading.Event()
        deadline = None if duration is None else time.monotonic() + duration
        failures = 0
        while not stop.is_set():
            if count is not None and self.stats.sent >= count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                if not self.enrolled:
                    self.enrol()
                self.heartbeat()
                failures = 0
                wait = self.interval or 6.0
            except (ConnectionError, OSError, http.client.HTTPException) as exc:
                failures += 1
                self.stats.failures += 1
                base = min(self.max_backoff, (self.interval or 1.0) * 2 ** min(failures, 16))
                wait = base * random.uniform(0.5, 1.0)
                self.stats.backoffs = [*self.stats.backoffs[-99:], wait]
                log.warning("server %s://%s:%s unreachable (%s); retrying in %.1fs",
                            self.scheme, self.host, self.port, exc, wait)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            stop.wait(wait)
        self._close()
        return self.stats
