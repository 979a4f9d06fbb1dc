"""The state disk fills up during ticks (issue 9, break 7 and deliver 6's fault test).

A real orchestrator in a subprocess keeps its state file on a 2 MB tmpfs (as root
where the machine allows mounting one; else the same run with an injected "database
or disk is full" from SQLite's write calls). While the disk is full an isolation is
decided; then space comes back, the process is killed with SIGKILL, and a new one
finds the isolation, the action in force and every tick of the outage in the file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from service_helpers import write_config

from wyneos_core.config import load_config
from wyneos_core.tick import Orchestrator

CHILD = textwrap.dedent('''
    import json, os, sqlite3, sys, time
    from pathlib import Path
    from wyneos_core import hookimpl
    from wyneos_core.config import load_config
    from wyneos_core.model import Action, ActionType, Severity
    from wyneos_core.store import StateStore
    from wyneos_core.tick import Orchestrator

    config_path, flag, full_flag = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if os.environ.get("INJECT_FULL"):  # no tmpfs here: SQLite's writes fail as on a full disk
        for name in ("write_tick", "write_action_outcomes"):
            real = getattr(StateStore, name)
            def failing(self, *a, _real=real, **k):
                if full_flag.exists():
                    raise sqlite3.OperationalError("database or disk is full")
                return _real(self, *a, **k)
            setattr(StateStore, name, failing)

    class Flagged:
        __wyneos_name__ = "test-flagged"
        @hookimpl
        def wyneos_enforcement(self, ctx, nodes):
            if not flag.exists():
                return []
            return [Action(ActionType.ISOLATE, "bad", "flagged", "test-flagged", Severity.CRITICAL)]

    orch = Orchestrator(load_config(config_path), plugins=(Flagged(),), load_entrypoints=False)
    orch.start()
    for _ in range(3000):
        report = orch.tick()
        print(json.dumps({"tick": report.tick, "isolated": sorted(n.id for n in orch.registry if n.isolated),
                          "state_error": getattr(orch, "state_error", None)}), flush=True)
        time.sleep(0.05)
''')


def _tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


class Child:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.last: dict = {}

    def until(self, predicate, limit: int = 600) -> dict:
        """Read tick lines until ``predicate(line)`` (at most ``limit`` lines)."""
        for _ in range(limit):
            raw = self.proc.stdout.readline()
            assert raw, f"the child ended: {self.proc.stderr.read()[-2000:]}"
            self.last = json.loads(raw)
            if predicate(self.last):
                return self.last
        raise AssertionError(f"not reached in {limit} ticks; last: {self.last}")


@pytest.mark.parametrize("mode", ["disk", "injected"])
def test_no_decision_is_lost_when_the_state_disk_fills_up_then_kill_9(tmp_path, mode):
    disk = tmp_path / "disk"
    disk.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    if mode == "disk":
        if not _tmpfs(disk, "2m"):
            pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN): the injected run covers it")
    else:
        env["INJECT_FULL"] = "1"
    try:
        config = write_config(tmp_path, interval=0.05, stale=1e5, offline=2e5,
                              extra="nodes:\n  - {id: a}\n  - {id: b}\n  - {id: c}\n  - {id: bad}\n")
        config.write_text(config.read_text().replace("state: {path: state.db}",
                                                     f"state: {{path: {disk / 'state.db'}}}"))
        flag, full_flag = tmp_path / "isolate-bad", tmp_path / "full"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(config), str(flag), str(full_flag)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        child = Child(proc)
        try:
            child.until(lambda t: t["tick"] >= 3)
            # the disk fills up
            full_flag.touch()
            if mode == "disk":
                fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
                try:
                    for _ in range(4096):  # 16 MB at most on a 2 MB disk
                        os.write(fd, b"\0" * 4096)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            full = child.until(lambda t: t["state_error"] is not None)
            assert "database or disk is full" in full["state_error"]
            assert "cannot rollback" not in full["state_error"]
            # an isolation is decided while nothing can be written
            flag.touch()
            decided = child.until(lambda t: t["isolated"] == ["bad"])
            assert decided["state_error"] is not None
            outage_tick = child.until(lambda t: t["tick"] >= decided["tick"] + 3)["tick"]
            # space comes back: the waiting ticks are written at the next tick
            full_flag.unlink()
            if mode == "disk":
                (disk / "filler").unlink()
            written = child.until(lambda t: t["state_error"] is None)
            assert written["tick"] > outage_tick
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc.stdout.close()
            proc.stderr.close()
        # after kill -9 a new orchestrator finds the isolation and every tick of the outage
        with sqlite3.connect(disk / "state.db") as db:
            ticks = [r[0] for r in db.execute("SELECT tick FROM ticks ORDER BY tick")]
            in_force = list(db.execute("SELECT type, target FROM actions WHERE state = 'in_force'"))
        assert ticks == list(range(ticks[0], ticks[-1] + 1)) and ticks[-1] >= written["tick"]
        assert ("isolate", "bad") in in_force
        again = Orchestrator(load_config(config), load_entrypoints=False)
        assert again.registry["bad"].isolated and not again.registry["a"].isolated
        assert again.tick_number >= written["tick"]
        again.store.close()
    finally:
        if mode == "disk":
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
