"""The ``wyneos`` program: its parser and ``main``.

Subcommands live in their own modules (``COMMANDS``); each module provides
``register(subparsers)`` which adds its parser and sets ``func`` to a function taking
the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from wyneos_core import __version__
from wyneos_core.cli.common import EXIT_USAGE

__all__ = ["COMMANDS", "main", "parser"]

#: modules that add subcommands, in the order ``wyneos --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "wyneos_core.cli.run",  # run, tick, plugins
    "wyneos_core.cli.simulate",
    "wyneos_core.cli.predict",
    "wyneos_core.cli.drift",
    "wyneos_core.cli.licence",
    "wyneos_core.cli.licences",  # licence list, renew
    "wyneos_core.cli.service",
    "wyneos_core.cli.backup",
    "wyneos_core.cli.get",
    "wyneos_core.cli.relay",
    "wyneos_core.cli.rules",
    "wyneos_core.cli.enforcement",
    "wyneos_core.validate",
)


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

