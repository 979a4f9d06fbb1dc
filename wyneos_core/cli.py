"""The ``wyneos`` command line.

Subcommands live in their own modules (``COMMANDS``); each module provides
``register(subparsers)`` which adds its parser and sets ``func`` to a function taking
the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import threading
from collections.abc import Sequence

from wyneos_core import __version__
from wyneos_core.wording import plural

__all__ = ["main", "COMMANDS"]

#: modules that add subcommands, in the order ``wyneos --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "wyneos_core.cli",  # run, tick, plugins
    "wyneos_core.cli_simulate",
    "wyneos_core.cli_predict",
    "wyneos_core.cli_licence",
    "wyneos_core.cli_service",
    "wyneos_core.cli_backup",
    "wyneos_core.cli_get",
    "wyneos_core.cli_relay",
    "wyneos_core.cli_rules",
    "wyneos_core.cli_enforcement",
    "wyneos_core.validate",
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: the demo cluster)")
    parser.add_argument("--disable", "-p", metavar="PLUGIN", action="append", default=[],
                        help="do not load this plugin (repeatable)")
    parser.add_argument("--only", metavar="PLUGIN", action="append", default=None,
                        help="load only these installed plugins (repeatable)")
    parser.add_argument("--trace", action="store_true", help="print every hook call to stderr")
    parser.add_argument("--state", metavar="FILE", help="SQLite state file (overrides state.path)")


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, got {text!r}")
    return value


def _output_options(parser: argparse.ArgumentParser) -> None:
    """``-q`` / ``-v``: how much the summary of each tick says (``report.stdout``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", dest="verbosity", action="store_const", const="quiet",
                       help="one line per tick")
    group.add_argument("--verbose", "-v", dest="verbosity", action="store_const", const="verbose",
                       help="every item of every node, every tick (default: what changed, grouped)")


def _stdout_mode(args: argparse.Namespace, default: str | None) -> str | None:
    """``report.stdout`` as the command line sets it (None: as the config says)."""
    if args.json:
        return "json"
    return getattr(args, "verbosity", None) or default


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


def build(args: argparse.Namespace, *, stdout_mode: str | None = None, store: bool = True,
          tolerate_broken_plugins: bool = False, replica: tuple[str | None, str | None] = (None, None)):
    """Load the config named by ``args`` and build an orchestrator from it."""
    from wyneos_core.config import load_config
    from wyneos_core.tick import Orchestrator

    config = load_config(args.config)
    plugins = config["plugins"]
    plugins["disable"] = list(dict.fromkeys([*plugins["disable"], *args.disable]))
    if args.only is not None:
        plugins["only"] = args.only
    if args.trace:
        plugins["trace"] = True
    if getattr(args, "state", None):
        config["state"]["path"] = args.state
    if getattr(args, "store", None):
        use_store_url(config, args.store)
    for name, value in zip(("replica_id", "advertise_url"), replica):
        if value:
            config["state"]["etcd"][name] = value
    if stdout_mode is not None:
        config["report"]["stdout"] = stdout_mode
    return Orchestrator(config, store=store, tolerate_broken_plugins=tolerate_broken_plugins)


def use_store_url(config, url: str) -> None:  # noqa: ANN001
    """``--store etcd://HOST:PORT[,HOST:PORT...]``: keep the state in etcd there."""
    from wyneos_core.config import ConfigError
    from wyneos_core.ha.etcd import parse_store_url

    try:
        endpoints = parse_store_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--store") from None
    config["state"]["backend"] = "etcd"
    config["state"]["etcd"]["endpoints"] = [f"{h}:{p}" for h, p in endpoints]


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
              f"state in {where}", flush=True)
    with stop_on_signals(stop):
        done = run(orchestrator, interval=interval, ticks=args.ticks, stop=stop)
    if not args.json:
        print(f"stopped after {done} tick(s); missed {orchestrator.missed_ticks}", flush=True)
    return EXIT_OK


def cmd_tick(args: argparse.Namespace) -> int:
    orchestrator = build(args, stdout_mode=_stdout_mode(args, "summary"))
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wyneos", description="Keep a fleet of nodes governed, healthy and licensed.")
    p.add_argument("--version", action="version", version=f"wyneos-core {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(sub)
    return p


def _printable(text: str) -> str:
    """A message naming what a user file held, printable whatever it held (lone surrogates)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    import sqlite3

    from wyneos_core.config import ConfigError
    from wyneos_core.plugins import PluginLoadError
    from wyneos_core.store import StoreError
    from wyneos_core.yamlio import LocatedError

    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "func", None):
        p.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (ConfigError, LocatedError) as exc:
        for error in getattr(exc, "errors", None) or [exc]:
            print(_printable(f"wyneos: error: {LocatedError.__str__(error)}"), file=sys.stderr)
        return EXIT_USAGE
    except (PluginLoadError, StoreError) as exc:
        print(f"wyneos: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.DatabaseError as exc:  # a state file damaged where no check looked
        print(f"wyneos: error: the state file cannot be read: {exc} (check it with `wyneos state check`; "
              "restore a backup, docs/operations.md)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output has gone (`wyneos ... | head`): end quietly
        from wyneos_core.builtin.report import close_stdout_quietly

        close_stdout_quietly()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
