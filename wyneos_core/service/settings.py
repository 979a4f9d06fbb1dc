"""Settings of service mode, from ``plugins.settings.service`` of the config.

Every key is optional; a wrong one is refused naming the config file and the field.

=====================  ==========  ===================================================
key                    default     meaning
=====================  ==========  ===================================================
host                   127.0.0.1   address ``wyneos serve`` binds to
port                   8420        TCP port (0: any free port, printed at start)
replay_window          120         seconds a signed request's timestamp may differ from
                                   the server clock; nonces are remembered this long
                                   (1-86400)
max_body_bytes         8388608     largest request body (a heartbeat batch) accepted
                                   (at least 1024)
max_request_bytes      65536       largest body of a single heartbeat, enrolment, ack
                                   (at least 1024)
max_batch              20000       most heartbeats in one batch (at least 1)
verify_threads         0           threads verifying a batch's signatures (0: CPUs)
register_on_enrol      true        an enrolled node not in the config joins the cluster
max_header_bytes       32768       largest request head (request line and headers);
                                   more: 431 and the connection closed (at least 1024)
header_timeout         10          seconds a connection has to deliver a whole request
                                   head (after connecting, or after the first byte of
                                   its next request); then 408 and closed
idle_timeout           30          seconds an idle keep-alive connection stays open
body_timeout           30          seconds a request body has to arrive in full (408)
max_connections        4096        connections kept; past it the longest idle one is
                                   closed (only if all are serving requests: 503)
enrol_rate             10          enrolment attempts per second per client address
                                   (refill rate; 429 past the burst)
enrol_burst            100         enrolment attempts a client address may make at once
heartbeat_rate         5           heartbeats per second per node (refill rate; 429
                                   past the burst); memory: one entry per enrolled node.
                                   The same rate and burst bound a node's sessions together
heartbeat_burst        20          heartbeats a node may send at once
late_tick              60          seconds past the tick interval after which a tick that
                                   has not ended makes ``/healthz`` answer 503 failing
read_token             (none)      operator token for the read API and the dashboard
                                   (``Authorization: Bearer ...``); required to bind a
                                   non-loopback address
read_token_file        (none)      file holding the read token (owner-only)
write_token            (none)      operator write token (overrides, exceptions:
                                   ``Authorization: Bearer ...``); without one every
                                   write request is refused. Must differ from the read
                                   token
write_token_file       (none)      file holding the write token (owner-only)
session_ttl            3600        seconds a heartbeat session lives (agents renew it
                                   at two thirds of that, without a gap)
max_sessions           250000      most heartbeat sessions open at once
=====================  ==========  ===================================================
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from typing import Any

from wyneos_core.config import Config, ConfigError
from wyneos_core.safeio import read_regular_file

__all__ = ["ServiceSettings", "is_loopback"]


@dataclass(slots=True)
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8420
    replay_window: float = 120.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_request_bytes: int = 64 * 1024
    max_batch: int = 20_000
    verify_threads: int = 0
    register_on_enrol: bool = True
    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 30.0
    body_timeout: float = 30.0
    max_connections: int = 4096
    enrol_rate: float = 10.0
    enrol_burst: int = 100
    heartbeat_rate: float = 5.0
    heartbeat_burst: int = 20
    late_tick: float = 60.0
    read_token: str | None = None
    read_token_file: str | None = None
    write_token: str | None = None
    write_token_file: str | None = None
    session_ttl: float = 3600.0
    max_sessions: int = 250_000

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> ServiceSettings:
        """Read ``plugins.settings.service``; ``overrides`` (not None) win (command line)."""
        raw = config.plugin_settings("service")
        field_name = "plugins.settings.service"
        if not isinstance(raw, dict):
            raise ConfigError("must be a mapping", file=config.source, field=field_name)
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in {**raw, **{k: v for k, v in overrides.items() if v is not None}}.items():
            f = known.get(key)
            where = f"{field_name}.{key}"
            if f is None:
                raise ConfigError(f"unknown setting (known: {', '.join(known)})", file=config.source, field=where)
            default = f.default
            if default is None:  # optional strings
                ok = value is None or (isinstance(value, str) and bool(value))
            elif isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            else:
                ok = isinstance(value, str) and bool(value)
            if not ok:
                raise ConfigError(f"expected {_kind(default)}, got {value!r}", file=config.source, field=where)
            values[key] = float(value) if isinstance(default, float) else value
        settings = cls(**values)
        if settings.port > 65535:
            raise ConfigError(f"not a TCP port: {settings.port}", file=config.source, field=f"{field_name}.port")
        for key, low in _MINIMUM.items():
            value = getattr(settings, key)
            if value < low:
                raise ConfigError(f"must be at least {low:g}, got {value!r} (it would refuse every request)",
                                  file=config.source, field=f"{field_name}.{key}")
        settings.read_token = _read_token(config, settings, field_name)
        settings.write_token = _read_token(config, settings, field_name, "write")
        if settings.write_token is not None and settings.write_token == settings.read_token:
            raise ConfigError("the write token must differ from the read token (a reader must not be able to act)",
                              file=config.source, field=f"{field_name}.write_token")
        if settings.read_token is None and not is_loopback(settings.host):
            raise ConfigError(f"binding to {settings.host} (not a loopback address) needs an operator token for the "
                              "read API and the dashboard: set service.read_token or service.read_token_file "
                              "(anyone who reaches the port could read hostnames, keys and licences)",
                              file=config.source, field=f"{field_name}.read_token")
        if not settings.replay_window <= 86400:
            raise ConfigError(f"must be at most 86400 seconds, got {settings.replay_window!r}",
                              file=config.source, field=f"{field_name}.replay_window")
        return settings


#: the least value of a setting that still lets requests through
_MINIMUM = {"max_batch": 1, "max_body_bytes": 1024, "max_request_bytes": 1024, "replay_window": 1.0,
            "max_header_bytes": 1024, "max_connections": 1, "enrol_burst": 1, "heartbeat_burst": 1,
            "session_ttl": 1.0, "max_sessions": 1}


def _kind(default: Any) -> str:
    if default is None:
        return "a non-empty string or null"
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number >= 0"
    if isinstance(default, float):
        return "a number > 0"
    return "a non-empty string"


#: the shortest operator token accepted (``secrets.token_urlsafe(24)`` gives 32 characters)
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_token(config: Config, settings: ServiceSettings, field_name: str, kind: str = "read") -> str | None:
    """An operator token (``kind`` read or write): ``KIND_token``, or the first line of
    ``KIND_token_file`` (a regular file readable by its owner only)."""
    token = getattr(settings, f"{kind}_token")
    where = f"{field_name}.{kind}_token"
    token_file = getattr(settings, f"{kind}_token_file")
    if token_file is not None:
        where = f"{field_name}.{kind}_token_file"
        if token is not None:
            raise ConfigError(f"set {kind}_token or {kind}_token_file, not both", file=config.source, field=where)
        path = config.resolve(token_file)
        try:
            st = os.stat(path)
            if st.st_mode & 0o077:
                raise ConfigError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); "
                                  f"chmod 600 it", file=config.source, field=where)
            text = read_regular_file(path, 4096).decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", file=config.source, field=where) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text", file=config.source, field=where) from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if token is None:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"the operator token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                          "without spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')",
                          file=config.source, field=where)
    return token
