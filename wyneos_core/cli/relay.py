"""``wyneos relay``: a batching relay in front of an orchestrator (``wyneos_core.service.relay``)."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["register"]

EXIT_OK, EXIT_USAGE = 0, 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relay", help="relay agents' heartbeats to the orchestrator in batches (holds no key)")
    p.add_argument("--upstream", required=True, metavar="URL", help="the orchestrator (or the next relay)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8421, help="port to listen on (0: any free port; default 8421)")
    p.add_argument("--batch", type=int, default=1000, help="most heartbeats per forwarded batch (1-1000)")
    p.add_argument("--flush", type=float, default=0.05, help="seconds a batch waits to fill (default 0.05)")
    p.add_argument("--max-pending", type=int, default=100_000, help="most heartbeats waiting (then 503)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds one upstream request may take in all, its answer included (default 10)")
    p.add_argument("--max-connections", type=int, default=4096,
                   help="connections kept; silent and idle ones are shed first (default 4096)")
    p.add_argument("--max-header-bytes", type=int, default=32 * 1024, help="largest request head (default 32768)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a whole request head (default 10)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body has to arrive in full (default 30)")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="seconds an idle connection is kept (default 30)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_relay)


def cmd_relay(args: argparse.Namespace) -> int:
    from wyneos_core.service.relay import Relay, RelayError, check_bind, relay_config
    from wyneos_core.service.server import BindError, bind
    from wyneos_core.service.server import _raise_open_files as raise_open_files
    from wyneos_core.service.server import _Server as Server  # exits 0 on SIGTERM, as wyneos serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s %(message)s")
    try:
        relay = Relay(args.upstream, batch=args.batch, flush=args.flush, max_pending=args.max_pending,
                      timeout=args.timeout)
        if not (args.max_connections >= 1 and args.max_header_bytes >= 1024 and args.header_timeout > 0
                and args.body_timeout > 0 and args.idle_timeout > 0):
            raise RelayError("--max-connections must be at least 1, --max-header-bytes at least 1024, the timeouts "
                             "above 0")
        check_bind(args.host, args.upstream)
        raise_open_files(args.max_connections + 256)  # each connection is a descriptor, as for serve
        sock = bind(args.host, args.port)
    except (RelayError, BindError) as exc:
        print(f"wyneos relay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = sock.getsockname()[:2]
    print(f"wyneos relay: listening on http://{host}:{port}, forwarding to {args.upstream} in batches of up to "
          f"{args.batch}", flush=True)
    server = Server(relay_config(relay, log_level=args.log_level, max_header_bytes=args.max_header_bytes,
                                 header_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
                                 body_timeout=args.body_timeout, max_connections=args.max_connections))
    server.run(sockets=[sock])
    print(f"wyneos relay: stopped after forwarding {relay.forwarded} heartbeats in {relay.batches} batches",
          flush=True)
    return EXIT_OK
