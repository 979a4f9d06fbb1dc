"""``wyneos enrol token list`` and ``wyneos enrol token revoke ID``: the enrolment tokens
kept in the state (never the token itself: its id is the first 12 characters of its
SHA-256), and revoking one before it is used up or expires."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

__all__ = ["ID_LENGTH", "cmd_token_list", "cmd_token_revoke", "token_rows"]

#: characters of the token's hash shown as its id (what ``GET /v1/enrol/tokens`` shows too)
ID_LENGTH = 12
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def token_rows(store: Any, now: float) -> list[dict[str, Any]]:
    return [{"id": r["token_hash"][:ID_LENGTH], "node_id": r["node_id"], "uses_left": r["uses_left"],
             "expires_at": r["expires_at"], "created_at": r["created_at"],
             "state": "expired" if r["expires_at"] <= now else ("used up" if r["uses_left"] <= 0 else "usable")}
            for r in store.enrol_tokens()]


def cmd_token_list(args: argparse.Namespace, store: Any) -> int:
    try:
        rows = token_rows(store, time.time())
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no enrolment tokens")
        return EXIT_OK
    print(f"{'ID':<12}  {'NODE':<24} {'USES':>4}  {'STATE':<8} EXPIRES")
    for r in rows:
        when = datetime.fromtimestamp(r["expires_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        print(f"{r['id']:<12}  {r['node_id'] or '(any)':<24} {r['uses_left']:>4}  {r['state']:<8} {when}")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace, store: Any) -> int:
    wanted = (args.token_id or "").strip().lower()
    try:
        if len(wanted) < 8 or any(c not in "0123456789abcdef" for c in wanted):
            print("wyneos enrol token revoke: give the token's ID as `wyneos enrol token list` shows it "
                  "(at least 8 hexadecimal characters)", file=sys.stderr)
            return EXIT_USAGE
        matches = [r["token_hash"] for r in store.enrol_tokens() if r["token_hash"].startswith(wanted)]
        if len(matches) != 1:
            why = "no enrolment token has" if not matches else f"{len(matches)} tokens have"
            print(f"wyneos enrol token revoke: {why} the id {wanted!r}", file=sys.stderr)
            return EXIT_FAIL
        store.revoke_enrol_token(matches[0])
    finally:
        store.close()
    print(f"revoked enrolment token {wanted}: no node can enrol with it any more")
    return EXIT_OK
