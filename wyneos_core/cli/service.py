"""``wyneos serve``, ``wyneos agent`` and ``wyneos enrol``: service mode on the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from wyneos_core.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, _common, _seconds, build
from wyneos_core.wording import plural

__all__ = ["register"]


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0-65535): {text!r}")
    return value


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the orchestrator as an HTTP service (API, dashboard, metrics)")
    _common(p)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, help="TCP port (default 8420; 0 picks a free one)")
    p.add_argument("--interval", type=_seconds, help="seconds between ticks (overrides tick.interval)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    _store_args(p)
    p.add_argument("--replica-id", metavar="ID", help="this replica's name among replicas on etcd "
                   "(default: host name and process id)")
    p.add_argument("--advertise-url", metavar="URL", help="the URL other replicas forward heartbeats to "
                   "(default: the address it listens on)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("agent", help="run a node agent: enrol, send signed heartbeats, apply actions")
    p.add_argument("--server", required=True, metavar="URL", help="orchestrator URL, e.g. http://127.0.0.1:8420 "
                   "(replicas: several, comma-separated)")
    p.add_argument("--node", required=True, metavar="ID", help="this node's id")
    p.add_argument("--state-dir", required=True, metavar="DIR", help="keeps node.key, state and actions.log")
    p.add_argument("--token", help="enrolment token (first start only)")
    p.add_argument("--licence", metavar="REF", help="this node's licence (sent as licence_ref; the licence must be "
                                                  "paired with this node's key fingerprint, or be a seat licence)")
    p.add_argument("--init", action="store_true",
                   help="create the node key if missing, print its fingerprint and exit (to issue a licence first)")
    p.add_argument("--interval", type=_seconds, help="seconds between heartbeats (default: the server's)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="extra metadata (repeatable)")
    p.add_argument("--integrity-file", metavar="PATH", help="report the sha256 digest of PATH (the licensed "
                   "software) as metadata 'integrity' in every heartbeat; checked against a licence that pins one")
    p.add_argument("--metric", action="append", default=[], metavar="NAME=COMMAND",
                   help="report metric NAME in every heartbeat: COMMAND's output, one number (repeatable; "
                        "declared in the server's telemetry.metrics; docs/prediction.md)")
    p.add_argument("--metrics-file", metavar="PATH", help="report the metrics of a JSON object {name: number} "
                   "in PATH (read for every heartbeat)")
    p.add_argument("--hook", metavar="PROGRAM", help="run PROGRAM TYPE TARGET for each action (JSON on stdin)")
    p.add_argument("--hook-type", action="append", default=[], metavar="TYPE",
                   help="also hand actions of this type (a plugin's own) to the hook (repeatable); "
                        "types the agent does not know are never handed to it")
    p.add_argument("--orchestrator-key", metavar="FINGERPRINT|FILE",
                   help="pin the orchestrator key in advance (`wyneos orchestrator-key show` prints it): "
                        "an enrolment answer with another key is refused")
    p.add_argument("--count", type=_positive, help="stop after N heartbeats")
    p.add_argument("--duration", type=_seconds, help="stop after N seconds")
    p.add_argument("--max-backoff", type=_seconds, default=60.0, help="longest wait between retries (s)")
    p.add_argument("--timeout", type=_seconds, default=10.0,
                   help="deadline of each request, from connecting to the last byte of the answer (s)")
    p.add_argument("--peer-port", type=int, metavar="PORT",
                   help="serve the peer endpoint on PORT (0: any free port) and witness the mesh neighbours "
                        "(their list must verify against the pinned orchestrator key)")
    p.add_argument("--peer-host", default="127.0.0.1", metavar="HOST", help="address of the peer endpoint")
    p.add_argument("--peer-relay-rate", type=float, default=2.0, metavar="PER_SECOND",
                   help="relay pushes one source address may make per second on average (429 past it)")
    p.add_argument("--peer-relay-burst", type=int, default=8, metavar="N",
                   help="relay pushes one source address may make at once")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("orchestrator-key", help="show or rotate the key that signs every action handed to nodes")
    ksub = p.add_subparsers(dest="key_command", metavar="ACTION")
    k = ksub.add_parser("show", help="print the key id and fingerprint (what agents pin)")
    _common(k)
    k.add_argument("--pem", action="store_true", help="print the PEM public key instead (for --orchestrator-key FILE)")
    k.set_defaults(func=cmd_key_show)
    k = ksub.add_parser("rotate", help="make a new key; the old one signs the hand-over and stays trusted")
    _common(k)
    k.set_defaults(func=cmd_key_rotate)
    k = ksub.add_parser("retire", help="retire the previous key (after a rotate): agents stop trusting it at the date")
    _common(k)
    k.add_argument("--at", metavar="WHEN", default=None,
                   help="when the retirement takes effect: an ISO 8601 date and time (UTC unless it says) or "
                        "seconds since the epoch (default: now)")
    k.set_defaults(func=cmd_key_retire)
    p.set_defaults(func=lambda args: (p.print_help(), EXIT_USAGE)[1])

    p = sub.add_parser("enrol", help="manage node enrolment: tokens, enrolled keys, revocation")
    esub = p.add_subparsers(dest="enrol_command", metavar="ACTION")
    t = esub.add_parser("token", help="create an enrolment token (printed once); `token list` lists them, "
                        "`token revoke ID` revokes one")
    t.add_argument("verb", nargs="?", choices=("create", "list", "revoke"), default="create",
                   help="create (default), list, or revoke")
    t.add_argument("token_id", nargs="?", metavar="ID", help="revoke: the token's id, as `token list` shows it")
    _common(t)
    _store_args(t)
    t.add_argument("--json", action="store_true", help="list: as JSON")
    t.add_argument("--node", metavar="ID", help="only this node may use it")
    t.add_argument("--uses", type=int, default=1, help="how many enrolments it allows (default 1)")
    t.add_argument("--ttl", type=float, default=3600.0, help="seconds it stays valid (default 3600)")
    t.add_argument("--customer", metavar="NAME", help="the customer of the nodes it enrols (whose licences they may "
                   "use; a node can never choose it itself)")
    t.set_defaults(func=cmd_enrol_token)
    ls = esub.add_parser("list", help="list enrolled node keys")
    _common(ls)
    _store_args(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_enrol_list)
    rv = esub.add_parser("revoke", help="revoke a node's key (takes effect at the server's next tick)")
    _common(rv)
    _store_args(rv)
    rv.add_argument("node", metavar="ID")
    rv.set_defaults(func=cmd_enrol_revoke)
    p.set_defaults(func=lambda args: (p.print_help(), EXIT_USAGE)[1])

    st = sub.add_parser("state", help="check the state file")
    ssub = st.add_subparsers(dest="state_command", metavar="ACTION")
    ck = ssub.add_parser("check", help="check the state file: SQLite integrity, schema, every row (read only)")
    _common(ck)
    _store_args(ck)
    ck.add_argument("--quick", action="store_true", help="SQLite's quick_check instead of the full integrity_check")
    ck.set_defaults(func=cmd_state_check)
    st.set_defaults(func=lambda args: (st.print_help(), EXIT_USAGE)[1])


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL", help="keep the state in etcd: etcd://HOST:PORT[,HOST:PORT...] "
                   "(sets state.backend: etcd; replicas on the same etcd elect one leader)")


def _settings(args: argparse.Namespace, config):  # noqa: ANN001, ANN202
    from wyneos_core.service.settings import ServiceSettings

    return ServiceSettings.from_config(config, host=getattr(args, "host", None), port=getattr(args, "port", None))


def _file_state_path(args: argparse.Namespace) -> None:
    """Refuse ``state.path: ":memory:"`` before anything starts (service mode keeps a file)."""
    from wyneos_core.config import ConfigError, load_config

    if getattr(args, "store", None):
        return
    if args.state == ":memory:":
        print("wyneos serve: --state: service mode keeps its state in a file, ':memory:' keeps nothing",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    config = load_config(args.config)
    if config["state"]["backend"] == "etcd":
        return
    if not args.state and config["state"]["path"] == ":memory:":
        raise ConfigError("service mode keeps its state in a file; ':memory:' keeps nothing across a restart "
                          "(give a file name)", file=config.source, field="state.path")


def cmd_serve(args: argparse.Namespace) -> int:
    from wyneos_core.licensing.keys import KeyFileError
    from wyneos_core.service.core import Service
    from wyneos_core.service.server import BindError, serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s %(message)s")
    _file_state_path(args)
    orchestrator = build(args, stdout_mode="none", replica=(args.replica_id, args.advertise_url))
    settings = _settings(args, orchestrator.config)
    try:
        service = Service(orchestrator, settings, interval=args.interval)
    except KeyFileError as exc:  # the orchestrator key beside the state file is unusable
        orchestrator.stop()
        print(f"wyneos serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cfg = orchestrator.config
    where = orchestrator.store.path if service.ha is not None else cfg.resolve(cfg["state"]["path"])

    def listening(url: str) -> None:
        if service.ha is not None and not service.ha.url:
            service.ha.url = url  # before the app starts the elector: the leader key names it
        print(f"wyneos serve: listening on {url} (dashboard {url}/, API docs {url}/docs); cluster "
              f"{cfg['cluster']!r}, {plural(len(orchestrator.registry), 'node')}, tick every {service.interval:g}s, "
              f"state in {where}" + (f", replica {service.ha.id}" if service.ha is not None else ""), flush=True)

    try:
        serve(service, log_level=args.log_level, on_listening=listening)
    except BindError as exc:
        service.stop()
        orchestrator.stop()
        print(f"wyneos serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wyneos serve: stopped after tick {orchestrator.tick_number}", flush=True)
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    from wyneos_core.loop import stop_on_signals
    from wyneos_core.service.agent import Agent, AgentError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    metadata = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"wyneos agent: --meta {item!r}: expected KEY=VALUE", file=sys.stderr)
            return EXIT_USAGE
        metadata[key] = value
    from wyneos_core.service.agent_metrics import MetricSource, MetricSourceError, parse_metric_flag

    try:
        source = MetricSource([parse_metric_flag(m) for m in args.metric], args.metrics_file) \
            if args.metric or args.metrics_file else None
    except MetricSourceError as exc:
        print(f"wyneos agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        agent = Agent(args.server, args.node, args.state_dir, token=args.token, interval=args.interval,
                      metadata=metadata, hook=args.hook, max_backoff=args.max_backoff, licence=args.licence,
                      orchestrator_key=args.orchestrator_key, hook_types=args.hook_type, timeout=args.timeout,
                      peer_port=None if args.init else args.peer_port, peer_host=args.peer_host,
                      peer_relay_rate=args.peer_relay_rate, peer_relay_burst=args.peer_relay_burst,
                      integrity_file=args.integrity_file, metrics=source)
        if args.init:
            print(agent.fingerprint)
            return EXIT_OK
        print(f"wyneos agent: node {args.node} key {agent.fingerprint}, server {args.server}"
              + (f", licence {args.licence}" if args.licence else ""), flush=True)
        stop = threading.Event()
        with stop_on_signals(stop):
            stats = agent.run(count=args.count, duration=args.duration, stop=stop)
    except AgentError as exc:
        print(f"wyneos agent: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"wyneos agent: sent {stats.sent}, accepted {stats.accepted}, refused {stats.refused}, "
          f"connection failures {stats.failures}, actions applied {len(stats.applied)}, "
          f"failed or ignored {len(stats.not_applied)}, refused {len(stats.refused_actions)}", flush=True)
    return EXIT_OK


def _key_path(args: argparse.Namespace):  # noqa: ANN202
    from wyneos_core.config import load_config
    from wyneos_core.service.orchestrator_key import key_path_for

    config = load_config(args.config)
    path = args.state or config["state"]["path"]
    if path == ":memory:":
        print("wyneos orchestrator-key: the state is ':memory:'; the key lives beside a state file",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return key_path_for(config.resolve(path))


def cmd_key_show(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from wyneos_core.licensing.keys import KeyFileError
    from wyneos_core.service.orchestrator_key import OrchestratorKey

    try:
        key = OrchestratorKey.load_or_create(_key_path(args))
    except KeyFileError as exc:
        print(f"wyneos orchestrator-key: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.pem:
        sys.stdout.write(key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
        return EXIT_OK
    print(f"key id       {key.key_id}\nfingerprint  {key.fingerprint}\nfile         {key.path}")
    for kid in key.keyring():
        if kid != key.key_id:
            print(f"previous     {kid} (still trusted; remove {key.path.name}.previous.pub to end the rotation)")
    return EXIT_OK


def cmd_key_rotate(args: argparse.Namespace) -> int:
    from wyneos_core.licensing.keys import KeyFileError
    from wyneos_core.service import signed_actions
    from wyneos_core.service.orchestrator_key import OrchestratorKey

    try:
        old = OrchestratorKey.load_or_create(_key_path(args))
        new = signed_actions.rotate(old)
    except (KeyFileError, OSError) as exc:
        print(f"wyneos orchestrator-key: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"rotated: new key {new.key_id} ({new.fingerprint}); the old key {old.key_id} signed the hand-over and "
          "stays trusted. Restart `wyneos serve` to sign with the new key.")
    return EXIT_OK


def cmd_key_retire(args: argparse.Namespace) -> int:
    import datetime
    import time

    from wyneos_core.licensing.keys import KeyFileError
    from wyneos_core.service.orchestrator_key import OrchestratorKey, retire

    when = time.time()
    if args.at is not None:
        try:
            when = float(args.at)
        except ValueError:
            try:
                parsed = datetime.datetime.fromisoformat(args.at)
            except ValueError:
                print(f"wyneos orchestrator-key retire: error: --at {args.at!r}: neither an ISO 8601 date and time "
                      "nor seconds since the epoch", file=sys.stderr)
                return EXIT_USAGE
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            when = parsed.timestamp()
    try:
        key = OrchestratorKey.load_or_create(_key_path(args))
        kid, at = retire(key, int(when * 1000))
    except (KeyFileError, OSError) as exc:
        print(f"wyneos orchestrator-key: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    stamp = datetime.datetime.fromtimestamp(at / 1000, datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"retired: key {kid} from {stamp}, signed by the current key {key.key_id}. Restart `wyneos serve`: agents "
          "then stop trusting it at that date (actions it signed are refused), and every key at once when you "
          f"delete {key.path.name}.previous.pub.")
    return EXIT_OK


def _store(args: argparse.Namespace):  # noqa: ANN202
    import wyneos_core.ha  # noqa: F401  (registers the etcd store backend)
    from wyneos_core.cli.common import use_store_url
    from wyneos_core.config import load_config
    from wyneos_core.store import open_state_store

    config = load_config(args.config)
    if args.state:
        config["state"]["path"] = args.state
    if getattr(args, "store", None):
        use_store_url(config, args.store)
    store = open_state_store(config)
    store.ensure_service_tables()
    if getattr(store, "backend", "sqlite") == "etcd":
        store.sealer = _etcd_sealer(config)
    return store


def _etcd_sealer(config: Any) -> Any:
    """The orchestrator key's sealer for enrolment data in etcd (keys, tokens and
    customers are signed with it); None when the key file is not here (then such data
    can be read, unchecked, but not written)."""
    from wyneos_core.ha.values import Sealer
    from wyneos_core.service.orchestrator_key import OrchestratorKey, key_path_for

    path = key_path_for(config.resolve(config["state"]["path"]))
    return Sealer.of(OrchestratorKey.load_or_create(path)) if path.exists() else None


def cmd_enrol_token(args: argparse.Namespace) -> int:
    from wyneos_core.registry import NODE_ID_PATTERN

    if args.verb != "create":
        from wyneos_core.cli.tokens import cmd_token_list, cmd_token_revoke

        return (cmd_token_list if args.verb == "list" else cmd_token_revoke)(args, _store(args))
    from wyneos_core.service.core import hash_token, new_token

    if args.node is not None and not NODE_ID_PATTERN.match(args.node):
        print(f"wyneos enrol token: --node {args.node!r} is not a valid node id", file=sys.stderr)
        return EXIT_USAGE
    if args.customer is not None and not (0 < len(args.customer) <= 256 and args.customer.isprintable()):
        print("wyneos enrol token: --customer must be 1-256 printable characters", file=sys.stderr)
        return EXIT_USAGE
    if args.uses < 1 or args.ttl <= 0:
        print("wyneos enrol token: --uses must be at least 1 and --ttl positive", file=sys.stderr)
        return EXIT_USAGE
    store = _store(args)
    token = new_token()
    now = time.time()
    store.add_enrol_token(hash_token(token), args.node, args.uses, now + args.ttl, now, customer=args.customer)
    store.close()
    print(token)
    return EXIT_OK


def cmd_enrol_list(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = store.node_keys()
    store.close()
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "public_key"} for r in rows], indent=2))
        return EXIT_OK
    for r in rows:
        when = datetime.fromtimestamp(r["enrolled_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        state = "revoked" if r["revoked_at"] is not None else "active"
        print(f"{r['node_id']:<24} {state:<8} {when}  {r['fingerprint']}")
    return EXIT_OK


def cmd_enrol_revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    done = store.revoke_node_key(args.node, time.time())
    store.close()
    if not done:
        print(f"wyneos enrol revoke: no active key for node {args.node!r}", file=sys.stderr)
        return EXIT_FAIL
    print(f"revoked the key of {args.node}")
    return EXIT_OK


def cmd_state_check(args: argparse.Namespace) -> int:
    """``wyneos state check``: exit 0 when the state file is sound, 1 (with one line per
    problem) when it is damaged; it is opened read only and never changed."""
    import sqlite3
    from pathlib import Path

    from wyneos_core.config import load_config
    from wyneos_core.store import StateStore

    config = load_config(args.config)
    if getattr(args, "store", None) or config["state"]["backend"] == "etcd":
        return _check_etcd(args)
    path = Path(config.resolve(args.state or config["state"]["path"]))
    if not path.is_file():
        print(f"{path}: no state file", file=sys.stderr)
        return EXIT_USAGE
    if path.stat().st_size == 0:
        print(f"{path}: damaged: the file is empty (0 bytes); restore a backup (docs/operations.md)")
        return EXIT_FAIL
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        store = StateStore(conn, str(path))
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        problems = ["not a WyneOS state file: no meta table"] if "meta" not in tables else store.check(
            full=not args.quick)
    except sqlite3.DatabaseError as exc:
        problems = [f"not a usable SQLite database: {exc}"]
    if problems:
        for line in problems[:200]:
            print(f"{path}: damaged: {line}")
        if len(problems) > 200:
            print(f"{path}: ... and {len(problems) - 200} more")
        print(f"{path}: {len(problems)} problem(s); restore a backup (docs/operations.md, Durable state and backups)")
        return EXIT_FAIL
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
              for t in ("nodes", "actions", "ticks")}
    conn.close()
    print(f"{path}: ok ({'quick_check' if args.quick else 'integrity_check'}, schema, {counts['nodes']} nodes, "
          f"{counts['actions']} actions, {counts['ticks']} ticks)")
    return EXIT_OK


def _check_etcd(args: argparse.Namespace) -> int:
    """``wyneos state check`` of a state in etcd: every value under the prefix decoded
    and checked (shape; keys, tokens and customers against the orchestrator key when
    it is here); exit 1 with one line per unusable key."""
    store = _store(args)
    try:
        problems = store.check()
        counts = {kind: len(store.client.get_prefix(store.prefix + kind + "/", keys_only=True))
                  for kind in ("nodes", "actions", "keys")}
    finally:
        store.close()
    where = store.path
    if problems:
        for line in problems[:200]:
            print(f"{where}: damaged: {line}")
        print(f"{where}: {len(problems)} problem(s); fix or delete those keys (docs/ha.md, Backups)")
        return EXIT_FAIL
    sealed = "signatures checked" if store.sealer is not None else \
        "signatures NOT checked: no orchestrator key beside state.path"
    print(f"{where}: ok (every value checked, {sealed}; {counts['nodes']} nodes, {counts['actions']} actions, "
          f"{counts['keys']} keys)")
    return EXIT_OK
