"""A scripted (and, when asked, hostile) orchestrator on 127.0.0.1 for agent tests.

``HostileServer(handler)`` runs a real threading HTTP server; ``handler(path, body)``
returns ``(status, body)`` where ``body`` is bytes, a dict (sent as JSON) or an
iterable of byte chunks with a delay between them (``Trickle``). Every request is
recorded in ``requests`` as ``(method, path, body)``. Loops are bounded; the server
stops on ``close()`` (or leaving the ``with`` block).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Trickle:
    """A body sent ``chunk`` bytes every ``every`` seconds, ``count`` times at most."""

    def __init__(self, data: bytes, chunk: int = 1, every: float = 0.5, length: int | None = None) -> None:
        self.data, self.chunk, self.every = data, chunk, every
        self.length = len(data) if length is None else length


class Huge:
    """A body of ``size`` bytes sent in 64 KiB pieces (announced with its length, or
    unannounced: read until the server closes the connection)."""

    def __init__(self, size: int, fill: bytes = b" ", prefix: bytes = b'{"actions": [], "pad": "',
                 announce: bool = True) -> None:
        self.size, self.fill, self.prefix, self.announce = size, fill, prefix, announce


class Raw:
    """Raw bytes (status line and headers included) trickled one byte every ``every`` seconds."""

    def __init__(self, data: bytes, every: float = 0.2) -> None:
        self.data, self.every = data, every


class HostileServer:
    def __init__(self, handler: Callable[[str, bytes], tuple[int, Any]]) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str, bytes]] = []
        self.headers: list[dict[str, str]] = []
        #: bytes of answer bodies written, per answer (to see whether a client hung up early)
        self.written: list[int] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(min(length, 1 << 20)) if length else b""
                outer.requests.append((self.command, self.path, body))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, answer = outer.handler(self.path, body)
                try:
                    self._answer(status, answer)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _answer(self, status: int, answer: Any) -> None:
                if isinstance(answer, Raw):
                    outer.written.append(0)
                    for i in range(min(len(answer.data), 10_000)):
                        if outer.stop.wait(answer.every):
                            return
                        self.wfile.write(answer.data[i:i + 1])
                        self.wfile.flush()
                        outer.written[-1] += 1
                    return
                if isinstance(answer, Trickle):
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(answer.length))
                    self.end_headers()
                    outer.written.append(0)
                    for i in range(0, min(len(answer.data), 10_000), answer.chunk):
                        if outer.stop.wait(answer.every):
                            return
                        self.wfile.write(answer.data[i:i + answer.chunk])
                        self.wfile.flush()
                        outer.written[-1] += answer.chunk
                    return
                if isinstance(answer, Huge):
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    if answer.announce:
                        self.send_header("content-length", str(answer.size))
                    else:
                        self.send_header("connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    self.wfile.write(answer.prefix)
                    sent, piece = len(answer.prefix), answer.fill * 65536
                    outer.written.append(sent)
                    while sent < answer.size and not outer.stop.is_set():
                        n = min(len(piece), answer.size - sent)
                        self.wfile.write(piece[:n])
                        sent += n
                        outer.written[-1] = sent
                    return
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def posted(self, suffix: str) -> list[dict[str, Any]]:
        """The JSON bodies POSTed to paths ending with ``suffix``."""
        return [json.loads(b) for m, p, b in self.requests if m == "POST" and p.endswith(suffix)]


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")
