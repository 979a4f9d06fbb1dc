"""Operator commands of graduated enforcement (docs/enforcement.md):

* ``wyneos cordon | uncordon | isolate | reinstate NODE --reason TEXT``: set or lift an
  operator override;
* ``wyneos exception add ...`` and ``wyneos exception list``;
* ``wyneos shadow``: the candidate rulesets' difference (a running server, the config's
  state file, or a decision log);
* ``wyneos replay LOG --ruleset FILE...``: logged inputs re-evaluated with other rulesets.

Against a running server (``--server URL``) the write commands need the operator write
token, read from ``--token-file`` or the ``WYNEOS_WRITE_TOKEN`` environment variable
(never from the command line, where other users could read it); the read commands take
the read token the same way (``WYNEOS_READ_TOKEN``). Without ``--server`` they act on
the state store of ``--config`` (the next tick of ``wyneos run`` or ``serve`` reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _target(p: argparse.ArgumentParser, write: bool) -> None:
    p.add_argument("--server", metavar="URL", help="a running orchestrator (else: the state store of --config)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the operator " + ("write" if write else "read")
                   + " token (default: $WYNEOS_" + ("WRITE" if write else "READ") + "_TOKEN)")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: the demo cluster)")
    p.add_argument("--state", metavar="FILE", help="SQLite state file (overrides state.path)")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: argparse._SubParsersAction) -> None:
    for kind, text in (("cordon", "hold the rules' isolations and quarantines of a node (operator override)"),
                       ("uncordon", "lift the operator override of a node: it is the rules' again"),
                       ("isolate", "isolate a node by hand until it is reinstated or uncordoned"),
                       ("reinstate", "reinstate a node by hand; the rules cannot isolate it until uncordoned")):
        p = sub.add_parser(kind, help=text)
        p.add_argument("node", metavar="NODE")
        p.add_argument("--reason", required=True, help="why (shown with the action, in the report and the log)")
        p.add_argument("--by", default=os.environ.get("USER") or "operator", help="who (default: $USER)")
        _target(p, write=True)
        p.set_defaults(func=cmd_override, kind=kind)
    p = sub.add_parser("exception", help="add and list enforcement exceptions (owner, reason, expiry)")
    esub = p.add_subparsers(dest="exception_command", metavar="COMMAND", required=True)
    a = esub.add_parser("add", help="add an exception")
    a.add_argument("--owner", required=True)
    a.add_argument("--reason", required=True)
    a.add_argument("--expires", required=True, help="ISO 8601 time, e.g. 2026-12-31T00:00:00Z")
    a.add_argument("--id", help="a name for it (default: derived from what it says)")
    a.add_argument("--node")
    a.add_argument("--selector", action="append", default=[], metavar="LABEL=VALUE", help="repeatable")
    a.add_argument("--rule", help="ruleset/rule or a rule id")
    a.add_argument("--action", help="an action type (isolate, quarantine...)")
    a.add_argument("--licence-reason", help="a licence reason code (no_licence, expired...)")
    _target(a, write=True)
    a.set_defaults(func=cmd_exception_add)
    ls = esub.add_parser("list", help="list the exceptions (config and store), expired ones marked")
    _target(ls, write=False)
    ls.set_defaults(func=cmd_exception_list)
    s = sub.add_parser("shadow", help="what the candidate rulesets (rulesets.candidates) would change")
    _target(s, write=False)
    s.add_argument("--log", metavar="FILE", help="a decision log: replay it with the config's candidates")
    s.set_defaults(func=cmd_shadow)
    r = sub.add_parser("replay", help="re-evaluate a decision log's inputs with other rulesets; print what differs")
    r.add_argument("log", metavar="LOG", nargs="+", help="decision log file(s), oldest first")
    r.add_argument("--ruleset", metavar="FILE", nargs="+", required=True, help="ruleset files or directories")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=cmd_replay)


# -- talking to a server or to the state store -----------------------------------------------


def _token(args: argparse.Namespace, kind: str) -> str | None:
    if args.token_file:
        from wyneos_core.safeio import read_regular_file

        text = read_regular_file(Path(args.token_file), 4096).decode("utf-8", "replace").strip()
        return text.splitlines()[0].strip() if text else None
    return os.environ.get(f"WYNEOS_{kind.upper()}_TOKEN") or None


def _request(args: argparse.Namespace, method: str, path: str, kind: str, body: Any = None) -> tuple[int, Any]:
    import httpx

    token = _token(args, kind)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=args.server, timeout=30) as client:
        answer = client.request(method, path, json=body, headers=headers)
    try:
        data = answer.json()
    except ValueError:
        data = {"error": answer.text[:500]}
    return answer.status_code, data


def _config(args: argparse.Namespace):  # noqa: ANN202
    from wyneos_core.config import load_config

    config = load_config(args.config)
    if args.state:
        config["state"]["path"] = args.state
    return config


def _store(args: argparse.Namespace):  # noqa: ANN202
    from wyneos_core.store import open_state_store

    return open_state_store(_config(args))


def _fail(text: str, code: int = EXIT_FAIL) -> int:
    print(f"wyneos: {text}", file=sys.stderr)
    return code


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    out = json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else text
    print(out, end="" if out.endswith("\n") else "\n")


# -- commands ---------------------------------------------------------------------------------


def cmd_override(args: argparse.Namespace) -> int:
    from wyneos_core.enforcement.overrides import OverrideError, set_override

    body = {"node": args.node, "kind": args.kind, "reason": args.reason, "by": args.by}
    if args.server:
        status, data = _request(args, "POST", "/v1/overrides", "write", body)
        if status >= 300:
            return _fail(f"{args.kind} refused ({status}): {data.get('error')}")
        made = data.get("override")
    else:
        store = _store(args)
        try:
            made = set_override(store, args.node, args.kind, args.reason, args.by)
            made = made.to_dict() if made else None
        except OverrideError as exc:
            return _fail(f"{args.kind}: {exc}", EXIT_USAGE)
        finally:
            store.close()
    where = args.server or "the state store"
    text = (f"{args.node}: override lifted ({where}); the rules decide again from the next tick"
            if made is None else f"{args.node}: {args.kind} by {made['by']} ({made['reason']}) set on {where}; "
                                 "acts from the next tick")
    _print(args, {"node": args.node, "kind": args.kind, "override": made}, text)
    return EXIT_OK


def cmd_exception_add(args: argparse.Namespace) -> int:
    from wyneos_core.enforcement.exceptions import ExceptionError, PolicyException, store_all, stored

    selector = {}
    for item in args.selector:
        label, sep, value = item.partition("=")
        if not sep:
            return _fail(f"--selector {item!r}: expected LABEL=VALUE", EXIT_USAGE)
        selector[label.strip()] = value.strip()
    body = {k: v for k, v in {"id": args.id, "owner": args.owner, "reason": args.reason, "expires": args.expires,
                               "node": args.node, "selector": selector or None, "rule": args.rule,
                               "action": args.action, "licence_reason": args.licence_reason}.items()
            if v is not None}
    if args.server:
        status, data = _request(args, "POST", "/v1/exceptions", "write", body)
        if status >= 300:
            return _fail(f"exception refused ({status}): {data.get('field', '')}: {data.get('error')}")
        made = data["exception"]
    else:
        try:
            exc = PolicyException.parse(body)
        except ExceptionError as e:
            return _fail(f"exception: {e}", EXIT_USAGE)
        store = _store(args)
        try:
            current = stored(store)
            if exc.id in {e.id for e in current}:
                return _fail(f"exception: an exception {exc.id!r} exists already")
            store_all(store, [*current, exc])
        finally:
            store.close()
        made = exc.to_dict()
    _print(args, {"exception": made}, f"exception {made['id']} added (owner {made['owner']}, until "
                                      f"{made['expires_at']})")
    return EXIT_OK


def cmd_exception_list(args: argparse.Namespace) -> int:
    import time

    from wyneos_core.enforcement.exceptions import configured, stored

    if args.server:
        status, data = _request(args, "GET", "/v1/exceptions", "read")
        if status >= 300:
            return _fail(f"cannot list exceptions ({status}): {data.get('error')}")
        rows = data["exceptions"]
    else:
        config = _config(args)
        now = time.time()
        from wyneos_core.store import open_state_store

        store = open_state_store(config)
        try:
            found = configured(config["enforcement"]) + stored(store)
        finally:
            store.close()
        rows = [{**e.to_dict(), "expired": e.expired(now)} for e in found]
    lines = []
    for r in rows:
        scope = ", ".join(f"{k}={r[k]}" for k in ("node", "selector", "rule", "action", "licence_reason") if k in r)
        lines.append(f"{r['id']}  {'EXPIRED' if r['expired'] else 'active '}  until {r['expires_at']}  "
                     f"owner {r['owner']}  ({scope}): {r['reason']}")
    _print(args, {"exceptions": rows}, "\n".join(lines) if lines else "no exceptions")
    return EXIT_OK


def cmd_shadow(args: argparse.Namespace) -> int:
    from wyneos_core.enforcement.replay import ReplayError, render, replay

    if args.server:
        status, data = _request(args, "GET", "/v1/shadow", "read")
        if status >= 300:
            return _fail(f"cannot read the shadow ({status}): {data.get('error')}")
        result = data.get("shadow")
        if not result:
            return _fail("the server evaluates no candidate rulesets (rulesets.candidates)")
        _print(args, data, f"tick {data['tick']}, candidates {', '.join(result['candidates'])}:\n" + render(result))
        return EXIT_OK
    config = _config(args)
    candidates = config["rulesets"]["candidates"]
    if not candidates:
        return _fail(f"{config.source} names no candidate rulesets (rulesets.candidates)", EXIT_USAGE)
    if args.log:
        try:
            result = replay([Path(args.log)], candidates, base_dir=config.base_dir)
        except (OSError, ReplayError, ValueError) as exc:
            return _fail(f"shadow: {exc}")
        _print(args, result, render(result))
        return EXIT_OK
    return _shadow_of_state(args, config)


def _shadow_of_state(args: argparse.Namespace, config: Any) -> int:
    """The candidates against the live rulesets on the nodes of the state file (read only)."""
    from wyneos_core.enforcement.replay import render
    from wyneos_core.store import StateStore
    from wyneos_core.tick import Orchestrator

    config["report"]["stdout"] = "none"
    config["report"]["json_path"] = None
    config["enforcement"]["decision_log"]["path"] = None
    orchestrator = Orchestrator(config, store=False)
    path = config["state"]["path"]
    source = "the config's nodes"
    if path != ":memory:" and config.resolve(path).is_file():
        store = StateStore.open_read_only(config.resolve(path))
        if store is not None:
            try:
                store.restore_nodes(orchestrator.registry)
                source = f"the nodes of {config.resolve(path)}"
            finally:
                store.close()
    with orchestrator:
        report = orchestrator.tick()
    result = report.enforcement.get("shadow")
    if result is None:
        return _fail("the candidate rulesets could not be evaluated: "
                     + "; ".join(e.error for e in report.errors if e.hook == "shadow"))
    _print(args, result, f"candidates {', '.join(result['candidates'])} on {source}:\n" + render(result))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from wyneos_core.enforcement.replay import ReplayError, render, replay

    try:
        result = replay([Path(p) for p in args.log], args.ruleset, base_dir=Path.cwd())
    except (OSError, ReplayError, ValueError) as exc:
        return _fail(f"replay: {exc}")
    _print(args, result, render(result))
    return EXIT_OK
