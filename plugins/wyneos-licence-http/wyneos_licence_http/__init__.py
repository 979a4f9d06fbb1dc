"""A WyneOS licence source that asks an HTTP licence API.

Registered in the ``wyneos`` entry-point group as ``licence-http``; it offers a source
named ``http`` (``plugins.settings.licence-http.name`` changes it). Add it to
``licence.sources`` to use it. The API it speaks is documented in this distribution's
README and in the core's docs/licences.md: one ``POST {url}/v1/licences/lookup`` with
a batch of nodes, answered with each node's signed licence document and status.

Settings (``plugins.settings.licence-http``):

``url``        base URL of the API (required)
``timeout``    seconds per request (default 2.0)
``batch``      nodes per request (default 500)
``token_env``  name of an environment variable holding a bearer token (optional; the
               token itself is never put in the config or logged)
``name``       source name (default ``http``)
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from wyneos_core import hookimpl
from wyneos_core.licensing.sources import STATUSES, LicenceRecord, SourceUnavailable
from wyneos_core.model import Node

__all__ = ["HttpLicenceSource", "wyneos_licence_sources", "API_PATH"]
__version__ = "0.1.0"

API_PATH = "/v1/licences/lookup"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class HttpLicenceSource:
    """Asks ``POST {url}/v1/licences/lookup`` for batches of nodes."""

    def __init__(self, url: str, *, timeout: float = 2.0, batch: int = 500, token: str | None = None,
                 name: str = "http") -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"plugins.settings.licence-http.url: expected an http(s) URL, got {url!r}")
        self.name = name
        self.url = url.rstrip("/") + API_PATH
        self.timeout = float(timeout)
        self.batch = max(1, int(batch))
        self._token = token
        self.requests = 0

    def lookup(self, node: Node, now: float) -> LicenceRecord | None:
        return self.lookup_many([node], now).get(node.id)

    def lookup_many(self, nodes: Sequence[Node], now: float) -> dict[str, LicenceRecord | None]:
        out: dict[str, LicenceRecord | None] = {}
        for start in range(0, len(nodes), self.batch):
            chunk = nodes[start:start + self.batch]
            out.update(self._ask(chunk))
        return out

    def _ask(self, nodes: Sequence[Node]) -> dict[str, LicenceRecord | None]:
        body = json.dumps({"nodes": [{"id": n.id, "licence": n.licence_ref, "fingerprint": n.fingerprint}
                                     for n in nodes]}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"wyneos-licence-http/{__version__}"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise SourceUnavailable(f"{self.url}: HTTP {exc.code}") from None
        except (TimeoutError, socket.timeout):
            raise SourceUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise SourceUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from None
            raise SourceUnavailable(f"{self.url}: unreachable ({reason})") from None
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise SourceUnavailable(f"{self.url}: response larger than {MAX_RESPONSE_BYTES} bytes")
        return parse_response(raw, [n.id for n in nodes], self.name, self.url)


def parse_response(raw: bytes, asked: Sequence[str], source: str, url: str = "") -> dict[str, LicenceRecord | None]:
    """Turn a lookup response into records; ``SourceUnavailable`` if it is not a valid answer."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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
        document = entry["document"]
        raw_doc = document.encode() if isinstance(document, str) else json.dumps(document, sort_keys=True).encode()
        out[node_id] = LicenceRecord(raw_doc, source, entry.get("status", "active"), origin=f"{url} [{node_id}]")
    return out


@hookimpl
def wyneos_licence_sources(config: Any) -> Any:
    settings = config.plugin_settings("licence-http")
    if not settings.get("url"):
        return None
    token_env = settings.get("token_env")
    token = os.environ.get(token_env) if token_env else None
    return HttpLicenceSource(settings["url"], timeout=settings.get("timeout", 2.0), batch=settings.get("batch", 500),
                             token=token, name=settings.get("name", "http"))
