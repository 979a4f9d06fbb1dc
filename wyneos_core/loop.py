"""The run loop: a tick every ``interval`` seconds until told to stop.

Ticks are scheduled on a fixed rhythm (start + k * interval). A tick that overruns its
slot makes the loop skip the slots it missed (they are counted in
``Orchestrator.missed_ticks`` and in each report, as Prometheus counts missed
rule-group iterations) instead of running ticks back to back. SIGINT and SIGTERM end
the loop after the tick in progress; shutdown hooks then run.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

from wyneos_core.model import TickReport
from wyneos_core.tick import Orchestrator

__all__ = ["run", "stop_on_signals"]


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM while inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(
    orchestrator: Orchestrator,
    *,
    interval: float,
    ticks: int | None = None,
    stop: threading.Event | None = None,
    on_report: Callable[[TickReport], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Tick every ``interval`` seconds; stop after ``ticks`` ticks (None: forever) or on ``stop``.

    :return: the number of ticks run.
    """
    if not math.isfinite(interval) or interval <= 0:
        raise ValueError(f"interval must be a finite number of seconds above 0, got {interval}")
    stop = stop or threading.Event()
    done = 0
    orchestrator.start()
    try:
        next_at = monotonic()
        while not stop.is_set() and (ticks is None or done < ticks):
            report = orchestrator.tick()
            done += 1
            if on_report is not None:
                on_report(report)
            if ticks is not None and done >= ticks:
                break
            next_at += interval
            now = monotonic()
            if now > next_at:
                missed = math.floor((now - next_at) / interval) + 1
                orchestrator.missed_ticks += missed
                next_at += missed * interval
            stop.wait(max(0.0, next_at - monotonic()))
    finally:
        orchestrator.stop()
    return done
