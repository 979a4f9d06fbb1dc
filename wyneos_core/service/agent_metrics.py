"""Where an agent's metrics come from: ``--metric NAME=COMMAND`` and ``--metrics-file PATH``.

Every heartbeat, each ``--metric`` command runs (no shell: the command line is split
like a shell would, then run directly) with a deadline of ``COMMAND_TIMEOUT`` seconds;
its standard output must be one finite number (at most ``MAX_OUTPUT`` bytes are read).
A ``--metrics-file`` holds a JSON object ``{"name": number, ...}`` (at most
``MAX_FILE_BYTES``), written by anything on the node (a cron job, an exporter); a
command's value wins over the file's for the same name. A value that cannot be read is
left out of that heartbeat and logged; a metric the orchestrator refuses (not declared,
out of its bounds: a 422 naming ``metrics.NAME``) is dropped from the next heartbeats,
so that one bad metric never silences the node's heartbeats.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = ["MetricSource", "MetricSourceError", "parse_metric_flag"]

log = logging.getLogger("wyneos.agent")

NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
MAX_METRICS: Final = 16
COMMAND_TIMEOUT: Final = 5.0
MAX_OUTPUT: Final = 4096
MAX_FILE_BYTES: Final = 64 * 1024


class MetricSourceError(ValueError):
    """A ``--metric`` or ``--metrics-file`` the agent cannot use (the message names it)."""


def parse_metric_flag(text: str) -> tuple[str, list[str]]:
    """``"disk_used=df-ratio /"`` -> ``("disk_used", ["df-ratio", "/"])``."""
    name, sep, command = text.partition("=")
    if not sep or not NAME.match(name.strip()):
        raise MetricSourceError(f"--metric {text!r}: expected NAME=COMMAND with NAME lower-case letters, digits "
                                "and '_' (at most 48, starting with a letter)")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise MetricSourceError(f"--metric {name}: {exc}") from None
    if not argv:
        raise MetricSourceError(f"--metric {name}: no command")
    return name.strip(), argv


class MetricSource:
    """The metrics an agent reports, read afresh for every heartbeat."""

    def __init__(self, commands: Iterable[tuple[str, list[str]]] = (), file: str | Path | None = None) -> None:
        self.commands = dict(commands)
        if len(self.commands) > MAX_METRICS:
            raise MetricSourceError(f"at most {MAX_METRICS} --metric commands, got {len(self.commands)}")
        self.file = None if file is None else Path(file)
        self.refused: set[str] = set()

    def refuse(self, name: str) -> None:
        """The orchestrator refused this metric: leave it out from now on."""
        if name not in self.refused:
            log.warning("the orchestrator refused metric %r; it is no longer sent (check telemetry.metrics)", name)
            self.refused.add(name)

    def read(self) -> dict[str, float]:
        out = self._read_file() if self.file is not None else {}
        for name, argv in self.commands.items():
            value = _run(name, argv)
            if value is not None:
                out[name] = value
        return {k: v for k, v in out.items() if k not in self.refused}

    def _read_file(self) -> dict[str, float]:
        path = self.file
        assert path is not None
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            log.warning("metrics file %s: %s", path, exc.strerror or exc)
            return {}
        if len(raw) > MAX_FILE_BYTES:
            log.warning("metrics file %s: larger than %d bytes; not read", path, MAX_FILE_BYTES)
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            log.warning("metrics file %s: not JSON (%s)", path, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("metrics file %s: expected a JSON object of name: number", path)
            return {}
        out: dict[str, float] = {}
        for name, value in list(data.items())[:MAX_METRICS]:
            if not isinstance(name, str) or not NAME.match(name):
                log.warning("metrics file %s: %r is not a metric name", path, name)
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                log.warning("metrics file %s: %s: %r is not a finite number", path, name, value)
            else:
                out[name] = float(value)
        return out


def _run(name: str, argv: list[str]) -> float | None:
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    except OSError as exc:
        log.warning("metric %s: cannot run %s: %s", name, argv[0], exc.strerror or exc)
        return None
    try:
        assert proc.stdout is not None
        out = proc.stdout.read(MAX_OUTPUT + 1)
        proc.stdout.close()
        code = proc.wait(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        log.warning("metric %s: %s took more than %gs; killed", name, argv[0], COMMAND_TIMEOUT)
        return None
    if code != 0:
        log.warning("metric %s: %s exited with status %d", name, argv[0], code)
        return None
    if len(out) > MAX_OUTPUT:
        log.warning("metric %s: more than %d bytes of output", name, MAX_OUTPUT)
        return None
    try:
        value = float(out.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        log.warning("metric %s: output %r is not a number", name, out[:40])
        return None
    if not math.isfinite(value):
        log.warning("metric %s: %r is not a finite number", name, value)
        return None
    return value
