"""Damaged state files (issue 9, break 8): refused with a clear message and exit status
2, never started as a new cluster and never a traceback; ``wyneos state check``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cluster_yaml
from wyneos_core.store import StateStore, StoreError


def wyneos(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wyneos_core.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def good(tmp_path) -> Path:
    """A state file of a few real ticks (with nodes and actions), and a config using it."""
    (tmp_path / "c.yaml").write_text(cluster_yaml(4) + "state: {path: state.db}\n")
    done = wyneos("run", "--config", "c.yaml", "--ticks", "3", "--interval", "0.01", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "state.db"


DAMAGE = {
    "zero-length": (None, "the state file is empty (0 bytes)"),
    "schema_version": ("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'",
                       "meta.schema_version is 'abc', not a number"),
    "bad JSON row": ("UPDATE nodes SET metadata = '{not json' WHERE rowid = 1", "table nodes"),
    "unknown status": ("UPDATE nodes SET status = 'zombie' WHERE rowid = 1", "unknown status 'zombie'"),
    "bad action params": ("INSERT INTO actions VALUES ('x1','isolate','n','o','r','critical','[1,',"
                          "'in_force',1,1)", "table actions ('x1'): params: not JSON"),
    "not WyneOS": ("DROP TABLE meta", "not a WyneOS state file"),
    "stored surrogate": ("UPDATE nodes SET metadata = '{\"rack\": \"\\ud800\"}' WHERE rowid = 1",
                         "metadata.rack: not valid Unicode"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_state_file_is_refused_with_exit_2_and_found_by_state_check(good, kind):
    sql, message = DAMAGE[kind]
    if sql is None:
        good.write_bytes(b"")
        for extra in ("state.db-wal", "state.db-shm"):
            (good.parent / extra).unlink(missing_ok=True)
    else:
        with sqlite3.connect(good) as db:
            db.execute(sql)
        with sqlite3.connect(good) as db:  # into the main file: a later checkpoint changes no byte
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = good.read_bytes()
    done = wyneos("run", "--config", "c.yaml", "--ticks", "1", cwd=good.parent)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert good.read_bytes() == before  # refused: nothing written, no new cluster started
    check = wyneos("state", "check", "--config", "c.yaml", cwd=good.parent)
    assert check.returncode == 1 and "damaged" in check.stdout, (check.stdout, check.stderr)
    assert good.read_bytes() == before


def test_a_damaged_page_is_refused_without_a_traceback(good):
    db = sqlite3.connect(good)
    db.executemany("INSERT INTO ticks VALUES (?, 0, 0, ?)", ((1000 + i, json.dumps({"pad": "x" * 3000}))
                                                             for i in range(50)))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(good.read_bytes())
    page = 4096
    for p in range(2, len(data) // page):  # scribble over every page but the header page
        data[p * page + 8: p * page + 200] = b"\xa5" * 192
    good.write_bytes(bytes(data))
    done = wyneos("run", "--config", "c.yaml", "--ticks", "1", cwd=good.parent)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "state" in done.stderr
    check = wyneos("state", "check", "--config", "c.yaml", cwd=good.parent)
    assert check.returncode == 1 and "damaged" in check.stdout, check.stdout


def test_state_check_passes_a_sound_file_and_the_documented_backup_restores_it(good):
    check = wyneos("state", "check", "--config", "c.yaml", cwd=good.parent)
    assert check.returncode == 0 and ": ok (integrity_check" in check.stdout, check.stdout + check.stderr
    # the online backup of docs/operations.md, then a restore in place of a damaged file
    backup = good.parent / "backup.db"
    src, dst = sqlite3.connect(good), sqlite3.connect(backup)
    with dst:
        src.backup(dst)
    dst.close()
    src.close()
    good.write_bytes(b"")
    assert wyneos("run", "--config", "c.yaml", "--ticks", "1", cwd=good.parent).returncode == 2
    backup.replace(good)
    for extra in ("state.db-wal", "state.db-shm"):
        (good.parent / extra).unlink(missing_ok=True)
    done = wyneos("run", "--config", "c.yaml", "--ticks", "1", "--json", cwd=good.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tick"] == 4  # carries on where the backup stopped


def test_the_store_refuses_an_empty_file_directly(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="empty"):
        StateStore.open(path)
    assert path.read_bytes() == b""
