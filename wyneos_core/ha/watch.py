"""A follower's copy of the cluster state, kept current by one etcd watch.

A follower used to read every node registration, action, acknowledgement and key
each tick interval. ``PrefixMirror`` reads the prefix once, then follows etcd's watch
from the revision of that read (``POST /v3/watch`` on the gateway: a stream of
events), applying each put and delete to its copy. ``MirrorClient`` answers the
store's reads (``get``, ``range``, ``get_prefix``) from that copy, so the follower's
slot costs no etcd round trip and moves only what changed; writes go to etcd.

When the stream breaks (a member down, the quorum lost, the revision compacted), the
mirror is not *synced* until it has read the prefix again and watches from there; the
reads of an unsynced mirror raise ``EtcdUnavailable`` (the follower keeps its last
view and says why in ``/healthz``), never an answer older than what it said before.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from bisect import bisect_left, insort
from typing import Any

import requests

from wyneos_core.ha.etcd import KV, EtcdClient, EtcdError, EtcdUnavailable, prefix_end

__all__ = ["MirrorClient", "PrefixMirror"]

log = logging.getLogger("wyneos.ha.watch")

_MAX_LINE = 64 << 20  # one watch response at most (etcd caps a request at 1.5 MiB by default)


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unblock(response: requests.Response) -> None:
    """Shut down the socket of a streamed response, so that a read blocked on it in the
    watch thread returns at once: closing a socket does not wake a read blocked on it in
    another thread, which then waited for etcd's next event or its read timeout (a
    leader took 15 s to end on SIGTERM, and was killed)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed already
            pass


class PrefixMirror:
    """Everything under ``prefix``, read once and then kept by a watch (one thread)."""

    def __init__(self, client: EtcdClient, prefix: str, retry: float = 0.5) -> None:
        self.client = client
        self.prefix = prefix
        self.retry = retry
        self._kvs: dict[str, KV] = {}
        self._keys: list[str] = []  # sorted
        self._lock = threading.Lock()
        self.revision = 0
        self.synced = False
        self.error: str | None = "not read yet"
        self.events = 0  # puts and deletes applied since start
        self.reloads = 0  # full reads of the prefix (the first one included)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: requests.Response | None = None

    # -- the copy ---------------------------------------------------------------------------

    def _load(self) -> None:
        answer = self.client.call("kv/range", {"key": _b64(self.prefix), "range_end": _b64(prefix_end(self.prefix))})
        kvs = {kv.key: kv for kv in (KV(raw) for raw in answer.get("kvs", []))}
        with self._lock:
            self._kvs = kvs
            self._keys = sorted(kvs)
            self.revision = int(answer.get("header", {}).get("revision", 0))
            self.synced = True
            self.error = None
        self.reloads += 1

    def _apply(self, event: dict[str, Any]) -> None:
        kv = KV(event.get("kv", {}))
        with self._lock:
            if event.get("type") == "DELETE":
                if self._kvs.pop(kv.key, None) is not None:
                    del self._keys[bisect_left(self._keys, kv.key)]
            else:
                if kv.key not in self._kvs:
                    insort(self._keys, kv.key)
                self._kvs[kv.key] = kv
            self.revision = max(self.revision, kv.mod_revision)
        self.events += 1

    def range(self, key: str, range_end: str | bytes | None = None) -> list[KV]:
        """The copy's keys in ``[key, range_end)`` (one key without ``range_end``), sorted."""
        with self._lock:
            if not self.synced:
                raise EtcdUnavailable(f"the follower's copy of etcd is not current: {self.error}")
            if range_end is None:
                kv = self._kvs.get(key)
                return [] if kv is None else [kv]
            end = range_end.decode() if isinstance(range_end, bytes) else range_end
            start = bisect_left(self._keys, key)
            stop = bisect_left(self._keys, end) if end != "\0" else len(self._keys)
            return [self._kvs[k] for k in self._keys[start:stop]]

    # -- the watch --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wyneos-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            _unblock(response)
            response.close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._load()
                self._follow()
            except Exception as exc:  # noqa: BLE001 - the watch never dies: it reads again
                if self._stop.is_set():
                    return  # stop() closed the stream under it
                with self._lock:
                    self.synced = False
                    self.error = f"{type(exc).__name__}: {exc}"[:300]
                if not self._stop.is_set():
                    log.info("etcd watch on %s broken: %s; reading again", self.prefix, self.error)
            self._stop.wait(self.retry)

    def _follow(self) -> None:
        """Stream events from the revision after the last read until the stream ends."""
        index, session, url, headers = self.client.stream_target("watch")
        body = {"create_request": {"key": _b64(self.prefix), "range_end": _b64(prefix_end(self.prefix)),
                                   "start_revision": str(self.revision + 1), "progress_notify": True}}
        with session.post(url, json=body, headers=headers, stream=True,
                          timeout=(self.client.timeout, max(30.0, 3 * self.client.timeout))) as response:
            self._response = response
            if response.status_code != 200:
                raise EtcdError(f"etcd refused the watch: {response.status_code} {response.text[:200]}")
            for line in response.iter_lines(chunk_size=None):
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                if len(line) > _MAX_LINE:
                    raise ValueError("a watch response too large to read")
                result = json.loads(line).get("result")
                if not isinstance(result, dict):
                    raise EtcdError(f"the watch ended: {line[:200]!r}")
                if result.get("canceled") or result.get("compact_revision"):
                    raise EtcdError(f"the watch was cancelled (compacted at {result.get('compact_revision')})")
                for event in result.get("events", []):
                    self._apply(event)
                revision = int(result.get("header", {}).get("revision", 0) or 0)
                if revision > self.revision:  # a progress notification: nothing changed up to here
                    with self._lock:
                        self.revision = revision
        raise EtcdError("the watch stream ended")


class MirrorClient:
    """An ``EtcdClient`` whose reads come from a ``PrefixMirror`` (keys under its
    prefix); everything else (writes, transactions, leases) goes to etcd."""

    def __init__(self, client: EtcdClient, mirror: PrefixMirror) -> None:
        self._client = client
        self.mirror = mirror

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def range(self, key: str | bytes, range_end: str | bytes | None = None, *, limit: int = 0,
              descending: bool = False, keys_only: bool = False, serializable: bool = False,
              min_mod_revision: int = 0) -> list[KV]:
        text = key.decode() if isinstance(key, bytes) else key
        if not text.startswith(self.mirror.prefix):
            return self._client.range(key, range_end, limit=limit, descending=descending, keys_only=keys_only,
                                      serializable=serializable, min_mod_revision=min_mod_revision)
        found = self.mirror.range(text, range_end)
        if min_mod_revision:
            found = [kv for kv in found if kv.mod_revision >= min_mod_revision]
        if descending:
            found.reverse()
        return found[:limit] if limit else found

    def get(self, key: str) -> KV | None:
        found = self.range(key)
        return found[0] if found else None

    def get_prefix(self, prefix: str, **kw: Any) -> list[KV]:
        return self.range(prefix, prefix_end(prefix), **kw)
