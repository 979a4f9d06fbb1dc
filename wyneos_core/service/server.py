"""Running the API on uvicorn: ``wyneos serve`` and an in-thread server for embedding."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from wyneos_core.config import Config
from wyneos_core.service.app import create_app
from wyneos_core.service.core import Service
from wyneos_core.service.fast_single import FastSingle
from wyneos_core.service.guard import guarded_protocol, loopback_host, loopback_hosts_only
from wyneos_core.service.settings import ServiceSettings
from wyneos_core.tick import Orchestrator

__all__ = ["BindError", "ServerThread", "bind", "build_service", "serve"]


class BindError(RuntimeError):
    """The server cannot listen on the address and port it was given."""


def build_service(config: Config, settings: ServiceSettings, *, interval: float | None = None,
                  **orchestrator_args: Any) -> Service:
    """An orchestrator on ``config`` (with its state file) wrapped in a ``Service``."""
    return Service(Orchestrator(config, **orchestrator_args), settings, interval=interval)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (no 40 ms Nagle stalls)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BindError(f"cannot listen on {where} (service.host / service.port, --host / --port): {reason}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGINT/SIGTERM after its graceful shutdown:
    ``wyneos serve`` then prints its last line and exits 0 like ``wyneos run``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _uvicorn_config(service: Service, log_level: str) -> uvicorn.Config:
    s = service.settings
    # the connection limit is the guard's (it sheds idle sockets instead of answering 503
    # to everyone); uvicorn's limit_concurrency (which also counts connections being
    # closed, hence the margin) only bounds the requests being served
    app = create_app(service)
    # single session heartbeats are answered in the protocol (the same answers; see fast_single)
    single = FastSingle(app.heartbeat_api, loopback_only=s.read_token is None, host_check=loopback_host)  # type: ignore[attr-defined]
    protocol = guarded_protocol(max_header_bytes=s.max_header_bytes, header_timeout=s.header_timeout,
                                max_connections=s.max_connections, single=single)
    if s.read_token is None:  # a loopback-only server: no DNS rebinding from a browser on this machine
        app = loopback_hosts_only(app)
    # proxy_headers off: no X-Forwarded-For is believed (the failed-handshake limit counts the
    # peer's own address), and one ASGI layer less on every request
    # loop "asyncio", not uvicorn's "auto" (uvloop when installed): with uvloop a single heartbeat
    # cost the server more CPU here (docs/performance.md, "Heartbeat API", fourth pass)
    return uvicorn.Config(app, http=protocol, loop="asyncio", log_level=log_level, access_log=False, lifespan="on",
                          timeout_keep_alive=s.idle_timeout, limit_concurrency=2 * s.max_connections + 64,
                          backlog=2048, server_header=False, proxy_headers=False)


def _raise_open_files(wanted: int) -> None:
    """Let the process hold ``wanted`` descriptors if the hard limit allows (each
    connection is one)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def serve(service: Service, *, log_level: str = "warning", on_listening: Any = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's graceful shutdown runs the last tick's
    shutdown hooks and closes the state file)."""
    _raise_open_files(service.settings.max_connections + 256)
    sock = bind(service.settings.host, service.settings.port)
    host, port = sock.getsockname()[:2]
    if on_listening is not None:
        on_listening(f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}")
    server = _Server(_uvicorn_config(service, log_level))
    server.run(sockets=[sock])


class ServerThread:
    """A real uvicorn server for ``service`` on 127.0.0.1 in a background thread.

    >>> # with ServerThread(service) as url: ...httpx.get(url + "/healthz")
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.service = service
        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = _Server(_uvicorn_config(service, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()
