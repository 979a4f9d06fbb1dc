"""``wyneos licence list`` and ``wyneos licence renew``: the licence files an operator
keeps, and a licence signed again with a later expiry.

``list`` reads every ``*.json`` licence in the directories given (default: the
config's ``licence.directory``) and shows its id, customer, tier, seats or paired nodes,
expiry and state (``valid``, ``expiring`` within ``--soon`` days, ``in grace``,
``expired``, ``not yet valid``, or what is wrong with the file), soonest expiry first.
``renew FILE`` signs the same licence again (same id, customer, product, tier,
features, seats, nodes, integrity) with a new ``expires`` and a new ``issued`` time, so
the orchestrator's ledger takes it as the newer issue; the file is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DAY = 86400.0


def register(sub: argparse._SubParsersAction) -> None:
    from wyneos_core.cli.common import subcommands

    lsub = subcommands(sub, "licence")
    ls = lsub.add_parser("list", help="list licence files: id, customer, tier, seats, expiry and state")
    ls.add_argument("dirs", nargs="*", metavar="DIR", help="directories of licence files (default: the config's "
                    "licence.directory)")
    ls.add_argument("--config", "-c", metavar="FILE", help="YAML config (for licence.directory)")
    ls.add_argument("--soon", type=float, default=30.0, help="say 'expiring' this many days ahead (default 30)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    rn = lsub.add_parser("renew", help="sign a licence again with a later expiry (same fields, new issue time)")
    rn.add_argument("file", metavar="FILE", help="the licence file (replaced, unless --out)")
    rn.add_argument("--key", required=True, metavar="FILE", help="issuer private key (PEM)")
    rn.add_argument("--expires", required=True, help="the new expiry: YYYY-MM-DD, full UTC time, or +365d")
    rn.add_argument("--out", "-o", metavar="FILE", help="write the renewed licence here instead")
    rn.set_defaults(func=cmd_renew)


def _rows(dirs: list[Path], now: float, soon: float) -> list[dict[str, Any]]:
    from wyneos_core.licensing.document import FORMAT, parse_licence
    from wyneos_core.licensing.envelope import EnvelopeError, parse_envelope
    from wyneos_core.safeio import read_regular_file

    rows = []
    for directory in dirs:
        for path in sorted(directory.glob("*.json")):
            row: dict[str, Any] = {"file": str(path)}
            try:
                _, lic = parse_licence(parse_envelope(read_regular_file(path, 1 << 20), FORMAT))
            except (EnvelopeError, OSError, ValueError) as exc:
                rows.append({**row, "state": f"unreadable: {exc}"})
                continue
            if now < lic.not_before:
                state = "not yet valid"
            elif now >= lic.grace_until:
                state = "expired"
            elif now >= lic.expires:
                state = "in grace"
            elif lic.expires - now <= soon * DAY:
                state = "expiring"
            else:
                state = "valid"
            rows.append({**row, "licence_id": lic.licence_id, "customer": lic.customer, "tier": lic.tier,
                         "product": lic.product, "seats": lic.seats, "nodes": len(lic.fingerprints),
                         "expires": lic.expires, "days_left": round((lic.expires - now) / DAY, 1), "state": state})
    rows.sort(key=lambda r: (r.get("expires") is None, r.get("expires") or 0, r["file"]))
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    from wyneos_core.licensing.document import format_time

    dirs = [Path(d) for d in args.dirs]
    if not dirs:
        from wyneos_core.config import load_config

        config = load_config(args.config)
        dirs = [Path(config.resolve((config.data.get("licence") or {}).get("directory", "licences")))]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        print(f"wyneos licence list: {missing[0]}: no such directory", file=sys.stderr)
        return EXIT_USAGE
    rows = _rows(dirs, time.time(), args.soon)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no licence files in " + ", ".join(map(str, dirs)))
        return EXIT_OK
    print(f"{'LICENCE':<20} {'CUSTOMER':<16} {'TIER':<10} {'SEATS':>5} {'NODES':>5}  {'EXPIRES':<20} STATE")
    for r in rows:
        if "licence_id" not in r:
            print(f"{Path(r['file']).name:<20} {r['state']}")
            continue
        print(f"{r['licence_id']:<20} {r['customer']:<16} {r['tier']:<10} {r['seats'] or '-':>5} {r['nodes']:>5}  "
              f"{format_time(r['expires']):<20} {r['state']}")
    return EXIT_OK


def cmd_renew(args: argparse.Namespace) -> int:
    from wyneos_core.cli.licence import parse_when
    from wyneos_core.licensing.document import FORMAT, issue_licence, parse_licence
    from wyneos_core.licensing.envelope import EnvelopeError, parse_envelope
    from wyneos_core.licensing.keys import load_private_key
    from wyneos_core.licensing.revocation import write_atomic
    from wyneos_core.safeio import read_regular_file

    now = time.time()
    try:
        _, old = parse_licence(parse_envelope(read_regular_file(args.file, 1 << 20), FORMAT))
        expires = parse_when(args.expires, now, "--expires")
        if expires <= old.expires:
            print(f"wyneos licence renew: --expires {args.expires} is not after the licence's expiry; renewing "
                  "moves it later", file=sys.stderr)
            return EXIT_USAGE
        issued = float(int(now))
        if issued <= old.issued:  # the ledger takes the newest issue: this one must be newer
            issued = old.issued + 1
        doc = issue_licence(load_private_key(args.key), licence_id=old.licence_id, customer=old.customer,
                            product=old.product, tier=old.tier, features=old.features, issued=issued,
                            expires=expires, not_before=min(old.not_before, issued), grace_days=old.grace_days,
                            seats=old.seats, fingerprints=sorted(old.fingerprints), integrity=old.integrity)
    except (EnvelopeError, OSError, ValueError) as exc:
        print(f"wyneos licence renew: {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    out = Path(args.out or args.file)
    write_atomic(out, json.dumps(doc, indent=1) + "\n")
    print(f"licence {old.licence_id} renewed until {doc['payload']['expires']} (issued {doc['payload']['issued']}), "
          f"written to {out}")
    return EXIT_OK
