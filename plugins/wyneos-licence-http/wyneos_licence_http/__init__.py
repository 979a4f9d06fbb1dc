"""A WyneOS licence source that asks an HTTP licence API.

Registered in the ``wyneos`` entry-point group as ``licence-http``; it offers a source
named ``http`` (``plugins.settings.licence-http.name`` changes it). Add it to
``licence.sources`` to use it. The API it speaks is documented in this distribution's
README and in the core's docs/licences.md: one ``POST {url}/v1/licences/lookup`` with
a batch of nodes, answered with each node's signed licence document and status.

Settings (``plugins.settings.licence-http``):

``url``        base URL of the API (required)
``timeout``    seconds one request may take in all: connect, send, headers and the whole
               body (default 2.0); a server that trickles its answer is cut off
``deadline``   seconds one tick's lookup may take in all, over every batch (default
               10.0); nodes of batches not asked by then count as unanswered this tick
               (the outage policy applies) and are asked again next tick
``batch``      nodes per request (default 500)
``token_env``  name of an environment variable holding a bearer token (optional; the
               token itself is never put in the config or logged)
``name``       source name (default ``http``)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from wyneos_core import hookimpl
from wyneos_core.licensing.canonical import CanonicalError, check_canonical
from wyneos_core.licensing.envelope import FormatError, load_json
from wyneos_core.licensing.sources import STATUSES, LicenceRecord, SourceUnavailable
from wyneos_core.model import Node

__all__ = ["API_PATH", "HttpLicenceSource", "WYNEOS_SETTINGS_SCHEMA", "source_from_settings",
           "wyneos_licence_sources"]
__version__ = "0.1.0"
__wyneos_name__ = "licence-http"  # registered under its entry-point name however it is loaded

_SECONDS = {"type": "number", "exclusiveMinimum": 0}
#: ``plugins.settings.licence-http``, checked by the core before the first tick (a typo or a
#: value of the wrong type is refused with its file, line and field, never met at run time)
WYNEOS_SETTINGS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://[^/]"},
        "timeout": _SECONDS,
        "deadline": _SECONDS,
        "batch": {"type": "integer", "minimum": 1},
        "token_env": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
    },
}

API_PATH = "/v1/licences/lookup"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class HttpLicenceSource:
    """Asks ``POST {url}/v1/licences/lookup`` for batches of nodes, within time limits."""

    def __init__(self, url: str, *, timeout: float = 2.0, batch: int = 500, token: str | None = None,
                 name: str = "http", deadline: float = 10.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"plugins.settings.licence-http.url: expected an http(s) URL, got {url!r:.80}")
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"plugins.settings.licence-http.url: no host in {url!r:.80}")
        self.name = name
        self.url = url.rstrip("/") + API_PATH
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path.rstrip("/") + API_PATH
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.batch = int(batch)
        self._token = token
        self.requests = 0

    def lookup(self, node: Node, now: float) -> LicenceRecord | None:
        return self.lookup_many([node], now).get(node.id)

    def lookup_many(self, nodes: Sequence[Node], now: float) -> dict[str, LicenceRecord | None]:
        """Answers for as many batches as fit in ``deadline`` seconds; the rest stay unanswered."""
        out: dict[str, LicenceRecord | None] = {}
        until = time.monotonic() + self.deadline
        for start in range(0, len(nodes), self.batch):
            if time.monotonic() >= until:
                if not out:
                    raise SourceUnavailable(f"{self.url}: lookup deadline of {self.deadline:g}s reached")
                break  # the nodes left are unanswered this tick
            chunk = nodes[start:start + self.batch]
            try:
                out.update(self._ask(chunk, min(until, time.monotonic() + self.timeout)))
            except SourceUnavailable:
                if not out:
                    raise
                break  # keep what earlier batches answered; the rest are unanswered this tick
        return out

    def _ask(self, nodes: Sequence[Node], until: float) -> dict[str, LicenceRecord | None]:
        body = json.dumps({"nodes": [{"id": n.id, "licence": n.licence_ref, "fingerprint": n.fingerprint}
                                     for n in nodes]}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"wyneos-licence-http/{__version__}"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self.requests += 1
        raw = self._post(body, headers, until)
        return parse_response(raw, [n.id for n in nodes], self.name, self.url)

    def _post(self, body: bytes, headers: Mapping[str, str], until: float) -> bytes:
        """POST and read the whole answer by ``until`` (monotonic), or ``SourceUnavailable``.

        Socket timeouts bound each operation; a timer that shuts the socket down at
        ``until`` bounds the whole exchange, so a server that trickles bytes cannot hold
        the tick.
        """
        left = until - time.monotonic()
        late = f"{self.url}: no complete answer within {self.timeout:g}s"
        if left <= 0:
            raise SourceUnavailable(late)
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=left)
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(left, cut)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", self._path, body, dict(headers))
            response = conn.getresponse()
            if response.status != 200:
                raise SourceUnavailable(f"{self.url}: HTTP {response.status}")
            chunks, size = [], 0
            while True:
                left = until - time.monotonic()
                if left <= 0 or expired.is_set():
                    raise SourceUnavailable(late)
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = response.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise SourceUnavailable(f"{self.url}: response larger than {MAX_RESPONSE_BYTES} bytes")
                chunks.append(chunk)
            if expired.is_set():
                raise SourceUnavailable(late)
            return b"".join(chunks)
        except SourceUnavailable:
            raise
        except (TimeoutError, socket.timeout):
            raise SourceUnavailable(late) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if expired.is_set():
                raise SourceUnavailable(late) from None
            if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
                raise SourceUnavailable(f"{self.url}: unreachable ({exc})") from None
            raise SourceUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        finally:
            timer.cancel()
            conn.close()


def parse_response(raw: bytes, asked: Sequence[str], source: str, url: str = "") -> dict[str, LicenceRecord | None]:
    """Turn a lookup response into records; ``SourceUnavailable`` if it is not a valid answer."""
    try:
        data = load_json(raw)
    except FormatError as exc:
        raise SourceUnavailable(f"{url}: malformed JSON in response ({exc})") from None
    licences = data.get("licences") if isinstance(data, dict) else None
    if not isinstance(licences, dict):
        raise SourceUnavailable(f"{url}: response has no 'licences' object")
    out: dict[str, LicenceRecord | None] = {}
    wanted = set(asked)
    for node_id, entry in licences.items():
        if node_id not in wanted:
            continue
        if entry is None:
            out[node_id] = None
            continue
        if not isinstance(entry, dict) or entry.get("status", "active") not in STATUSES \
                or not isinstance(entry.get("document"), (dict, str)):
            raise SourceUnavailable(f"{url}: licences[{node_id!r}]: expected {{status, document}}")
        document, origin, status = entry["document"], f"{url} [{node_id}]", entry.get("status", "active")
        if isinstance(document, str):  # checked as any file is (lone surrogates make it non-UTF-8)
            out[node_id] = LicenceRecord(document.encode("utf-8", "surrogatepass"), source, status, origin=origin)
            continue
        try:  # an object: huge integers, floats, surrogates make this node's licence malformed, no other's
            check_canonical(document, "document")
        except CanonicalError as exc:
            out[node_id] = LicenceRecord(b"", source, status, origin=origin, error=str(exc))
            continue
        out[node_id] = LicenceRecord(json.dumps(document, sort_keys=True).encode(), source, status, origin=origin)
    return out


def _number(settings: Mapping[str, Any], name: str, default: float, *, integer: bool = False) -> Any:
    value = settings.get(name, default)
    kind = "a whole number >= 1" if integer else "a number of seconds > 0"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value <= 0 \
            or (not integer and value != value) or (integer and value < 1):
        raise ValueError(f"plugins.settings.licence-http.{name}: expected {kind}, got {value!r:.40}")
    return value


def source_from_settings(settings: Mapping[str, Any]) -> HttpLicenceSource:
    """Build the source from ``plugins.settings.licence-http``; ``ValueError`` naming the bad setting."""
    unknown = sorted(set(settings) - {"url", "timeout", "deadline", "batch", "token_env", "name"})
    if unknown:
        raise ValueError(f"plugins.settings.licence-http.{unknown[0]}: unknown setting")
    token_env = settings.get("token_env")
    if token_env is not None and (not isinstance(token_env, str) or not token_env):
        raise ValueError(f"plugins.settings.licence-http.token_env: expected a variable name, got {token_env!r:.40}")
    name = settings.get("name", "http")
    if not isinstance(name, str) or not name:
        raise ValueError(f"plugins.settings.licence-http.name: expected a non-empty string, got {name!r:.40}")
    token = os.environ.get(token_env) if token_env else None
    return HttpLicenceSource(settings["url"], timeout=_number(settings, "timeout", 2.0),
                             deadline=_number(settings, "deadline", 10.0),
                             batch=_number(settings, "batch", 500, integer=True), token=token, name=name)


@hookimpl
def wyneos_check_config(config: Any) -> list[tuple[str, str]]:
    """What the schema cannot say: the whole settings make a source (checked, never contacted)."""
    settings = config.plugin_settings("licence-http")
    if not settings:
        return []
    try:
        source_from_settings(settings)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        return [(field, message or str(exc))]
    if settings.get("token_env") and settings["token_env"] not in os.environ:
        return [("plugins.settings.licence-http.token_env",
                 f"the environment variable {settings['token_env']!r} is not set")]
    return []


@hookimpl
def wyneos_licence_sources(config: Any) -> Any:
    settings = config.plugin_settings("licence-http")
    if not settings.get("url"):
        return None
    return source_from_settings(settings)
