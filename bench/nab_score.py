"""Score anomaly detector results with the Numenta Anomaly Benchmark's published scoring.

The rules (NAB's paper and its scorer, written again here in numpy):

- Per data file, the first ``min(floor(0.15 * rows), 750)`` rows are probationary:
  nothing there is scored.
- Each labelled anomaly window ``[start, end]`` (from ``combined_windows.json``) gives
  every row inside it the weight ``tp * S(-(end_i - i + 1) / width) / S(-1)`` where
  ``S(x) = 2 / (1 + exp(5x)) - 1`` is the scaled sigmoid (``S(x) = -1`` for ``x >= 3``):
  the earliest row of a window is worth exactly ``tp``, the last one almost nothing.
- A row outside every window weighs ``fp * S((i - prev_end) / (prev_width - 1))``
  relative to the last window before it, or ``-fp`` when no window came before.
- A detection is a row whose ``anomaly_score`` is at or above the threshold. A window
  contributes the largest weight among its detected rows (its first detection), or
  ``-fn`` if none of its rows is detected; every detected row outside the windows adds
  its (negative) weight.
- Per profile, the threshold that maximises the corpus total is searched over every
  distinct score; the total at that threshold is normalised:
  ``100 * (raw - null) / (perfect - null)``, the null detector never firing and the
  perfect one firing exactly at the first row of every window.

    python bench/nab_score.py DATA_DIR RESULTS_DIR [--detector wyneos] [--json FILE]

``DATA_DIR`` is the NAB tree (``data/``, ``labels/``, ``config/profiles.json``);
``RESULTS_DIR/DETECTOR/CATEGORY/DETECTOR_NAME.csv`` are the detector's results.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROBATION_FRACTION = 0.15
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    position = np.asarray(position, dtype=np.float64)
    out = 2.0 / (1.0 + np.exp(np.clip(5.0 * position, -700, 700))) - 1.0
    return np.where(position >= 3.0, -1.0, out)


MAX_TP = float(scaled_sigmoid(np.array(-1.0)))


@dataclass
class ScoredFile:
    """One data file prepared for scoring: per scorable row, its window and weights."""

    name: str
    window: np.ndarray  # window number per scorable row, -1 outside every window
    in_window: np.ndarray  # unweighted TP sigmoid per scorable row (inside windows)
    after_window: np.ndarray  # unweighted FP sigmoid per scorable row (outside windows)
    first_rows: np.ndarray  # scorable-row index of every window's first scorable row
    probation: int
    rows: int


def probation_length(rows: int) -> int:
    return int(min(math.floor(PROBATION_FRACTION * rows), PROBATION_FRACTION * 5000))


def prepare(name: str, timestamps: np.ndarray, windows: list[tuple[np.datetime64, np.datetime64]]) -> ScoredFile:
    rows = len(timestamps)
    window = np.full(rows, -1, dtype=np.int64)
    in_window = np.zeros(rows)
    after_window = np.full(rows, -1.0)
    index = np.arange(rows)
    prev_end = None
    prev_width = None
    cursor = 0
    for number, (start, end) in enumerate(windows):
        left = int(np.searchsorted(timestamps, start, side="left"))
        right = int(np.searchsorted(timestamps, end, side="right")) - 1
        if left >= rows or right < left:
            raise ValueError(f"{name}: window {number} [{start}, {end}] matches no rows")
        if prev_end is not None:
            span = slice(cursor, left)
            after_window[span] = scaled_sigmoid((index[span] - prev_end) / (prev_width - 1.0))
        width = right - left + 1.0
        span = slice(left, right + 1)
        window[span] = number
        in_window[span] = scaled_sigmoid(-(right - index[span] + 1.0) / width) / MAX_TP
        prev_end, prev_width, cursor = right, width, right + 1
    if prev_end is not None:
        span = slice(cursor, rows)
        after_window[span] = scaled_sigmoid((index[span] - prev_end) / (prev_width - 1.0))
    probation = probation_length(rows)
    keep = slice(probation, rows)
    kept_window = window[keep]
    first_rows = np.array([np.flatnonzero(kept_window == w)[0] for w in np.unique(kept_window[kept_window >= 0])],
                          dtype=np.int64)
    return ScoredFile(name, kept_window, in_window[keep], after_window[keep], first_rows, probation, rows)


def read_timestamps(path: Path) -> np.ndarray:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        column = header.index("timestamp")
        return np.array([row[column] for row in reader], dtype="datetime64[s]")


def read_scores(path: Path, rows: int) -> np.ndarray:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if "anomaly_score" not in header:
            raise ValueError(f"{path}: no anomaly_score column")
        column = header.index("anomaly_score")
        scores = np.array([float(row[column]) for row in reader])
    if len(scores) != rows:
        raise ValueError(f"{path}: {len(scores)} rows, the data file has {rows}")
    return scores


def load_corpus(data_dir: Path) -> list[ScoredFile]:
    windows = json.loads((data_dir / "labels" / "combined_windows.json").read_text())
    files = []
    for name in sorted(windows):
        stamps = read_timestamps(data_dir / "data" / name)
        limits = [(np.datetime64(a.replace(" ", "T")[:19]), np.datetime64(b.replace(" ", "T")[:19]))
                  for a, b in windows[name]]
        files.append(prepare(name, stamps, limits))
    return files


def profile_weights(data_dir: Path) -> dict[str, dict[str, float]]:
    profiles = json.loads((data_dir / "config" / "profiles.json").read_text())
    return {name: profiles[name]["CostMatrix"] for name in PROFILES}


def sweep(files: list[ScoredFile], scores: list[np.ndarray], cost: dict[str, float]) -> tuple[float, float]:
    """Best (threshold, raw score) over every distinct score of the whole corpus."""
    tp, fp, fn = cost["tpWeight"], cost["fpWeight"], cost["fnWeight"]
    all_scores, weight, group = [], [], []
    groups = 0
    for scored, raw in zip(files, scores):
        kept = np.asarray(raw, dtype=np.float64)[scored.probation:]
        inside = scored.window >= 0
        all_scores.append(kept)
        weight.append(np.where(inside, scored.in_window * tp, scored.after_window * fp))
        group.append(np.where(inside, scored.window + groups, -1))
        groups += int(scored.window.max(initial=-1)) + 1
    s = np.concatenate(all_scores)
    w = np.concatenate(weight)
    g = np.concatenate(group)
    order = np.argsort(-s, kind="stable")
    s, w, g = s[order], w[order], g[order]
    delta = np.where(g < 0, w, 0.0)
    # inside windows: each row adds how much it raises its window's best weight so far
    in_rows = np.flatnonzero(g >= 0)
    if len(in_rows):
        wg = g[in_rows]
        by_group = np.argsort(wg, kind="stable")
        rows_sorted = in_rows[by_group]
        groups_sorted = wg[by_group]
        values = w[rows_sorted]
        starts = np.flatnonzero(np.r_[True, groups_sorted[1:] != groups_sorted[:-1]])
        best = np.empty_like(values)
        for a, b in zip(starts, np.r_[starts[1:], len(values)]):
            best[a:b] = np.maximum.accumulate(np.maximum(values[a:b], -fn))
        previous = np.empty_like(best)
        previous[:] = -fn
        same = np.r_[False, groups_sorted[1:] == groups_sorted[:-1]]
        previous[1:][same[1:]] = best[:-1][same[1:]]
        delta[rows_sorted] = best - previous
    windows_total = int(len(np.unique(g[g >= 0])))
    total = -windows_total * fn + np.cumsum(delta)
    last_of_score = np.r_[s[1:] != s[:-1], True]
    candidates = total[last_of_score]
    thresholds = s[last_of_score]
    best_index = int(np.argmax(candidates))
    nothing = -windows_total * fn
    if nothing >= candidates[best_index]:
        return 1.1, nothing
    return float(thresholds[best_index]), float(candidates[best_index])


def score_at(scored: ScoredFile, raw: np.ndarray, threshold: float, cost: dict[str, float]) -> float:
    kept = np.asarray(raw, dtype=np.float64)[scored.probation:]
    hit = kept >= threshold
    inside = scored.window >= 0
    total = float(np.sum(scored.after_window[hit & ~inside]) * cost["fpWeight"])
    for number in np.unique(scored.window[inside]):
        rows = (scored.window == number) & hit
        total += float(scored.in_window[rows].max() * cost["tpWeight"]) if rows.any() else -cost["fnWeight"]
    return total


def perfect_scores(files: list[ScoredFile]) -> list[np.ndarray]:
    out = []
    for scored in files:
        raw = np.zeros(scored.rows)
        raw[scored.probation + scored.first_rows] = 1.0
        out.append(raw)
    return out


def score_corpus(files: list[ScoredFile], scores: list[np.ndarray], profiles: dict[str, dict[str, float]]) -> dict:
    results = {}
    for name, cost in profiles.items():
        threshold, raw = sweep(files, scores, cost)
        null = sweep(files, [np.zeros(f.rows) for f in files], cost)[1]
        perfect = sweep(files, perfect_scores(files), cost)[1]
        per_file = {f.name: score_at(f, s, threshold, cost) for f, s in zip(files, scores)}
        results[name] = {
            "score": round(100.0 * (raw - null) / (perfect - null), 2),
            "threshold": threshold,
            "raw": raw,
            "null": null,
            "perfect": perfect,
            "per_file": per_file,
        }
    return results


def load_results(files: list[ScoredFile], results_dir: Path, detector: str) -> list[np.ndarray]:
    out = []
    for scored in files:
        category, name = scored.name.split("/")
        out.append(read_scores(results_dir / detector / category / f"{detector}_{name}", scored.rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--detector", default="wyneos")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    files = load_corpus(args.data_dir)
    results = score_corpus(files, load_results(files, args.results_dir, args.detector),
                           profile_weights(args.data_dir))
    print(f"{'profile':<22} {'score':>7} {'threshold':>10} {'raw':>9} {'null':>8} {'perfect':>8}")
    for name, row in results.items():
        print(f"{name:<22} {row['score']:7.2f} {row['threshold']:10.5f} {row['raw']:9.3f} "
              f"{row['null']:8.2f} {row['perfect']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps({k: {x: y for x, y in v.items() if x != "per_file"}
                                         for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
