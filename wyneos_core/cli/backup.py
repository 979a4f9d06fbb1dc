"""``wyneos state backup DEST`` and ``wyneos state restore SRC``: complete backups (the
state file, the orchestrator key, the licence ledger), see ``wyneos_core.backup`` and
docs/operations.md."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(sub: argparse._SubParsersAction) -> None:
    from wyneos_core.cli.common import subcommands

    ssub = subcommands(sub, "state")
    b = ssub.add_parser("backup", help="back up the state file, orchestrator key and licence ledger into a new "
                        "directory (online: the server keeps running)")
    b.add_argument("dest", metavar="DEST", help="a directory that does not exist yet (or is empty)")
    _where(b)
    b.set_defaults(func=cmd_backup)
    r = ssub.add_parser("restore", help="restore a backup made by `wyneos state backup` (stop the server first)")
    r.add_argument("src", metavar="SRC", help="the backup directory")
    _where(r)
    r.add_argument("--replace-key", action="store_true",
                   help="restore even if the backup's orchestrator key differs from the key in place "
                        "(agents pinned to the present key will refuse the server)")
    r.set_defaults(func=cmd_restore)


def _where(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: the demo cluster)")
    p.add_argument("--state", metavar="FILE", help="state file (overrides state.path)")
    p.add_argument("--store", metavar="URL", help="replicas on etcd: etcd://HOST:PORT[,HOST:PORT...]")


def _companions(args: argparse.Namespace):  # noqa: ANN202
    from wyneos_core.backup import companions_of
    from wyneos_core.cli.common import use_store_url
    from wyneos_core.config import load_config

    config = load_config(args.config)
    if args.state:
        config["state"]["path"] = args.state
    if args.store:
        use_store_url(config, args.store)
    return config, companions_of(config)


def cmd_backup(args: argparse.Namespace) -> int:
    from wyneos_core.backup import BackupError, backup

    extra: dict = {}
    try:
        config, where = _companions(args)
        meta: dict = {}
        if config["state"].get("backend") == "etcd":  # the cluster's keys, read at one revision
            from wyneos_core.ha.backup import snapshot

            extra, meta = snapshot(config, args.dest)
        manifest = backup(where, args.dest, extra=extra, meta=meta)
    except BackupError as exc:
        print(f"wyneos state backup: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        for path in extra.values():
            path.unlink(missing_ok=True)
    files = ", ".join(f"{e['name']} ({e['size']} bytes)" for e in manifest["files"].values())
    print(f"backed up to {args.dest}: {files}; last tick {manifest['last_tick'] or '-'}, "
          f"orchestrator key {manifest['orchestrator_key']}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from wyneos_core.backup import BackupError, read_manifest, refuse_key_change, restore

    try:
        config, where = _companions(args)
        refuse_key_change(read_manifest(args.src), where, args.replace_key)  # before anything is written
        if config["state"].get("backend") == "etcd":
            from wyneos_core.ha.backup import restore_snapshot

            restore_snapshot(config, args.src)
        manifest = restore(args.src, where, replace_key=args.replace_key)
    except BackupError as exc:
        print(f"wyneos state restore: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"restored {args.src} into {where.state.parent}: last tick {manifest['last_tick'] or '-'}, "
          f"orchestrator key {manifest['orchestrator_key']}")
    return EXIT_OK
