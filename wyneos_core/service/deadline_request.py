"""An HTTP request handler that gives each request (head and body) one deadline.

A socket timeout bounds each read, not a request: a request trickled a byte at a time,
each byte within the timeout of the last, would hold its thread for as long as the
sender likes. :class:`DeadlineRequestHandler` reads through a reader that sets the
socket timeout, before each read, to the time left before one monotonic deadline,
``timeout`` seconds after the request began: a request not delivered in full by then
ends in ``TimeoutError`` and its connection is closed. It costs no thread (a watchdog
timer per request, like ``bounded_http``'s, would double the threads of an endpoint
whose connections are counted by its threads).

Once the handler answers (``send_response``), the request is read: writes have
``timeout`` seconds each again.
"""

from __future__ import annotations

import io
import socket
import time
from http.server import BaseHTTPRequestHandler

__all__ = ["DeadlineRequestHandler"]


class _DeadlineReader(io.RawIOBase):
    """Reads a socket, each read bounded by the time left before ``deadline``
    (``time.monotonic()``; None: by ``per_read`` seconds)."""

    def __init__(self, sock: socket.socket, per_read: float) -> None:
        super().__init__()
        self.sock = sock
        self.per_read = per_read
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        left = self.per_read if self.deadline is None else self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not delivered in full before its deadline")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class DeadlineRequestHandler(BaseHTTPRequestHandler):
    """``BaseHTTPRequestHandler`` whose every request, head and body, must arrive within
    ``timeout`` seconds in all (set ``timeout`` in the subclass); past it, a read raises
    ``TimeoutError`` (the head: the connection is closed without an answer)."""

    timeout: float = 2.0

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket file made by StreamRequestHandler; the socket stays open
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = time.monotonic() + self.timeout
        try:
            super().handle_one_request()
        finally:
            self._request_read()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._request_read()  # answering: what is read of the request is all that will be
        super().send_response(code, message)

    def _request_read(self) -> None:
        if self._reader.deadline is not None:
            self._reader.deadline = None
            self.connection.settimeout(self.timeout)
