"""One HTTP exchange with a cap on the answer and one deadline for all of it.

``http.client``'s timeout bounds each socket read, not a request: a server that
trickles its answer a byte at a time holds the caller for as long as it likes, and
``response.read()`` takes an answer of any size into memory. :func:`exchange` sends a
request and reads the whole answer (head and body) before a monotonic ``deadline``:
a watchdog shuts the socket when it passes, so a blocked read returns at once. The body
is read piece by piece and refused past ``max_bytes`` (a ``Content-Length`` above it is
refused before anything is read).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

__all__ = ["AnswerTooLarge", "AnswerTooSlow", "exchange"]


class AnswerTooSlow(OSError):
    """The answer did not arrive in full before the deadline."""


class AnswerTooLarge(OSError):
    """The answer is larger than the cap."""


def _cut(conn: http.client.HTTPConnection, flag: threading.Event) -> None:
    flag.set()
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
             headers: dict[str, str], *, deadline: float, max_bytes: int) -> tuple[http.client.HTTPResponse, bytes]:
    """Send one request on ``conn``; the response and its body.

    :raises AnswerTooSlow: ``deadline`` (``time.monotonic()``) passed first (the
        connection is closed).
    :raises AnswerTooLarge: the body is larger than ``max_bytes`` (closed too).
    :raises OSError, http.client.HTTPException: network failures.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AnswerTooSlow("no time left for the request")
    conn.timeout = remaining
    if conn.sock is not None:
        conn.sock.settimeout(remaining)
    cut = threading.Event()
    watchdog = threading.Timer(remaining, _cut, args=(conn, cut))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        if response.length is not None and response.length > max_bytes:
            conn.close()
            raise AnswerTooLarge(f"an answer of {response.length} bytes, above the limit of {max_bytes}; not read")
        chunks: list[bytes] = []
        size = 0
        while response.length != 0:
            piece = response.read1(65536)
            if not piece:
                break
            size += len(piece)
            if size > max_bytes:
                conn.close()
                raise AnswerTooLarge(f"an answer larger than the limit of {max_bytes} bytes; the rest not read")
            chunks.append(piece)
        if cut.is_set():
            raise AnswerTooSlow("the answer was still arriving at the deadline")
        response.close()  # read to its end: the connection can carry the next request
        return response, b"".join(chunks)
    except (OSError, http.client.HTTPException) as exc:
        if cut.is_set() and not isinstance(exc, AnswerTooLarge):
            conn.close()
            raise AnswerTooSlow("the answer did not arrive in full before the deadline") from None
        raise
    finally:
        watchdog.cancel()
