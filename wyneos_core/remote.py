"""Reading a running ``wyneos serve`` from the command line: where it is, the operator
token, one GET that answers JSON or a plain error.

The server: ``--server URL``, else ``WYNEOS_SERVER``, else ``http://127.0.0.1:8420``.
The operator token (``service.read_token``): ``--token-file FILE``, else the file
``WYNEOS_TOKEN_FILE`` names, else ``WYNEOS_TOKEN``; none when the server has no token.
A token is never taken from the command line itself (it would show in ``ps``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["DEFAULT_SERVER", "MAX_ANSWER", "Remote", "RemoteError", "read_token", "server_url"]

DEFAULT_SERVER = "http://127.0.0.1:8420"
#: largest answer read (a 10,000-node page of nodes is about 5 MB)
MAX_ANSWER = 64 * 1024 * 1024
#: largest token file read
_MAX_TOKEN_FILE = 4096


class RemoteError(Exception):
    """The server could not be asked, or refused: the message says which and why."""


def server_url(given: str | None) -> str:
    url = (given or os.environ.get("WYNEOS_SERVER") or DEFAULT_SERVER).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteError(f"--server {url!r}: write it as http://HOST:PORT")
    return url


def read_token(token_file: str | None) -> str | None:
    """The operator token from ``token_file``, ``WYNEOS_TOKEN_FILE`` or ``WYNEOS_TOKEN``."""
    path = token_file or os.environ.get("WYNEOS_TOKEN_FILE")
    if path:
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_TOKEN_FILE + 1)
        except OSError as exc:
            raise RemoteError(f"{path}: cannot read the token file: {exc.strerror or exc}") from None
        if len(data) > _MAX_TOKEN_FILE:
            raise RemoteError(f"{path}: not a token file (larger than {_MAX_TOKEN_FILE} bytes)")
        token = data.decode("utf-8", "replace").strip()
        if not token:
            raise RemoteError(f"{path}: the token file is empty")
        return token
    return os.environ.get("WYNEOS_TOKEN") or None


class Remote:
    """GET requests to one server, with the operator token when there is one."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def get(self, path: str, **params: Any) -> Any:
        """The JSON answer of ``GET path?params`` (None values left out).

        :raises RemoteError: unreachable, a refusal (with the server's message), or an
            answer that is not JSON.
        """
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        request = urllib.request.Request(url, headers={"accept": "application/json"})
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - http(s) only
                body = answer.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise RemoteError(self._refusal(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach the server at {self.url}: {reason} (is `wyneos serve` running? "
                              "--server URL or WYNEOS_SERVER)") from None
        if len(body) > MAX_ANSWER:
            raise RemoteError(f"{url}: the answer is larger than {MAX_ANSWER // (1024 * 1024)} MB")
        try:
            return json.loads(body)
        except ValueError:
            raise RemoteError(f"{url}: the answer is not JSON (is {self.url} a WyneOS server?)") from None

    def _refusal(self, exc: urllib.error.HTTPError) -> str:
        try:
            data = json.loads(exc.read(65536))
            detail = data.get("error") or data.get("detail")
        except (ValueError, AttributeError, OSError):
            detail = None
        if exc.code == 401:
            hint = ("the token was refused" if self.token else
                    "the server needs the operator token: --token-file FILE, WYNEOS_TOKEN_FILE or WYNEOS_TOKEN")
            return f"{self.url}: 401 unauthorised: {hint}"
        if isinstance(detail, list):  # FastAPI's validation errors
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
                               if isinstance(d, dict))
        return f"{self.url}: {exc.code} {exc.reason}: {detail or 'refused'}"
