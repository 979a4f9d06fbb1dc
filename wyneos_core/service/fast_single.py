"""Single session heartbeats answered in the HTTP protocol, without the ASGI cycle.

Most of a single heartbeat's server CPU was HTTP, not the heartbeat: uvicorn makes a
request-response cycle, a task and ASGI messages per request, and the route arms a
body deadline in the event loop (docs/performance.md, "Heartbeat API"). The guarded
protocol (``service.guard``) hands a request to :class:`FastSingle` when its head says
it is the common case, and answers it when its body has arrived, in the same event loop
callback, with the same function the ASGI route calls (``HeartbeatAPI.handle_session``):
the same checks (session, MAC, sequence number, rate, body), the same status codes and
bodies, the same headers (uvicorn's default ``date`` header first).

Only a request that the ASGI route would take up in the same way is taken here:
``POST /v1/heartbeats`` exactly (no query string), HTTP/1.1, the ``X-Wyneos-Session``
header, a ``Content-Length`` of digits within ``service.max_request_bytes`` (so the body
is bounded before it is read: the parser delivers no more than that), no
``Transfer-Encoding`` or ``Expect``, and, on a server without an operator token, a
loopback ``Host`` (``guard.loopback_hosts_only``). Anything else, including every
refusal of the request's shape (413, 421, 422 for the length), goes the ASGI way, which
answers it as before. The body must arrive within ``service.body_timeout`` (else 408 and
the connection closes, as on the ASGI route).
"""

from __future__ import annotations

import logging
from typing import Any

from wyneos_core.service.outcomes import HEARTBEAT_PATH
from wyneos_core.service.heartbeat_api import HEADER_SESSION, INTERNAL_ERROR, HeartbeatAPI, slow_body

__all__ = ["FastSingle"]

log = logging.getLogger("wyneos.service")

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


class FastSingle:
    """What the guarded protocol needs to answer single session heartbeats itself.

    :param api: the heartbeat route's work.
    :param loopback_only: the server answers loopback ``Host`` names only (no operator
        token): other requests go the ASGI way, which refuses them (421).
    """

    url = HEARTBEAT_PATH.encode()

    def __init__(self, api: HeartbeatAPI, *, loopback_only: bool, host_check: Any) -> None:
        self.api = api
        self.loopback_only = loopback_only
        self._host_ok = host_check
        self.limit = api.settings.max_request_bytes
        self.body_timeout = float(api.settings.body_timeout)
        self.answered = 0  # requests answered here (tests and benchmarks look)
        self.timed_out = 0  # requests taken here whose body did not arrive in time

    def wanted(self, headers: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
        """The request's ``x-wyneos-*`` and ``content-length`` headers (as the ASGI route reads
        them) if it is taken here, else None."""
        picked: dict[str, str] = {}
        host = None
        for name, value in headers:
            if name.startswith(b"x-wyneos-") or name == b"content-length":
                picked[name.decode("latin-1")] = value.decode("latin-1")
            elif name == b"host":
                if host is None:
                    host = value
            elif name == b"transfer-encoding" or name == b"expect":
                return None
        if HEADER_SESSION not in picked:
            return None
        if self.loopback_only and not self._host_ok(host or b""):
            return None
        length = picked.get("content-length")
        if length is None or len(length) > 15 or not length.isdigit() or int(length) > self.limit:
            return None
        return picked

    def answer(self, headers: dict[str, str], body: bytes) -> Answer:
        """(status, body, extra headers) for a request taken here, its body read."""
        self.answered += 1
        try:
            return self.api.handle_session(headers.get, body)
        except Exception:  # noqa: BLE001 - answered as 500, logged (as the ASGI route does)
            log.exception("heartbeat route failed")
            return 500, INTERNAL_ERROR, []

    def too_slow(self) -> Answer:
        self.timed_out += 1
        return slow_body(self.body_timeout)

