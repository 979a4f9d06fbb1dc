"""Backups of replicas on etcd: a consistent copy of the cluster's keys.

``snapshot`` reads every key under the cluster's prefix in one range request (etcd
answers it at one revision: a consistent copy while the leader keeps writing), leaving
out the keys bound to a lease (the leader key: a restored cluster elects its own), and
writes them as ``etcd-snapshot.json`` (``wyneos.etcd-snapshot/1``: the prefix, the
revision, each key below the prefix with its value in base64). ``wyneos state backup``
puts it in the backup directory beside the orchestrator key (``wyneos_core.backup``).

``restore_snapshot`` writes them back under the config's prefix, which must hold no
cluster yet (stop the replicas and start them on the restored prefix after): a restore
never mixes two clusters' keys. Values are checked as they are read (sizes bounded,
JSON where the store writes JSON, only keys below the prefix).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from wyneos_core.backup import NAMES, BackupError, read_manifest

__all__ = ["FORMAT", "restore_snapshot", "snapshot"]

FORMAT = "wyneos.etcd-snapshot/1"
#: largest snapshot read back (a 100,000-node cluster's keys are some hundred MB)
MAX_SNAPSHOT = 1024 * 1024 * 1024
#: writes per transaction on restore (etcd's default limit is 128 operations)
_BATCH = 100
#: keys a new store writes itself (opening it): present in an "empty" prefix
_OWN = ("meta/schema_version",)


def _open(config: Any) -> Any:
    from wyneos_core.ha.replica import open_etcd_store

    return open_etcd_store(config)


def snapshot(config: Any, dest: str | Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Copy the cluster's keys into a temporary file beside ``dest``.

    :return: ``({"etcd": path of the file}, manifest fields)``; the caller removes the
        file once ``wyneos_core.backup.backup`` has copied it.
    """
    store = _open(config)
    try:
        kvs = store.client.get_prefix(store.prefix)
    finally:
        store.close()
    base = len(store.prefix)
    rows = [[kv.key[base:], base64.b64encode(kv.value).decode()] for kv in kvs if not kv.lease]
    revision = max((kv.mod_revision for kv in kvs), default=0)
    tick = next((kv.value.decode() for kv in kvs if kv.key[base:] == "tick"), "0")
    doc = {"format": FORMAT, "prefix": store.prefix, "revision": revision, "kvs": rows}
    parent = Path(dest).resolve().parent
    fd, name = tempfile.mkstemp(prefix=".wyneos-etcd-", suffix=".json", dir=parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    return {"etcd": Path(name)}, {"backend": "etcd", "etcd_prefix": store.prefix, "etcd_revision": revision,
                                  "etcd_keys": len(rows), "last_tick": int(tick) if tick.isdigit() else None}


def _rows(path: Path) -> list[tuple[str, bytes]]:
    if path.stat().st_size > MAX_SNAPSHOT:
        raise BackupError(f"{path}: larger than {MAX_SNAPSHOT // (1024 * 1024)} MB")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: not an etcd snapshot of WyneOS ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("kvs"), list):
        raise BackupError(f"{path}: not an etcd snapshot of WyneOS (format {FORMAT})")
    out = []
    for i, row in enumerate(doc["kvs"]):
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)) or not row[0] \
                or row[0].startswith("/") or ".." in row[0].split("/"):
            raise BackupError(f"{path}: kvs[{i}]: not a key below the prefix and its value")
        try:
            out.append((row[0], base64.b64decode(row[1], validate=True)))
        except (binascii.Error, ValueError):
            raise BackupError(f"{path}: kvs[{i}]: the value is not base64") from None
    return out


def restore_snapshot(config: Any, src: str | Path) -> int:
    """Write the keys of the backup ``src`` under the config's prefix.

    :return: how many keys were written.
    :raises BackupError: the backup holds no etcd snapshot or a damaged one, or the
        prefix already holds a cluster (nothing is written then).
    """
    from wyneos_core.ha.etcd import put_op

    manifest = read_manifest(src)
    if "etcd" not in manifest["files"]:
        raise BackupError(f"{src}: the backup holds no etcd snapshot (a backup of a SQLite state file: restore it "
                          "with state.backend: sqlite)")
    rows = _rows(Path(src) / NAMES["etcd"])
    store = _open(config)
    try:
        present = [kv.key[len(store.prefix):] for kv in store.client.get_prefix(store.prefix, keys_only=True)]
        taken = [k for k in present if k not in _OWN]
        if taken:
            raise BackupError(f"{store.path}: the prefix holds a cluster already ({len(taken)} keys, such as "
                              f"{taken[0]!r}); restore into an empty prefix (stop the replicas and delete it, or "
                              "set another state.etcd.prefix)")
        ops = [put_op(store.prefix + key, value) for key, value in rows]
        for start in range(0, len(ops), _BATCH):
            store.client.txn([], ops[start:start + _BATCH])
    finally:
        store.close()
    return len(rows)
