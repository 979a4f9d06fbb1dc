"""``wyneos run``, ``wyneos tick`` and ``wyneos plugins``: the orchestrator from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from wyneos_core import __version__
from wyneos_core.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, _common, _output_options, _seconds, _stdout_mode, build
from wyneos_core.wording import plural

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the orchestrator tick by tick")
    _common(p)
    p.add_argument("--interval", type=_seconds, help="seconds between ticks (overrides tick.interval)")
    p.add_argument("--ticks", type=int, help="stop after N ticks (default: run until interrupted)")
    p.add_argument("--json", action="store_true", help="print each tick report as one JSON line")
    _output_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tick", help="run one tick and print its report")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the full JSON report (default: summary)")
    _output_options(p)
    p.set_defaults(func=cmd_tick)

    p = sub.add_parser("plugins", help="list plugins: name, version, origin, hooks")
    _common(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_plugins)


def cmd_run(args: argparse.Namespace) -> int:
    from wyneos_core.loop import run, stop_on_signals

    orchestrator = build(args, stdout_mode=_stdout_mode(args, None))
    interval = args.interval if args.interval is not None else orchestrator.config["tick"]["interval"]
    if args.ticks is not None and args.ticks < 1:
        print("wyneos run: --ticks must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    if not args.json:
        cfg = orchestrator.config
        path = cfg["state"]["path"]
        where = "memory only (state.path ':memory:')" if path == ":memory:" else str(cfg.resolve(path))
        print(f"wyneos {__version__}: cluster {cfg['cluster']!r} from {cfg.source}, "
              f"{plural(len(orchestrator.registry), 'node')}, tick every {interval:g}s, "
              f"state in {where}{_installed(orchestrator)}", flush=True)
    with stop_on_signals(stop):
        done = run(orchestrator, interval=interval, ticks=args.ticks, stop=stop)
    if not args.json:
        print(f"stopped after {done} tick(s); missed {orchestrator.missed_ticks}", flush=True)
    return EXIT_OK


def _installed(orchestrator) -> str:  # noqa: ANN001
    """"; installed plugins: NAME VERSION, ..." when plugins installed through entry points
    take part (they change what the demo and any config do), else ""."""
    names = orchestrator.pm.installed_plugins()
    return f"; installed plugins: {', '.join(names)}" if names else ""


def cmd_tick(args: argparse.Namespace) -> int:
    orchestrator = build(args, stdout_mode=_stdout_mode(args, "summary"))
    if not args.json and _installed(orchestrator):
        print(_installed(orchestrator).removeprefix("; "), flush=True)
    with orchestrator:
        orchestrator.tick()
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from wyneos_core.plugins import PluginInfo

    # one broken installed plugin does not hide the others: it is listed with what is wrong
    orchestrator = build(args, store=False, tolerate_broken_plugins=True)
    infos = orchestrator.pm.plugin_infos()
    broken = orchestrator.broken_plugins
    if args.json:
        print(json.dumps([*(i.to_dict() for i in infos),
                          *({"name": name, "version": "-", "origin": "broken", "hooks": [], "module": "",
                             "error": why} for name, why in sorted(broken.items()))], indent=2))
        return EXIT_FAIL if broken else EXIT_OK
    width = max(len(i.name) for i in [*infos, *(PluginInfo(n, "", "", [], "") for n in broken)])
    for i in infos:
        print(f"{i.name:<{width}}  {i.version:<8}  {i.origin}")
        if i.hooks:
            print(f"{'':<{width}}  hooks: {', '.join(i.hooks)}")
    for name, why in sorted(broken.items()):
        print(f"{name:<{width}}  {'-':<8}  BROKEN: {why}")
        print(f"{'':<{width}}  not loaded; `wyneos run` refuses to start while it is installed and enabled: "
              f"uninstall or fix it, or disable it (plugins.disable: [{name}], or --disable {name})")
    return EXIT_FAIL if broken else EXIT_OK
