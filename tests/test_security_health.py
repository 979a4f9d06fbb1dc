"""``/healthz`` never says "ok" while governance is stuck (issue 9, breaks 6 and 7): a
failed state write makes it "degraded" and names SQLite's cause; a tick that hangs
makes it "failing" (503) once it is late."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import httpx
from service_helpers import make_service, wait_for, write_config

from wyneos_core import hookimpl
from wyneos_core.service.server import ServerThread
from wyneos_core.store import StateStore


def test_a_failing_state_write_makes_healthz_degraded_and_names_the_cause(tmp_path, monkeypatch):
    service = make_service(write_config(tmp_path))
    full = threading.Event()
    real = StateStore.write_tick

    def write_tick(self, *args, **kwargs):
        if full.is_set():  # what SQLite raises when the disk is full
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "write_tick", write_tick)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_for(lambda: client.get("/healthz").json()["tick"] >= 2)
        assert client.get("/healthz").json()["status"] == "ok"
        full.set()
        health = wait_for(lambda: (h := client.get("/healthz").json())["status"] == "degraded" and h)
        assert "database or disk is full" in health["state_error"] and "cannot rollback" not in health["state_error"]
        stuck = health["tick"]
        wait_for(lambda: client.get("/healthz").json()["tick"] >= stuck + 3)
        full.clear()
        health = wait_for(lambda: (h := client.get("/healthz").json())["status"] == "ok" and h)
        assert health["state_error"] is None
    with sqlite3.connect(tmp_path / "state.db") as db:  # every tick of the outage was written after it
        ticks = [r[0] for r in db.execute("SELECT tick FROM ticks ORDER BY tick")]
    assert ticks == list(range(1, ticks[-1] + 1)) and ticks[-1] >= stuck + 3


class Hang:
    __wyneos_name__ = "test-hang"

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()

    @hookimpl
    def wyneos_enforcement(self, ctx: Any) -> list:
        if self.hang.is_set():
            self.release.wait(60)
        return []


def test_a_hanging_tick_makes_healthz_failing_once_it_is_late(tmp_path):
    hang = Hang()
    service = make_service(write_config(tmp_path), plugins=(hang,), late_tick=1.0)
    with ServerThread(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_for(lambda: client.get("/healthz").json()["tick"] >= 2)
        hang.hang.set()
        r = wait_for(lambda: (r := client.get("/healthz")).status_code == 503 and r)
        assert r.json()["status"] == "failing" and r.json()["tick_late"] is True
        hang.hang.clear()
        hang.release.set()
        wait_for(lambda: client.get("/healthz").status_code == 200)
