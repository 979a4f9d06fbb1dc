"""``wyneos predict nab``: the orchestrator's detector over the Numenta Anomaly Benchmark.

    wyneos predict nab NAB_DIR --out RESULTS_DIR

Runs the detector the predict step uses (the same code, one configuration for every
file, online: each score from that sample and the ones before it) over every data file
``CATEGORY/NAME.csv`` under ``NAB_DIR`` (NAB's root or its ``data/`` directory) and writes
``RESULTS_DIR/wyneos/CATEGORY/wyneos_NAME.csv`` (``timestamp,value,anomaly_score``), the
layout NAB's scorer reads. ``bench/nab_score.py`` scores them (docs/prediction.md).
Exit status 2 when a data file cannot be read (the message names the file and line).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run the predictive detectors offline (NAB)",
                       description="Run the orchestrator's online detectors offline.")
    inner = p.add_subparsers(dest="predict_command", metavar="SUBCOMMAND", required=True)
    q = inner.add_parser("nab", help="score the Numenta Anomaly Benchmark's data files",
                         description="Write an anomaly score for every row of every NAB data file, in the "
                                     "layout NAB's scorer reads: OUT/wyneos/CATEGORY/wyneos_NAME.csv.")
    q.add_argument("data_dir", metavar="DATA_DIR", help="NAB's directory (holding data/) or its data/ directory")
    q.add_argument("--out", "-o", metavar="RESULTS_DIR", required=True, help="where to write the results")
    q.set_defaults(func=cmd_nab)


def cmd_nab(args: argparse.Namespace) -> int:
    from wyneos_core.predict import nab

    started = time.perf_counter()
    try:
        series = [nab.read_series(name, path) for name, path in nab.find_files(Path(args.data_dir))]
    except (nab.NabError, OSError, UnicodeDecodeError) as exc:
        print(f"wyneos predict nab: {exc}", file=sys.stderr)
        return 2
    try:
        written = nab.write_results(Path(args.out), series, nab.score_files(series))
    except OSError as exc:
        print(f"wyneos predict nab: cannot write the results: {exc}", file=sys.stderr)
        return 2
    rows = sum(len(s.values) for s in series)
    print(f"{len(written)} data files, {rows} rows scored in {time.perf_counter() - started:.1f} s; "
          f"results in {Path(args.out) / nab.DETECTOR_NAME}")
    return 0
