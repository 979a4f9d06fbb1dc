"""The ``wyneos`` command line: ``program`` holds the parser and ``main``, one module per
group of subcommands (``run``, ``simulate``, ``licence``, ``service``, ``relay``,
``rules``), and ``common`` what they share."""

from wyneos_core.cli.program import COMMANDS, main, parser

__all__ = ["COMMANDS", "main", "parser"]
