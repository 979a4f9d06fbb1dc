"""Connection limits of ``wyneos serve``: bounded request heads, deadlines, shedding.

uvicorn parses HTTP with httptools, which puts no bound on the size of a request's
head (request line and headers): a client sending 128 MB of header lines has all of
it buffered. uvicorn's own ``limit_concurrency`` answers 503 to *every* new request
once that many connections are open, so 4,100 sockets that trickle their headers
lock heartbeats and ``/healthz`` out. ``guarded_protocol`` returns uvicorn's httptools
protocol with three additions:

* **head size**: a request's head (request line and headers) is counted while it
  arrives: the bytes received while it is incomplete after a read; and once whole, as
  parsed (URL, header names and values and their separators: :func:`_head_size`; the
  whitespace the parser drops around a value is not counted there), when
  the reads it came in hold more bytes than the limit (so a head that came whole in one
  read is counted too; a smaller read cannot hold a bigger head). Past
  ``max_header_bytes`` the connection gets ``431 Request Header Fields Too Large`` and
  is closed, on every route (memory per connection stays under the limit plus one
  read). Where a message begins in a read is known from the heads and bodies parsed
  before it, so requests pipelined in the same read do not count as the next head.
* **head deadline**: a connection must deliver a complete request head within
  ``header_timeout`` seconds of connecting (or of the first byte of its next request);
  else it is closed (``408``). Idle keep-alive connections close after
  ``idle_timeout`` (uvicorn's ``timeout_keep_alive``) counted from the last answer
  until a request begins: line breaks between requests (which the parser skips
  without beginning one) keep no connection open.
* **shedding**: at most ``max_connections`` connections are kept. When a new one
  would exceed it, a connection with no request being served is closed to make room:
  first the oldest of those that never completed a request (silent, or still
  trickling their first head), then the longest idle keep-alive connection; only if
  every connection is busy serving a request is the new one refused (``503``). So
  slow or idle sockets can never lock out a heartbeat, an enrolment or ``/healthz``:
  those send their head at once and are served.

A protocol made with ``single`` (a ``service.fast_single.FastSingle``) answers the
common single session heartbeat itself, without uvicorn's request cycle and task: the
same answer, in one write (see that module).

Timers cost a single heartbeat's CPU too (each ``call_later`` and its ``cancel`` a few
µs): the head and body deadlines are armed only when a chunk ends with the head or the
body still incomplete (counted from that chunk, as before), and each connection keeps
one keep-alive timer, moved on when it fires, instead of one armed after every answer
and cancelled by the next request (closed when no request began within
``timeout_keep_alive`` of the last answer).

Besides, a response's head and the first write after it leave in **one** send
(:class:`_Coalescing`): uvicorn writes the head and the body of a response
separately, and on loopback each ``send`` costs the server the receiver's side of
TCP too (a third of a single heartbeat's CPU was there before; see
docs/performance.md, "Heartbeat API").

:func:`loopback_hosts_only` guards a server without an operator token against DNS
rebinding: such a server listens on loopback only, but a web page whose name resolves
to 127.0.0.1 could still make a browser on the same machine read it. A browser always
sends the name it resolved in ``Host``; so a request whose ``Host`` is not a loopback
address or ``localhost`` (with any port) is refused (``421 Misdirected Request``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
import functools
import ipaddress
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["guarded_protocol", "loopback_host", "loopback_hosts_only"]


def _response(status: bytes, text: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text)


_TOO_LARGE = _response(b"431 Request Header Fields Too Large", b"request head larger than the limit\n")
_TIMEOUT = _response(b"408 Request Timeout", b"request head not complete in time\n")
_BUSY = _response(b"503 Service Unavailable", b"too many connections serving requests\n")

# a head's bytes besides its URL and header fields: the method (counted as four bytes), the
# spaces and version of the request line, its line end and the empty line after the headers
_HEAD_FRAME = len(b"POST  HTTP/1.1\r\n\r\n")


class _Refused(Exception):
    """Raised in a parser callback once the connection is answered and closed: stops the
    parser (the rest of the chunk is not read)."""


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A parsed head's size: request line and header lines (``name: value\\r\\n``)."""
    size = _HEAD_FRAME + len(url)
    for name, value in headers:
        size += len(name) + len(value) + 4
    return size


