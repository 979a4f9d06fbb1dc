"""Agents as witnesses: signed neighbour lists, a peer endpoint, bounded probes.

Service-mode half of the compliance mesh (``docs/mesh.md``):

* ``NeighbourBook`` (orchestrator side, a plugin, in ``service.neighbour_book``, and
  importable from here): hands each agent its own list of mesh neighbours - id, the peer
  address the node reported (``metadata.peer_address``), the fingerprint of its enrolled
  key - sealed with the orchestrator key (format ``wyneos.neighbours/1``), in the answer
  to its heartbeat; the list is made when the node asks, from the registry and mesh of
  the last tick (the tick does nothing per node);
* ``PeerNode`` (agent side): serves ``GET /v1/peer/ping?nonce=N`` on a loopback (or
  given) address, answering with its id, its heartbeat sequence and its public key,
  signed by its node key over the prober's nonce; probes the neighbours of the
  *verified* list (at most ``MAX_NEIGHBOURS``), ``PROBE_WORKERS`` at a time, each
  probe with one deadline of ``PROBE_TIMEOUT`` seconds for all of it (connect, send,
  the whole answer: a tarpit neighbour costs one deadline, never more), so a round
  takes at most ``ROUND_TIMEOUT``; the rounds are jittered. It checks the answer's key
  against the listed fingerprint and its signature, and keeps the latest observation
  of each, which the agent sends with its next heartbeat (signed with it, like
  everything in the heartbeat body) with its **age** (``age_s``): an observation older
  than ``MAX_OBSERVATION_AGE`` is not sent, and the orchestrator does not count one
  that old (a dead neighbour is never reported reachable from stale data).

The peer endpoint is bounded like ``wyneos serve``: at most ``MAX_PEER_CONNECTIONS``
connections at once (more are closed at once, before a thread is started), and a
connection that does not deliver its whole request (head and body) within
``PEER_TIMEOUT`` seconds is closed - one deadline for the request, not per read, so a
request trickled a byte at a time holds its thread no longer (``deadline_request``):
1,000 silent or trickling sockets hold no more than that many threads, for that long.

``POST /v1/peer/relay`` (signed actions a neighbour relays) takes a push only signed
by the key of a neighbour in the verified list, and is rate limited per source address
(``RateLimiter``: a bounded table of token buckets; 429 past it).

A neighbour list that does not verify against the pinned orchestrator key is refused
(the agent keeps the one it had); without a pinned key the agent does not probe at
all: no unsigned trust. Sizes are bounded before they are read.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import re
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wyneos_core.licensing.envelope import EnvelopeError, open_envelope
from wyneos_core.licensing.keys import KeyRing, fingerprint, public_bytes
from wyneos_core.service.bounded_http import exchange
from wyneos_core.service.deadline_request import DeadlineRequestHandler
from wyneos_core.service.neighbour_book import MAX_NEIGHBOURS, NEIGHBOURS_FORMAT, PEER_ADDRESS, NeighbourBook

__all__ = ["NEIGHBOURS_FORMAT", "RELAY_PATH", "NeighbourBook", "PeerNode", "RateLimiter", "ping_message",
           "relay_message"]

log = logging.getLogger("wyneos.peer")

PING_PATH = "/v1/peer/ping"
#: where a peer pushes signed actions it relays (``wyneos_core.service.action_relay``)
RELAY_PATH = "/v1/peer/relay"
#: bytes of a relay request (or its answer) read at most
MAX_RELAY_BYTES = 512 * 1024
#: signed actions in one relay request at most
MAX_RELAYED = 32
#: relay requests one source address may make per second on average (token bucket refill)
RELAY_RATE = 2.0
#: relay requests one source address may make at once (the bucket's size)
RELAY_BURST = 8
#: source addresses the rate limiter remembers at most (the least recently seen go first)
RELAY_RATE_SOURCES = 1024
#: seconds one probe may take, in all
PROBE_TIMEOUT = 1.0
#: probes run at once
PROBE_WORKERS = 8
#: seconds a probe round takes at most (every probe bounded by PROBE_TIMEOUT)
ROUND_TIMEOUT = PROBE_TIMEOUT * -(-MAX_NEIGHBOURS // PROBE_WORKERS) + 1.0
#: seconds after which an observation is stale: not sent, and not counted by the orchestrator
MAX_OBSERVATION_AGE = 30.0
#: connections the peer endpoint serves at once (more are closed at once)
MAX_PEER_CONNECTIONS = 64
#: seconds a connection to the peer endpoint has to deliver a whole request (head and body)
PEER_TIMEOUT = 2.0
#: bytes of a ping answer read at most
MAX_ANSWER_BYTES = 4096
_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def ping_message(node_id: str, nonce: str, seq: int) -> bytes:
    """The bytes a node signs to answer a probe with ``nonce``."""
    return f"wyneos.peer-ping/1\n{node_id}\n{nonce}\n{seq}".encode()


def relay_message(body: bytes) -> bytes:
    """The bytes a relay signs, with its node key, to push ``body`` (``POST /v1/peer/relay``)."""
    return b"wyneos.peer-relay/1\n" + body


class RateLimiter:
    """A token bucket per source address: ``rate`` requests a second on average, ``burst``
    at once; at most ``max_sources`` addresses remembered (the least recently seen are
    forgotten first, so memory stays bounded whoever sends)."""

    def __init__(self, rate: float = RELAY_RATE, burst: int = RELAY_BURST, max_sources: int = RELAY_RATE_SOURCES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(rate, bool) or not (isinstance(rate, (int, float)) and 0 < rate <= 1e6):
            raise ValueError(f"relay rate: expected requests per second above 0 (at most 1e6), got {rate!r}")
        if type(burst) is not int or not 1 <= burst <= 1_000_000:
            raise ValueError(f"relay burst: expected a whole number of requests from 1 to 1000000, got {burst!r}")
        if type(max_sources) is not int or not 1 <= max_sources <= 10_000_000:
            raise ValueError(f"relay max_sources: expected a whole number from 1 to 10000000, got {max_sources!r}")
        self.rate, self.burst, self.max_sources = float(rate), burst, max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)
        self._lock = threading.Lock()
        self.limited = 0

    def allow(self, source: str) -> bool:
        """Take a token for ``source``; False (the request is refused) when its bucket is empty."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            ok = tokens >= 1.0
            self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
            if not ok:
                self.limited += 1
            return ok

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _BoundedServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving at most ``MAX_PEER_CONNECTIONS`` connections at once:
    one more is closed at once, before any thread is started for it."""

    request_queue_size = 128  # the listen backlog (socketserver's 5 makes connecting clients wait)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_PEER_CONNECTIONS)
        self.shed = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shed += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


# -- agent side ------------------------------------------------------------------------------


class PeerNode:
    """An agent's peer endpoint and witness prober.

    :param node_id: this node's id.
    :param key: this node's private key (signs ping answers).
    :param orchestrator_keys: the pinned orchestrator public keys (a ``KeyRing``, or a
        function returning the current one, which follows rotations); None: neighbour
        lists are refused and nothing is probed.
    :param host: address to serve on (``127.0.0.1`` by default).
    :param port: port to serve on (0: any free port).
    """

    def __init__(self, node_id: str, key: Ed25519PrivateKey,
                 orchestrator_keys: KeyRing | Callable[[], KeyRing | None] | None, *,
                 host: str = "127.0.0.1", port: int = 0, interval: float = 5.0,
                 relay_rate: float = RELAY_RATE, relay_burst: int = RELAY_BURST,
                 relay_sources: int = RELAY_RATE_SOURCES) -> None:
        self.node_id = node_id
        self.key = key
        self.public = _b64e(public_bytes(key))
        self.keys = orchestrator_keys
        self.seq = 0
        self.interval = interval
        self.neighbours: list[dict[str, Any]] = []
        self.neighbours_tick = -1
        self.refused_lists = 0
        self.observations: dict[str, dict[str, Any]] = {}
        self._observed_at: dict[str, float] = {}  # subject -> time.monotonic() of its observation
        #: ``(sender, envelopes) -> {"node", "acks", "refusals"}``: takes actions a peer
        #: relays (the agent's ``receive_relayed``); None: the relay route answers 404
        self.on_relay: Callable[[str, list[Any]], dict[str, Any]] | None = None
        #: the per-source rate limit of the relay route (checked before anything is read)
        self.limiter = RateLimiter(relay_rate, relay_burst, relay_sources)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        node = self

        class Handler(DeadlineRequestHandler):
            server_version = "wyneos-peer"
            timeout = PEER_TIMEOUT  # one deadline for a request: a silent or trickling connection is closed

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path[:512])
                if parts.path != PING_PATH:
                    self._send(404, {"error": "not found"})
                    return
                nonce = (parse_qs(parts.query).get("nonce") or [""])[0]
                if not _NONCE.match(nonce):
                    self._send(422, {"error": "nonce: 8-64 url-safe characters"})
                    return
                seq = node.seq
                sig = node.key.sign(ping_message(node.node_id, nonce, seq))
                self._send(200, {"node_id": node.node_id, "seq": seq, "public_key": node.public,
                                 "signature": _b64e(sig)})

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if urlsplit(self.path[:512]).path != RELAY_PATH or node.on_relay is None:
                    self._send(404, {"error": "not found"})
                    return
                if not node.limiter.allow(self.client_address[0]):
                    self.close_connection = True
                    self._send(429, {"error": f"too many relay requests from {self.client_address[0]}: at most "
                                              f"{node.limiter.burst} at once, {node.limiter.rate:g} a second"},
                               {"retry-after": str(max(1, round(1 / node.limiter.rate)))})
                    return
                try:
                    length = int(self.headers.get("content-length", ""))
                except ValueError:
                    self._send(411, {"error": "content-length required"})
                    return
                if not 0 < length <= MAX_RELAY_BYTES:
                    self._send(413, {"error": f"a relay request has 1-{MAX_RELAY_BYTES} bytes"})
                    return
                try:
                    raw = self.rfile.read(length)
                except OSError:  # TimeoutError: not all of it before the request's deadline
                    self.close_connection = True
                    self._send(408, {"error": f"the request was not delivered within {PEER_TIMEOUT:g} s"})
                    return
                try:
                    data = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    self._send(422, {"error": "body: not JSON"})
                    return
                envelopes = data.get("envelopes") if isinstance(data, dict) else None
                sender = data.get("from") if isinstance(data, dict) else None
                if not isinstance(envelopes, list) or not 0 < len(envelopes) <= MAX_RELAYED \
                        or not isinstance(sender, str) or len(sender) > 128:
                    self._send(422, {"error": f"expected {{from, envelopes: 1-{MAX_RELAYED} signed actions}}"})
                    return
                why = node._check_pusher(sender, self.headers.get("x-wyneos-peer-key", ""),
                                         self.headers.get("x-wyneos-peer-signature", ""), raw)
                if why is not None:
                    self._send(403, {"error": why})
                    return
                try:
                    answer = node.on_relay(sender, envelopes)
                except Exception:  # noqa: BLE001 - whatever was pushed, the endpoint stays up
                    log.exception("relayed actions from %s could not be taken", sender[:128])
                    self._send(500, {"error": "internal"})
                    return
                self._send(200, answer)

            def _send(self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = _BoundedServer((host, port), Handler)
        self.server.daemon_threads = True
        self._pool = ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="wyneos-probe")
        self.address = f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        self._threads = [threading.Thread(target=self.server.serve_forever, name="wyneos-peer", daemon=True),
                         threading.Thread(target=self._probe_loop, name="wyneos-witness", daemon=True)]

    def start(self) -> PeerNode:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._started:
            self.server.shutdown()  # waits for serve_forever, so only once it runs
        self.server.server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- neighbour list --------------------------------------------------------------------

    def update(self, envelope: Any) -> bool:
        """Take a neighbour list from the orchestrator's answer; True when accepted."""
        if envelope is None:
            return False
        keys = self.keys() if callable(self.keys) else self.keys
        if keys is None:
            self.refused_lists += 1
            return False
        try:
            payload = open_envelope(envelope, NEIGHBOURS_FORMAT, keys)
        except EnvelopeError as exc:
            self.refused_lists += 1
            log.warning("neighbour list refused: %s", exc)
            return False
        entries = payload.get("neighbours")
        tick = payload.get("tick")
        if payload.get("node") != self.node_id or not isinstance(entries, list) or type(tick) is not int:
            self.refused_lists += 1
            log.warning("neighbour list refused: not for %s", self.node_id)
            return False
        if tick < self.neighbours_tick:
            return False  # an older list than the one held
        good = []
        for e in entries[:MAX_NEIGHBOURS]:
            if (isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"] != self.node_id
                    and isinstance(e.get("address"), str) and PEER_ADDRESS.match(e["address"])
                    and isinstance(e.get("fingerprint"), str)):
                good.append({"id": e["id"], "address": e["address"], "fingerprint": e["fingerprint"]})
        with self._lock:
            self.neighbours = good
            self.neighbours_tick = tick
            known = {e["id"] for e in good}
            for gone in [n for n in self.observations if n not in known]:
                del self.observations[gone]
                self._observed_at.pop(gone, None)
        return True

    # -- probes ------------------------------------------------------------------------------

    def probe(self, neighbour: dict[str, Any]) -> dict[str, Any]:
        """Probe one neighbour: the observation (``reachable`` only when it proved its key
        within ``PROBE_TIMEOUT`` seconds, answer included)."""
        host, _, port = neighbour["address"].rpartition(":")
        nonce = _b64e(secrets.token_bytes(12))  # unpredictable: an old signed answer cannot be replayed
        started = time.perf_counter()
        obs: dict[str, Any] = {"subject": neighbour["id"], "reachable": False, "rtt_ms": None, "last_seq": None}
        conn = http.client.HTTPConnection(host, int(port), timeout=PROBE_TIMEOUT)
        try:
            response, raw = exchange(conn, "GET", f"{PING_PATH}?nonce={nonce}", None, {},
                                     deadline=time.monotonic() + PROBE_TIMEOUT, max_bytes=MAX_ANSWER_BYTES)
            if response.status != 200:
                return obs
            data = json.loads(raw)
            pub = _b64d(str(data.get("public_key", "")))
            seq = data.get("seq")
            if (data.get("node_id") != neighbour["id"] or len(pub) != 32 or fingerprint(pub) != neighbour["fingerprint"]
                    or type(seq) is not int or seq < 0):
                return obs
            Ed25519PublicKey.from_public_bytes(pub).verify(_b64d(str(data.get("signature", ""))),
                                                           ping_message(neighbour["id"], nonce, seq))
        except (OSError, http.client.HTTPException, ValueError, InvalidSignature, TypeError, AttributeError):
            return obs
        finally:
            conn.close()
        obs.update(reachable=True, rtt_ms=round((time.perf_counter() - started) * 1000.0, 3), last_seq=seq)
        return obs

    def probe_round(self) -> int:
        """Probe every neighbour once, ``PROBE_WORKERS`` at a time, within
        ``ROUND_TIMEOUT`` seconds; the number probed."""
        with self._lock:
            neighbours = list(self.neighbours)
        if not neighbours or self._stop.is_set():
            return 0
        futures = {self._pool.submit(self.probe, n): n for n in neighbours}
        done, _ = wait(futures, timeout=ROUND_TIMEOUT)
        observed_at = time.monotonic()
        for future in done:
            n = futures[future]
            try:
                obs = future.result()
            except Exception:  # noqa: BLE001 - a probe bug is an unreachable neighbour
                log.exception("probing %s failed", n["id"])
                continue
            with self._lock:
                if any(e["id"] == n["id"] for e in self.neighbours):
                    self.observations[n["id"]] = obs
                    self._observed_at[n["id"]] = observed_at
        return len(neighbours)

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe_round()
            except Exception:  # noqa: BLE001 - a probe bug must not kill the agent
                log.exception("witness probe round failed")
            self._stop.wait(self.interval * random.uniform(0.5, 1.0))  # jittered

    # -- relay -------------------------------------------------------------------------------

    def neighbour(self, node_id: str) -> dict[str, Any] | None:
        """The entry of ``node_id`` in the verified neighbour list (None: not a neighbour)."""
        with self._lock:
            return next((dict(e) for e in self.neighbours if e["id"] == node_id), None)

    def _check_pusher(self, sender: str, key: str, signature: str, body: bytes) -> str | None:
        """None when ``body`` was signed by the key of ``sender``, a neighbour in the
        verified list (its fingerprint there); else why the push is refused."""
        entry = self.neighbour(sender)
        if entry is None:
            return f"{sender[:128]!r} is not a neighbour in this node's signed list"
        try:
            pub = _b64d(key[:64])
            if len(pub) != 32 or fingerprint(pub) != entry["fingerprint"]:
                return f"the key of the push is not the one listed for {sender}"
            Ed25519PublicKey.from_public_bytes(pub).verify(_b64d(signature[:128]), relay_message(body))
        except (ValueError, InvalidSignature):
            return f"the push is not signed by {sender}'s key"
        return None

    def push(self, neighbour: dict[str, Any], envelopes: list[Any], timeout: float = 3.0) -> dict[str, Any]:
        """Push signed action envelopes, unchanged, to a neighbour's relay route; its
        answer (``{"node", "acks", "refusals"}``, sizes bounded) or ``ConnectionError``."""
        host, _, port = neighbour["address"].rpartition(":")
        body = json.dumps({"from": self.node_id, "envelopes": envelopes}).encode()
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            signature = _b64e(self.key.sign(relay_message(body)))  # taken from listed neighbours only
            conn.request("POST", RELAY_PATH, body, {"content-type": "application/json",
                                                    "x-wyneos-peer-key": self.public,
                                                    "x-wyneos-peer-signature": signature})
            response = conn.getresponse()
            raw = response.read(MAX_RELAY_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionError(f"relay to {neighbour['id']} at {neighbour['address']}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200 or len(raw) > MAX_RELAY_BYTES:
            raise ConnectionError(f"relay to {neighbour['id']}: answered {response.status}")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ConnectionError(f"relay to {neighbour['id']}: the answer is not JSON") from None
        if (not isinstance(data, dict) or data.get("node") != neighbour["id"] or not isinstance(data.get("acks"), list)
                or not isinstance(data.get("refusals"), list)):
            raise ConnectionError(f"relay to {neighbour['id']}: the answer is not {{node, acks, refusals}}")
        return {"node": data["node"], "acks": data["acks"][:MAX_RELAYED * 2], "refusals": data["refusals"][:100]}

    def report(self) -> list[dict[str, Any]]:
        """The latest observation of each neighbour, with its age in seconds (``age_s``),
        for the next heartbeat; one older than ``MAX_OBSERVATION_AGE`` is not sent."""
        now = time.monotonic()
        out = []
        with self._lock:
            for subject, obs in self.observations.items():
                age = now - self._observed_at.get(subject, now)
                if age <= MAX_OBSERVATION_AGE:
                    out.append({**obs, "age_s": round(age, 3)})
        return out

