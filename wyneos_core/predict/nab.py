"""Run the orchestrator's detector over the Numenta Anomaly Benchmark's data files.

Every data file ``CATEGORY/NAME.csv`` (columns ``timestamp,value``) becomes one series
of the fleet; all series are fed side by side, one sample per step, to the same
``detector.Columns.step`` the tick uses, with the one default configuration. The
results are written where NAB's scorer reads them:
``OUT/wyneos/CATEGORY/wyneos_NAME.csv`` with ``timestamp,value,anomaly_score``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import numpy as np

from wyneos_core.predict import detector

DETECTOR_NAME: Final = "wyneos"
MAX_FILE_BYTES: Final = 64 * 1024 * 1024
MAX_ROWS: Final = 2_000_000
MAX_FILES: Final = 10_000


class NabError(ValueError):
    """A data directory or file NAB's layout does not allow (the message names it)."""


@dataclass
class Series:
    name: str  # CATEGORY/NAME.csv
    stamps: list[str]
    raw_values: list[str]
    times: np.ndarray
    values: np.ndarray


def find_files(data_dir: Path) -> list[tuple[str, Path]]:
    """``(CATEGORY/NAME.csv, path)`` of every data file, sorted; ``data_dir`` is NAB's
    root (holding ``data/``) or its ``data/`` directory itself."""
    root = data_dir / "data" if (data_dir / "data").is_dir() else data_dir
    if not root.is_dir():
        raise NabError(f"{data_dir}: not a directory")
    found = []
    for category in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(category.glob("*.csv")):
            found.append((f"{category.name}/{path.name}", path))
            if len(found) > MAX_FILES:
                raise NabError(f"{root}: more than {MAX_FILES} data files")
    if not found:
        raise NabError(f"{root}: no CATEGORY/NAME.csv data files")
    return found


def _epoch(text: str) -> float:
    stamp = datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def read_series(name: str, path: Path) -> Series:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise NabError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} allowed")
    stamps: list[str] = []
    raw: list[str] = []
    times: list[float] = []
    values: list[float] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or "timestamp" not in header or "value" not in header:
            raise NabError(f"{path}: line 1: the header must name the columns timestamp and value")
        at_t, at_v = header.index("timestamp"), header.index("value")
        for line, row in enumerate(reader, start=2):
            if len(stamps) >= MAX_ROWS:
                raise NabError(f"{path}: more than {MAX_ROWS} rows")
            try:
                when = _epoch(row[at_t])
                value = float(row[at_v])
            except (IndexError, ValueError) as exc:
                raise NabError(f"{path}: line {line}: expected timestamp,value: {exc}") from None
            if not math.isfinite(value):
                raise NabError(f"{path}: line {line}: value {row[at_v]!r} is not a finite number")
            stamps.append(row[at_t])
            raw.append(row[at_v])
            times.append(when)
            values.append(value)
    return Series(name, stamps, raw, np.array(times), np.array(values))


def score_files(series: list[Series], params: detector.Params | None = None) -> list[np.ndarray]:
    return detector.run_series([s.values for s in series], [s.times for s in series], params)


def write_results(out_dir: Path, series: list[Series], scores: list[np.ndarray]) -> list[Path]:
    written = []
    for one, score in zip(series, scores):
        category, name = one.name.split("/")
        target = out_dir / DETECTOR_NAME / category / f"{DETECTOR_NAME}_{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["timestamp", "value", "anomaly_score"])
            for stamp, value, s in zip(one.stamps, one.raw_values, score):
                writer.writerow([stamp, value, f"{s:.6f}"])
        partial.replace(target)
        written.append(target)
    return written


def run(data_dir: Path, out_dir: Path) -> list[Path]:
    """Score every data file under ``data_dir``; return the result files written."""
    series = [read_series(name, path) for name, path in find_files(data_dir)]
    return write_results(out_dir, series, score_files(series))