class _Coalescing:
    """A transport that holds a response head back until the next write (the body),
    or until the event loop's next turn, and sends both at once; everything else is
    the real transport's."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:7] == b"HTTP/1." and not self._transport.is_closing():
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def write_whole(self, data: bytes) -> None:
        """Write a whole response (head and body) at once."""
        self.flush()
        self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + (len(self._held) if self._held is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _GuardedProtocol(HttpToolsProtocol):
    max_header_bytes = 32 * 1024
    header_timeout = 10.0
    max_connections = 4096
    single: Any = None  # a ``fast_single.FastSingle``: single session heartbeats answered here

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._fast_body: list[bytes] | None = None  # the body of a request taken by ``single``
        self._fast_headers: dict[str, str] = {}
        self._fast_timer: asyncio.TimerHandle | None = None
        self._fast_skip = False  # the rest of a message answered already (408): ignored
        self._fast_close = False  # shutting down: close after the answer
        self._idle_since: float | None = None  # when the last answer was complete, no byte since (keep-alive)
        self._keepalive: asyncio.TimerHandle | None = None
        super().connection_made(_Coalescing(transport, self.loop))  # type: ignore[arg-type]
        self._reading_head = True
        self._head_raw = 0  # bytes of the head being read received in chunks before this one
        self._chunk = 0  # the size of the chunk being fed to the parser
        self._skip = 0  # where in that chunk the message being read began (< 0: in a chunk before)
        self._head_ended = False  # that message's head ended in this chunk
        self._body_in_chunk = 0  # its body bytes in this chunk
        self._head_timer: asyncio.TimerHandle | None = None
        fresh, idle, closing = _fresh(self.server_state), _idle(self.server_state), _closing(self.server_state)
        # connections being closed still count in uvicorn's set until their
        # connection_lost: they are not counted here
        while len(self.connections) - len(closing) > self.max_connections and (fresh or idle):
            # first those that never completed a request (silent or slow), then idle
            # keep-alive ones (an agent's connection between heartbeats), the oldest first
            _, victim = (fresh or idle).popitem(last=False)
            victim._shed()
        if len(self.connections) - len(closing) > self.max_connections:
            self._refuse(_BUSY)
            return
        fresh[id(self)] = self
        self._arm_head_timer()  # a connection that never says anything is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._unlist()
        _closing(self.server_state).discard(id(self))
        self._cancel_head_timer()
        self._fast_end()
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, without its keep-alive timer (see on_response_complete) and with the
        # head size checked in the parser's callbacks (431 and stopped there)
        self._chunk = len(data)
        self._skip = -self._head_raw
        self._head_ended = False
        self._body_in_chunk = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _Refused):
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._reading_head and not self.transport.is_closing():
            # the head is still incomplete after this chunk: its bytes so far are the
            # chunk's from where it began (after the messages before it in the chunk)
            self._head_raw = max(len(data) - self._skip, 1)
            if self._head_raw > self.max_header_bytes:
                self._refuse(_TOO_LARGE)
            elif self._head_timer is None:  # its deadline counts from this chunk, where it began
                self._arm_head_timer()
        elif self._fast_body is not None and self._fast_timer is None and not self.transport.is_closing():
            # a body taken by ``single`` still incomplete: its deadline counts from this chunk
            self._fast_timer = self.loop.call_later(self.single.body_timeout, self._fast_timed_out)

    def on_message_begin(self) -> None:
        self._idle_since = None  # not idle: the keep-alive deadline counts from the next answer
        self._fast_skip = False
        self._reading_head = True
        self._head_raw = 0
        # where this message begins in the chunk: after the message before, whose head ended
        # in the chunk (its size as parsed) or before it, and its body bytes in the chunk
        skip = self._body_in_chunk
        if self._head_ended:
            skip += self._skip + _head_size(self.url, self.headers)
            self._head_ended = False
        self._skip = skip
        self._body_in_chunk = 0
        super().on_message_begin()

    def on_body(self, body: bytes) -> None:
        self._body_in_chunk += len(body)
        if self._fast_body is not None:
            self._fast_body.append(body)
        elif not self._fast_skip:
            super().on_body(body)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_ended = True
        # the head has at most the chunk's bytes and those of the chunks before where it
        # began: counted as parsed only when those are above the limit (a read that big)
        if self._chunk - min(self._skip, 0) > self.max_header_bytes \
                and _head_size(self.url, self.headers) > self.max_header_bytes:
            self._refuse(_TOO_LARGE)
            raise _Refused
        self._cancel_head_timer()
        self._unlist()
        if self.single is None or not self._fast_take():
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        chunks = self._fast_body
        if chunks is None:
            if not self._fast_skip:
                super().on_message_complete()
            return
        self._fast_end()
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._fast_reply(*self.single.answer(self._fast_headers, body), self.parser.should_keep_alive())

    def shutdown(self) -> None:
        if self._fast_body is not None:
            self._fast_close = True  # answered, then closed
        else:
            super().shutdown()

    # -- single session heartbeats (``single``) ---------------------------------------------

    def _fast_take(self) -> bool:
        """Take this request (its head complete) if ``single`` answers it; else uvicorn's way."""
        single = self.single
        if self.url != single.url or self.parser.get_method() != b"POST" or self.parser.get_http_version() != "1.1" \
                or self.pipeline or (self.cycle is not None and not self.cycle.response_complete) \
                or self.parser.should_upgrade():
            return False
        limit = self.limit_concurrency  # uvicorn would answer 503: its way
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return False
        wanted = single.wanted(self.headers)
        if wanted is None:
            return False
        self._fast_headers = wanted
        self._fast_body = []  # its deadline is armed only if the body is still incomplete after this chunk
        return True

    def _fast_end(self) -> None:
        self._fast_body = None
        if self._fast_timer is not None:
            self._fast_timer.cancel()
            self._fast_timer = None

    def _fast_timed_out(self) -> None:
        self._fast_timer = None
        if self._fast_body is None or self.transport.is_closing():
            return
        self._fast_end()
        self._fast_skip = True
        self._fast_reply(*self.single.too_slow(), False)

    def _fast_reply(self, status: int, data: bytes, extra: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        """Write the answer as uvicorn writes the ASGI route's (head and body at once)."""
        content = [STATUS_LINE[status], _defaults(self.server_state),
                   b"content-type: application/json\r\ncontent-length: ", str(len(data)).encode(), b"\r\n"]
        close = False
        for name, value in extra:
            name = name.lower()
            if name == b"connection" and b"close" in [t.lower().strip() for t in value.split(b",")]:
                close = True
            content += (name, b": ", value, b"\r\n")
        if not (keep_alive and not self._fast_close) and not close:
            content.append(b"connection: close\r\n")
            close = True
        content += (b"\r\n", data)
        if self.transport.is_closing():
            return
        self.transport.write_whole(b"".join(content))  # type: ignore[attr-defined]
        if close:
            self._close()
        self.on_response_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, with one keep-alive timer per connection moved on when it fires instead
        # of one armed after every answer and cancelled by the next request (see the module)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._reading_head:  # (else the next head began: its deadline counts)
            self._idle_since = now = self.loop.time()
            if self._keepalive is None:
                self._keepalive = self.loop.call_at(now + self.timeout_keep_alive, self._keepalive_due)
        idle = _idle(self.server_state)
        idle[id(self)] = self
        idle.move_to_end(id(self))

    def _keepalive_due(self) -> None:
        """Close the connection if no request began in ``timeout_keep_alive`` seconds after
        the last answer; else look again when that time is up."""
        self._keepalive = None
        since = self._idle_since
        if since is None or self.transport.is_closing():  # a request since: its answer arms it again
            return
        due = since + self.timeout_keep_alive
        if self.loop.time() < due:
            self._keepalive = self.loop.call_at(due, self._keepalive_due)
        else:
            self.timeout_keep_alive_handler()

    # -- helpers ---------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and self._head_raw and not self.transport.is_closing():
            self._refuse(_TIMEOUT)
        elif not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._unlist()
            self._close()  # connected and never said anything

    def _unlist(self) -> None:
        _fresh(self.server_state).pop(id(self), None)
        _idle(self.server_state).pop(id(self), None)

    def _refuse(self, answer: bytes) -> None:
        self._unlist()
        self._cancel_head_timer()
        self.transport.write(answer)
        self._close()

    def _shed(self) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self._close()

    def _close(self) -> None:
        _closing(self.server_state).add(id(self))
        self.transport.close()


def _defaults(state: Any) -> bytes:
    """uvicorn's default headers (``date``, set again every second) as they are written."""
    headers = state.default_headers
    held = getattr(state, "wyneos_defaults", None)
    if held is None or held[0] is not headers:
        block = b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in headers)
        held = state.wyneos_defaults = (headers, block)
    return held[1]


