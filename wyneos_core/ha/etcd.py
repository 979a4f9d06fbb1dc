"""A small synchronous view of etcd's v3 API, on etcd3gw (the JSON gRPC gateway).

Why etcd3gw: the service's tick, enrolment and heartbeat forwarding run on threads,
and etcd3gw is a plain synchronous HTTP client (``requests``) that works against etcd
3.4 with today's protobuf; aetcd is asyncio-only (it would need an event loop of its
own bridged into every thread) and the old ``etcd3`` package breaks with current
protobuf. See docs/ha.md.

``EtcdClient`` holds several endpoints and tries them in turn (starting with the last
one that answered), so losing one member costs one failed request at most. Each
thread has its own HTTP sessions (``requests.Session`` is not meant to be shared).
Every call is bounded by a timeout; when no endpoint answers, ``EtcdUnavailable``.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as gw_errors

from wyneos_core.store import StoreError

__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "KV", "parse_store_url", "prefix_end"]


class EtcdError(StoreError):
    """etcd refused a request (a bad request, a compaction, ...): a ``StoreError``, so
    the service answers 503 ``state_unavailable`` and changes nothing."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (members down, quorum lost, network)."""


def parse_store_url(url: str) -> list[tuple[str, int]]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` as ``[(host, port), ...]``.

    :raises ValueError: naming what is wrong.
    """
    if not isinstance(url, str) or not url.startswith("etcd://"):
        raise ValueError(f"{url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    rest = url[len("etcd://"):].rstrip("/")
    return parse_endpoints(rest.split(","))


def parse_endpoints(items: Iterable[str]) -> list[tuple[str, int]]:
    """``["HOST:PORT", "http://HOST:PORT", ...]`` as ``[(host, port), ...]``."""
    out: list[tuple[str, int]] = []
    for item in items:
        text = item.strip()
        if not text:
            raise ValueError("empty endpoint (expected HOST:PORT)")
        parts = urlsplit(text if "://" in text else "http://" + text)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{item!r}: expected http:// or https:// (TLS: state.etcd.ca_file, docs/ha.md)")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ValueError(f"{item!r}: expected HOST:PORT")
        out.append((parts.hostname, port))
    if not out:
        raise ValueError("no endpoint given")
    return out


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


class KV:
    """One key-value pair as etcd returned it."""

    __slots__ = ("key", "value", "create_revision", "mod_revision", "version", "lease")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.key = _unb64(raw.get("key")).decode()
        self.value = _unb64(raw.get("value"))
        self.create_revision = int(raw.get("create_revision", 0))
        self.mod_revision = int(raw.get("mod_revision", 0))
        self.version = int(raw.get("version", 0))  # times written since created
        self.lease = int(raw.get("lease", 0))


def uses_tls(items: Iterable[str]) -> bool:
    """Whether endpoints given as text name ``https://``."""
    return any(str(item).strip().lower().startswith("https://") for item in items)


class EtcdClient:
    """Several etcd endpoints, one tried after another.

    :param endpoints: ``[(host, port), ...]`` of the etcd members' client URLs.
    :param timeout: seconds one request may take on one endpoint.
    :param tls: speak HTTPS; ``ca_file`` the CA that signed the members' certificates
        (default: the system's), ``cert_file``/``key_file`` a client certificate.
    :param username, password: etcd authentication (a token from ``auth/authenticate``
        sent with every request, renewed when etcd says it expired). etcd's gRPC
        gateway, which this client speaks to, ignores the names in client certificates
        (CVE-2018-16886): with ``--client-cert-auth`` the certificate proves a client
        may connect, the user and password say who it is.
    """

    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float = 5.0, *, tls: bool = False,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if (username is None) != (password is None):
            raise ValueError("etcd authentication needs both a username and a password")
        self.endpoints = list(endpoints)
        self.timeout = float(timeout)
        self.scheme = "https" if tls or ca_file or cert_file else "http"
        self._tls = {"ca_cert": ca_file, "cert_cert": cert_file, "cert_key": key_file}
        self._auth = (username, password) if username is not None else None
        self._tokens: dict[int, str] = {}
        self._local = threading.local()
        self._first = 0  # the endpoint that answered last

    def describe(self) -> str:
        return "etcd://" + ",".join(f"{h}:{p}" for h, p in self.endpoints)

    def _token(self, index: int, client: etcd3gw.Etcd3Client, *, renew: bool = False) -> str | None:
        """The auth token for endpoint ``index`` (asked for once, again when it expired)."""
        if self._auth is None:
            return None
        token = None if renew else self._tokens.get(index)
        if token is None:
            try:
                answer = client.post(client.get_url("auth/authenticate"),
                                     json={"name": self._auth[0], "password": self._auth[1]})
            except gw_errors.Etcd3Exception as exc:
                if isinstance(exc, (gw_errors.ConnectionFailedError, gw_errors.ConnectionTimeoutError)):
                    raise
                text = str(getattr(exc, "detail_text", "") or exc)[:200]
                raise EtcdError(f"etcd {client.host}:{client.port} refused user {self._auth[0]!r}: {text} "
                                "(state.etcd.username, state.etcd.password_file)") from None
            token = str(answer.get("token") or "")
            self._tokens[index] = token
        return token

    def _client(self, index: int) -> etcd3gw.Etcd3Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(index)
        if client is None:
            host, port = self.endpoints[index]
            session = requests.Session()
            session.trust_env = False  # no proxy or CA bundle from the environment overrides ours
            if self._tls["ca_cert"]:
                session.verify = self._tls["ca_cert"]
            if self._tls["cert_cert"]:
                session.cert = (self._tls["cert_cert"], self._tls["cert_key"])
            client = clients[index] = etcd3gw.Etcd3Client(host=host, port=port, protocol=self.scheme,
                                                          timeout=self.timeout, api_path="/v3/", session=session)
        return client

    def call(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers."""
        problems = []
        count = len(self.endpoints)
        start = self._first
        for step in range(count):
            index = (start + step) % count
            client = self._client(index)
            client.timeout = self.timeout if timeout is None else max(0.05, timeout)
            try:
                answer = self._post(index, client, path, body)
            except (gw_errors.ConnectionFailedError, gw_errors.ConnectionTimeoutError) as exc:
                problems.append(f"{client.host}:{client.port}: {str(exc)[:160]}")
                continue
            except gw_errors.Etcd3Exception as exc:
                text = str(getattr(exc, "detail_text", "") or exc)[:300]
                if "timed out" in text or "no leader" in text or "unavailable" in text.lower():
                    problems.append(f"{client.host}:{client.port}: {text}")
                    continue  # this member has no quorum: another one may
                raise EtcdError(f"etcd {client.host}:{client.port} refused {path}: {text}") from None
            self._first = index
            return answer if isinstance(answer, dict) else {}
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(problems))

    def _post(self, index: int, client: etcd3gw.Etcd3Client, path: str, body: dict[str, Any]) -> Any:
        token = self._token(index, client)
        if token is None:
            return client.post(client.get_url(path), json=body)
        try:
            return client.post(client.get_url(path), json=body, headers={"Authorization": token})
        except gw_errors.Etcd3Exception as exc:
            text = str(getattr(exc, "detail_text", "") or exc)
            if "token" not in text and "user name is empty" not in text:
                raise
        token = self._token(index, client, renew=True)  # expired (etcd's simple tokens live 5 minutes)
        return client.post(client.get_url(path), json=body, headers={"Authorization": token or ""})

    def stream_target(self, path: str) -> tuple[int, Any, str, dict[str, str]]:
        """``(endpoint index, HTTP session, URL, headers)`` for a streaming request to
        ``/v3/<path>`` (a watch) on the endpoint that answered last (this thread's session)."""
        index = self._first
        client = self._client(index)
        token = self._token(index, client)
        return index, client.session, client.get_url(path), ({"Authorization": token} if token else {})

    # -- key-value -----------------------------------------------------------------------

    def range(self, key: str | bytes, range_end: str | bytes | None = None, *, limit: int = 0,
              descending: bool = False, keys_only: bool = False, serializable: bool = False,
              min_mod_revision: int = 0) -> list[KV]:
        body: dict[str, Any] = {"key": _b64(key)}
        if min_mod_revision:
            body["min_mod_revision"] = str(min_mod_revision)
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if limit:
            body["limit"] = limit
        if descending:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        if keys_only:
            body["keys_only"] = True
        if serializable:
            body["serializable"] = True
        answer = self.call("kv/range", body)
        return [KV(raw) for raw in answer.get("kvs", [])]

    def get(self, key: str) -> KV | None:
        found = self.range(key)
        return found[0] if found else None

    def get_prefix(self, prefix: str, **kw: Any) -> list[KV]:
        return self.range(prefix, prefix_end(prefix), **kw)

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = self.call("kv/put", body)
        return int(answer.get("header", {}).get("revision", 0))

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: Sequence[dict[str, Any]] = ()) -> tuple[bool, dict[str, Any]]:
        """One transaction: ``(succeeded, answer)``."""
        answer = self.call("kv/txn", {"compare": compare, "success": success, "failure": list(failure)})
        return bool(answer.get("succeeded", False)), answer

    # -- leases --------------------------------------------------------------------------

    def grant(self, ttl: int, timeout: float | None = None) -> tuple[int, int]:
        """A new lease: ``(lease id, granted TTL)``."""
        answer = self.call("lease/grant", {"TTL": int(ttl)}, timeout)
        if answer.get("error"):
            raise EtcdError(f"lease grant refused: {answer['error']}")
        return int(answer["ID"]), int(answer.get("TTL", ttl))

    def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Renew a lease; its TTL, or 0 when it has expired."""
        answer = self.call("lease/keepalive", {"ID": str(lease)}, timeout)
        result = answer.get("result", answer)
        return max(0, int(result.get("TTL", 0)))

    def revoke(self, lease: int, timeout: float | None = None) -> None:
        try:
            self.call("kv/lease/revoke", {"ID": str(lease)}, timeout)
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    def close(self) -> None:
        clients = getattr(self._local, "clients", None) or {}
        for client in clients.values():
            client.session.close()
        clients.clear()


# -- transaction pieces ----------------------------------------------------------------------


def put_op(key: str, value: bytes | str, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: str, range_end: str | bytes | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return {"request_delete_range": body}


def range_op(key: str, range_end: str | bytes | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return {"request_range": body}


def cmp_create(key: str, revision: int) -> dict[str, Any]:
    """The key's create revision equals ``revision`` (0: the key does not exist)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def cmp_mod(key: str, revision: int) -> dict[str, Any]:
    """The key's last modification revision equals ``revision`` (0: absent)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}
