"""Complete backups of an orchestrator: everything a restore needs, taken online.

A backup is a directory holding

* ``state.db``: the state file, copied with SQLite's online backup API (a consistent
  snapshot while the server keeps ticking; the WAL's recent commits included);
* ``orchestrator.key`` (0600) and, when there are any, ``orchestrator.key.previous.pub``
  and ``orchestrator.key.handover.json``: the key that signs every action, which agents
  pin (restoring the state without it makes a new key, and every pinned agent refuses
  the server);
* ``licence-ledger.json``: the licence ledger (newest issue seen per licence, the
  revocation list accepted last), which refuses rolled-back licences;
* ``wyneos-backup.json``: the manifest: format, when, the version that wrote it, the
  last tick, the key's fingerprint, and each file's size and SHA-256.

``restore`` checks every file against the manifest and the state file with SQLite's
integrity check before anything is replaced, then puts each file in place atomically.
It refuses a restore that would change the orchestrator key of the target (every agent
pinned to the present key would stop) unless asked (``replace_key``).

Replicas on etcd: ``wyneos_core.ha.backup`` adds a consistent copy of the cluster's keys
(``etcd-snapshot.json``) to the same kind of directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wyneos_core import __version__

__all__ = ["BackupError", "Companions", "FORMAT", "MANIFEST", "backup", "companions_of", "read_manifest",
           "refuse_key_change", "restore"]

FORMAT = "wyneos.backup/1"
MANIFEST = "wyneos-backup.json"
#: largest manifest read
_MAX_MANIFEST = 1024 * 1024
#: the files of a backup by role, and their names inside it
NAMES = {"state": "state.db", "key": "orchestrator.key", "key_previous": "orchestrator.key.previous.pub",
         "key_handover": "orchestrator.key.handover.json", "ledger": "licence-ledger.json",
         "etcd": "etcd-snapshot.json"}
_PRIVATE = {"key", "key_handover", "ledger", "state", "etcd"}


class BackupError(Exception):
    """A backup or restore that cannot be done; nothing was changed."""


@dataclass(frozen=True)
class Companions:
    """Where the files of one orchestrator live (the state file and what sits beside it)."""

    state: Path
    key: Path
    ledger: Path | None

    def paths(self) -> dict[str, Path]:
        from wyneos_core.service.orchestrator_key import PREVIOUS_SUFFIX
        from wyneos_core.service.signed_actions import handover_path

        out = {"state": self.state, "key": self.key,
               "key_previous": self.key.with_name(self.key.name + PREVIOUS_SUFFIX),
               "key_handover": handover_path(self.key)}
        if self.ledger is not None:
            out["ledger"] = self.ledger
        return out


def companions_of(config: Any) -> Companions:
    """The files of the orchestrator ``config`` describes (``state.path``, the key beside
    it, ``licence.ledger`` or the ledger beside the state file)."""
    from wyneos_core.builtin.licence import ledger_for
    from wyneos_core.service.orchestrator_key import key_path_for

    path = config["state"]["path"]
    if path == ":memory:":
        raise BackupError("state.path is ':memory:': there is nothing to back up or restore")
    state = Path(config.resolve(path))
    section = config.data.get("licence") or {}
    ledger = Path(config.resolve(section["ledger"])) if section.get("ledger") else ledger_for(state)
    return Companions(state, key_path_for(state), ledger)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy(src: Path, dst: Path, private: bool) -> None:
    """Copy ``src`` to ``dst`` (0600 when ``private``), written to a temporary name first."""
    tmp = dst.with_name(dst.name + ".part")
    data = src.read_bytes()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _sqlite_copy(src: Path, dst: Path) -> int:
    """SQLite's online backup of ``src`` into ``dst``; the copy's last tick."""
    source = sqlite3.connect(src.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            row = target.execute("SELECT MAX(tick) FROM ticks").fetchone()
            problem = target.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{src}: cannot copy the state file: {exc}") from None
    finally:
        source.close()
    if problem != "ok":
        raise BackupError(f"{src}: the copy fails SQLite's integrity check ({problem}); check the state file "
                          "with `wyneos state check`")
    return int(row[0] or 0)


def _key_fingerprint(path: Path) -> str | None:
    if not path.is_file():
        return None
    from wyneos_core.licensing.keys import fingerprint, load_private_key, public_bytes

    try:
        return fingerprint(public_bytes(load_private_key(path)))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: not a usable orchestrator key: {exc}") from None


def backup(where: Companions, dest: str | Path, *, extra: Mapping[str, Path] | None = None,
           meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Back up the orchestrator whose files are ``where`` into the new directory ``dest``.

    :param extra: more files by role (``etcd``: a replica cluster's snapshot).
    :return: the manifest written.
    :raises BackupError: ``dest`` exists and is not empty, the state file is missing or
        cannot be copied (a partial backup is removed).
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest}: already exists and is not an empty directory; name a new one")
    paths = where.paths()
    if not paths["state"].is_file() and "etcd" not in (extra or {}):
        raise BackupError(f"{paths['state']}: no state file there (state.path); nothing to back up")
    if not paths["key"].is_file():
        raise BackupError(f"{paths['key']}: no orchestrator key beside the state file (it is made by the first "
                          "`wyneos serve`); a backup without it could not keep agents working")
    dest.mkdir(mode=0o700, parents=False, exist_ok=True)
    try:
        files: dict[str, dict[str, Any]] = {}
        last_tick = None
        if paths["state"].is_file():
            fd = os.open(dest / NAMES["state"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner only
            os.close(fd)
            last_tick = _sqlite_copy(paths["state"], dest / NAMES["state"])
        for role, path in {**paths, **(extra or {})}.items():
            if role != "state" and path.is_file():
                _copy(path, dest / NAMES[role], role in _PRIVATE)
        for role, name in NAMES.items():
            if (dest / name).is_file():
                files[role] = {"name": name, "size": (dest / name).stat().st_size, "sha256": _sha256(dest / name)}
        manifest = {"format": FORMAT, "created_at": time.time(), "wyneos": __version__, "last_tick": last_tick,
                    "orchestrator_key": _key_fingerprint(dest / NAMES["key"]), "files": files, **(meta or {})}
        _write_json(dest / MANIFEST, manifest)
    except BaseException:
        for child in dest.iterdir():
            child.unlink()
        dest.rmdir()
        raise
    return manifest


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_manifest(src: str | Path) -> dict[str, Any]:
    """The manifest of the backup ``src``, with every file checked against it.

    :raises BackupError: no manifest, a manifest that is not one, a file missing,
        changed or extra-large.
    """
    src = Path(src)
    path = src / MANIFEST
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_MANIFEST + 1)
    except OSError as exc:
        raise BackupError(f"{path}: cannot read the backup's manifest ({exc.strerror or exc}); "
                          "is this a directory `wyneos state backup` wrote?") from None
    try:
        manifest = json.loads(raw) if len(raw) <= _MAX_MANIFEST else None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"),
                                                                                          dict):
        raise BackupError(f"{path}: not a WyneOS backup manifest (format {FORMAT})")
    for role, entry in manifest["files"].items():
        if role not in NAMES or not isinstance(entry, dict) or entry.get("name") != NAMES[role]:
            raise BackupError(f"{path}: files.{role}: not a file of a WyneOS backup")
        file = src / NAMES[role]
        if not file.is_file():
            raise BackupError(f"{file}: missing from the backup (the manifest lists it)")
        if file.stat().st_size != entry.get("size") or _sha256(file) != entry.get("sha256"):
            raise BackupError(f"{file}: changed since the backup was taken (size or SHA-256 differs from the "
                              "manifest); refusing to restore it")
    if "key" not in manifest["files"]:
        raise BackupError(f"{path}: the backup holds no orchestrator key")
    return manifest


def _in_use(state: Path) -> bool:
    """True when another connection holds the state file (a running server writing it)."""
    if not state.is_file():
        return False
    conn = sqlite3.connect(state, timeout=0.0)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def refuse_key_change(manifest: Mapping[str, Any], where: Companions, replace_key: bool) -> None:
    """Refuse (``BackupError``) a restore of ``manifest`` that would replace the
    orchestrator key in place by another, unless ``replace_key``."""
    key = where.paths()["key"]
    present = _key_fingerprint(key)
    restored_key = manifest.get("orchestrator_key")
    if present is not None and present != restored_key and not replace_key:
        raise BackupError(
            f"{key}: the backup's orchestrator key is {restored_key}, the key in place is {present}: "
            "restoring would change the key, and every agent pinned to the present one would refuse the server. "
            "Pass --replace-key to restore anyway (then pin the agents to the backup's key)")


def restore(src: str | Path, where: Companions, *, replace_key: bool = False) -> dict[str, Any]:
    """Restore the backup ``src`` into the files ``where`` names.

    :param replace_key: restore even when the backup's orchestrator key differs from the
        key in place (agents pinned to the key in place will refuse the server).
    :return: the backup's manifest.
    :raises BackupError: the backup does not check out, the key would change, or the
        state file is in use; nothing is changed then.
    """
    src = Path(src)
    manifest = read_manifest(src)
    refuse_key_change(manifest, where, replace_key)
    paths = where.paths()
    if "state" in manifest["files"]:
        if _in_use(paths["state"]):
            raise BackupError(f"{paths['state']}: the state file is in use (a running server?); stop it first")
        staged = paths["state"].with_name(paths["state"].name + ".restoring")
        paths["state"].parent.mkdir(parents=True, exist_ok=True)
        _copy(src / NAMES["state"], staged, True)
        problem = _check_state(staged)
        if problem is not None:
            staged.unlink()
            raise BackupError(f"{src / NAMES['state']}: {problem}; not restored")
        for suffix in ("-wal", "-shm"):  # a log of the file being replaced must not be replayed on the copy
            stale = paths["state"].with_name(paths["state"].name + suffix)
            if stale.exists():
                stale.unlink()
        os.replace(staged, paths["state"])
    for role, target in paths.items():
        if role == "state":
            continue
        if role in manifest["files"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(src / NAMES[role], target, role in _PRIVATE)
        elif role in ("key_previous", "key_handover") and target.exists():
            target.unlink()  # belongs to the key being replaced
    return manifest


def _check_state(path: Path) -> str | None:
    from wyneos_core.store import StateStore, StoreError

    try:
        store = StateStore.open(path)
    except StoreError as exc:
        return str(exc)
    try:
        problems = store.check(full=True)
    finally:
        store.close()
    return "; ".join(problems[:3]) if problems else None
