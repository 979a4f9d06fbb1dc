"""``wyneos simulate``: run a fault-injection scenario against the real tick.

    wyneos simulate builtin:single-crash --nodes 500 --seed 7 --out sim-out

Prints the summary, writes ``summary.json``, ``summary.txt``, ``timeline.csv`` and
``plot.png`` (or ``.svg``) into ``--out``, and exits 1 when an expectation of the
scenario was not met (2 for a scenario that cannot be used).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register", "cmd_simulate"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a fault-injection scenario against a simulated cluster",
                       description="Run the real orchestrator tick against a simulated cluster with the faults "
                                   "of a YAML scenario; print and write the summary and a plot.")
    p.add_argument("scenario", nargs="?", help="scenario file, or builtin:NAME for a shipped one")
    p.add_argument("--list", action="store_true", help="list the shipped scenarios and exit")
    p.add_argument("--nodes", "-n", type=_count(1_000_000), help="cluster size (overrides the scenario; 1 to 1000000)")
    p.add_argument("--ticks", "-t", type=_count(100_000), help="ticks to run (overrides the scenario; 1 to 100000)")
    p.add_argument("--seed", "-s", type=int, help="seed of every random choice (overrides the scenario)")
    p.add_argument("--out", "-o", metavar="DIR", default="sim-out", help="output directory (default: sim-out)")
    p.add_argument("--format", choices=("png", "svg"), default="png", help="plot format (default: png)")
    p.add_argument("--state", metavar="FILE", help="keep the orchestrator's SQLite state in FILE")
    p.add_argument("--no-plugins", dest="plugins", action="store_false",
                   help="do not load the installed plugins (by default they run, as in `wyneos run`)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--compare-consensus", action="store_true",
                   help="run the scenario a second time with consensus the other way round and report false "
                        "isolations and detection latency of both side by side")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar (default: when stderr is a terminal or the run is long)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_simulate)


def _count(most: int) -> Any:
    """An option value between 1 and ``most`` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"must be between 1 and {most}, got {value}")
        return value

    return parse


def _list(builtin: dict) -> int:
    try:
        for name, path in sorted(builtin.items()):
            first = next((line for line in path.read_text().splitlines() if line.startswith("description:")), "")
            print(f"builtin:{name:<18} {first.partition(':')[2].strip()}")
        sys.stdout.flush()
    except BrokenPipeError:  # `wyneos simulate --list | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from wyneos_core.simulate import builtin_scenarios, load_scenario, resolve_scenario, simulate, summary_text
    from wyneos_core.simulate.runner import write_outputs

    if args.list:
        return _list(builtin_scenarios())
    if not args.scenario:
        print("wyneos simulate: give a scenario file or builtin:NAME (see --list)", file=sys.stderr)
        return 2
    scenario = load_scenario(resolve_scenario(args.scenario))
    scenario = scenario.with_overrides(nodes=args.nodes, ticks=args.ticks, seed=args.seed)
    progress = args.progress
    if progress is None:
        progress = sys.stderr.isatty() or scenario.nodes * scenario.ticks >= 200_000
    result = simulate(scenario, progress=progress, state_path=args.state, plugins=args.plugins)
    if args.compare_consensus:
        from wyneos_core.simulate.runner import compare_consensus

        result.summary["consensus_comparison"] = compare_consensus(result, progress=progress, plugins=args.plugins)
    paths = write_outputs(result, args.out, args.format)
    if args.json:
        print(json.dumps(result.summary, indent=1))
    else:
        print(summary_text(result.summary))
        print(f"wrote {paths['summary_json']}, {paths['timeline']}, {paths['plot']}")
    return 1 if result.failures else 0
