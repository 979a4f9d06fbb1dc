"""``wyneos get | describe | watch`` against a running server, kubectl's way.

``get KIND`` lists nodes, actions, rules, licences, exceptions or tokens (``-l`` label
selector, ``--problem``, ``--search``, ``--sort``, ``-o table|json|yaml``);
``describe KIND NAME`` shows one object whole (a node with its explanation);
``watch KIND`` prints what changes, one line per object, until ``--count`` changes
were seen, ``--timeout`` passed or Ctrl-C. The client side is ``wyneos_core.fleetview``
and ``wyneos_core.remote``; see docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import yaml

__all__ = ["register", "remote_options"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def remote_options(p: argparse.ArgumentParser) -> None:
    """``--server`` and ``--token-file``: which server, and the operator token."""
    p.add_argument("--server", "-s", metavar="URL", help="the server (default: $WYNEOS_SERVER or "
                   "http://127.0.0.1:8420)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the operator token (service.read_token; "
                   "default: $WYNEOS_TOKEN_FILE, else $WYNEOS_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one request may take (default 10)")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--selector", "-l", metavar="SELECTOR", help="label selector: zone=eu,tier!=trusted,"
                   "'zone in (eu,us)',gpu,!draining")
    p.add_argument("--problem", "-P", metavar="PROBLEM", help="only those with this problem: offline, stale, "
                   "isolated, licence, licence:expired, rule, rule:RULE, tier:untrusted; any; none")
    p.add_argument("--search", "-q", metavar="TEXT", help="only those whose id, labels or problems hold TEXT")
    p.add_argument("--sort", metavar="FIELD", help="sort by FIELD (nodes: problems, id, status, load, trust, "
                   "zone, tier, last_seen; a leading '-' reverses: --sort=-load; default: worst first)")
    p.add_argument("--limit", type=int, help="at most this many (default: every match, read a page of 1000 "
                   "at a time)")


def register(sub: argparse._SubParsersAction) -> None:
    from wyneos_core.fleetview import FORMATS, KINDS

    kinds = ", ".join(KINDS)
    g = sub.add_parser("get", help=f"list objects of a running server: {kinds}")
    g.add_argument("kind", metavar="KIND", help=kinds)
    _filters(g)
    g.add_argument("--output", "-o", choices=FORMATS, default="table", help="table (default), json or yaml")
    remote_options(g)
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("describe", help="show one object of a running server whole")
    d.add_argument("kind", metavar="KIND", help=kinds)
    d.add_argument("name", metavar="NAME", help="its name, as `wyneos get` lists it")
    d.add_argument("--output", "-o", choices=FORMATS[1:], default="yaml", help="yaml (default) or json")
    remote_options(d)
    d.set_defaults(func=cmd_describe)

    w = sub.add_parser("watch", help="print changes to objects of a running server as they happen")
    w.add_argument("kind", metavar="KIND", help=kinds)
    _filters(w)
    w.add_argument("--interval", type=float, default=2.0, help="seconds between reads (default 2)")
    w.add_argument("--count", type=int, help="stop after this many changes")
    w.add_argument("--duration", type=float, help="stop after this many seconds")
    remote_options(w)
    w.set_defaults(func=cmd_watch)


def _remote(args: argparse.Namespace):  # noqa: ANN202
    from wyneos_core.remote import Remote, read_token, server_url

    return Remote(server_url(args.server), read_token(args.token_file), timeout=args.timeout)


def _guard(name: str, fn):  # noqa: ANN001, ANN202
    """Run ``fn``; a server, token or selector problem is one line on stderr, exit 1 or 2."""
    from wyneos_core.remote import RemoteError
    from wyneos_core.selectors import SelectorError

    try:
        return fn()
    except SelectorError as exc:
        print(f"wyneos {name}: --selector: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as exc:
        print(f"wyneos {name}: {exc}", file=sys.stderr)
        return EXIT_FAIL


def _rows(args: argparse.Namespace, remote):  # noqa: ANN001, ANN202
    from wyneos_core.fleetview import fetch, kind_of
    from wyneos_core.selectors import parse

    kind = kind_of(args.kind)
    return kind, fetch(remote, kind, parse(args.selector), args.problem, args.search, args.sort,
                       None if args.limit is None else max(1, args.limit))


def cmd_get(args: argparse.Namespace) -> int:
    from wyneos_core.fleetview import render

    def run() -> int:
        kind, rows = _rows(args, _remote(args))
        print(render(kind, rows, args.output))
        return EXIT_OK

    return _guard("get", run)


def cmd_describe(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from wyneos_core.fleetview import fetch, kind_of
    from wyneos_core.remote import RemoteError
    from wyneos_core.selectors import parse

    def run() -> int:
        remote = _remote(args)
        kind = kind_of(args.kind)
        if kind.name == "nodes":
            obj = remote.get(f"/v1/nodes/{quote(args.name, safe='')}")
            obj["explain"] = remote.get(f"/v1/nodes/{quote(args.name, safe='')}/explain")
        else:
            found = [r for r in fetch(remote, kind, parse(None)) if kind.key(r) == args.name]
            if not found:
                raise RemoteError(f"no {kind.name[:-1]} {args.name!r} (`wyneos get {kind.name}` lists them)")
            obj = found[0]
        obj = {"kind": kind.name[:-1], "name": args.name, **obj}
        if args.output == "json":
            print(json.dumps(obj, indent=2, default=str))
        else:
            print(yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False).rstrip())
        return EXIT_OK

    return _guard("describe", run)


def cmd_watch(args: argparse.Namespace) -> int:
    from wyneos_core.fleetview import changes

    if args.interval <= 0 or (args.count is not None and args.count < 1):
        print("wyneos watch: --interval must be above 0 and --count at least 1", file=sys.stderr)
        return EXIT_USAGE

    def run() -> int:
        remote = _remote(args)
        kind, rows = _rows(args, remote)
        before = {kind.key(r): r for r in rows}
        print(f"watching {len(before)} {kind.name} on {remote.url} (Ctrl-C ends)", flush=True)
        seen = 0
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(args.interval if deadline is None else max(0.0, min(args.interval,
                                                                                deadline - time.monotonic())))
                kind, rows = _rows(args, remote)
                after = {kind.key(r): r for r in rows}
                stamp = time.strftime("%H:%M:%S")
                for line in changes(kind, before, after):
                    print(f"{stamp}  {line}", flush=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        return EXIT_OK
                before = after
        except KeyboardInterrupt:
            return EXIT_OK
        return EXIT_OK

    return _guard("watch", run)
