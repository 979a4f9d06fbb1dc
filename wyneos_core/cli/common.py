"""What the subcommands share: exit codes, the common options, and ``build`` (an
orchestrator from the parsed arguments, with the demo cluster registered when the config
enables it)."""

from __future__ import annotations

import argparse
import math

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "build", "subcommands", "use_store_url"]

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


def build(args: argparse.Namespace, *, stdout_mode: str | None = None, store: bool = True,
          tolerate_broken_plugins: bool = False, replica: tuple[str | None, str | None] = (None, None)):
    """Load the config named by ``args`` and build an orchestrator from it."""
    import wyneos_core.ha  # noqa: F401  (registers the etcd store backend)
    from wyneos_core.config import load_config
    from wyneos_core.demo import demo_plugins
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
    return Orchestrator(config, plugins=demo_plugins(config), store=store,
                        tolerate_broken_plugins=tolerate_broken_plugins)


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


def subcommands(sub: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:
    """The sub-command group of the command ``name`` another module registered, for a
    module that adds actions to it (``state backup`` to ``state``)."""
    parser = sub.choices[name]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