def _idle(state: Any) -> OrderedDict[int, _GuardedProtocol]:
    idle = getattr(state, "wyneos_idle", None)
    if idle is None:
        idle = state.wyneos_idle = OrderedDict()
    return idle


def _fresh(state: Any) -> OrderedDict[int, _GuardedProtocol]:
    fresh = getattr(state, "wyneos_fresh", None)
    if fresh is None:
        fresh = state.wyneos_fresh = OrderedDict()
    return fresh


def _closing(state: Any) -> set[int]:
    closing = getattr(state, "wyneos_closing", None)
    if closing is None:
        closing = state.wyneos_closing = set()
    return closing


def guarded_protocol(*, max_header_bytes: int, header_timeout: float, max_connections: int,
                     single: Any = None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits (pass it as ``uvicorn.Config(http=...)``);
    ``single``: a ``fast_single.FastSingle`` that answers single session heartbeats."""
    return type("WyneosHttpProtocol", (_GuardedProtocol,), {
        "max_header_bytes": max_header_bytes, "header_timeout": header_timeout, "max_connections": max_connections,
        "single": single})


@functools.lru_cache(maxsize=256)  # bounded; a server sees a handful of Host values
def loopback_host(value: bytes) -> bool:
    """Whether a ``Host`` header names a loopback address or ``localhost`` (any port)."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return False
    if text.startswith("["):  # [::1] or [::1]:8420
        host, _, rest = text[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return False
    else:
        host, _, port = text.partition(":")
        if port and not port.isdigit():
            return False
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_hosts_only(app: Any) -> Any:
    """``app`` (ASGI) refusing HTTP requests whose ``Host`` header is not a loopback
    name (421, ``bad_host``): for servers that run without an operator token."""

    refusal = json.dumps({"status": 421, "code": "bad_host", "error": "this server has no operator token and "
                          "answers requests for a loopback address or localhost only (Host header); set "
                          "service.read_token to serve other names"}).encode()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = next((v for k, v in scope["headers"] if k == b"host"), b"")
            if not loopback_host(host):
                await send({"type": "http.response.start", "status": 421,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(refusal)).encode())]})
                await send({"type": "http.response.body", "body": refusal})
                return
        await app(scope, receive, send)

    return guarded
