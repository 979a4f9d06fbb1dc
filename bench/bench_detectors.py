"""Benchmark: the builtin detector against candidates from river, statsmodels and ruptures.

Every detector scores every data file of a NAB tree causally (a point's score uses only
the points before it and itself) with one configuration for all files; the scores are
scored with NAB's published scoring (``bench/nab_score.py``: standard, low-FP and
low-FN profiles), and the cost is measured per point (wall time over all points, one
core) and per series in memory (the state a node's metric would keep).

Candidates (library defaults where they have them, chosen before seeing a score):

- ``wyneos``: the builtin (``wyneos_core.predict.detector``), all series side by side.
- ``wyneos-daily``: the same with every series ``seasonal: daily``.
- ``river-hst``: river's ``HalfSpaceTrees`` (10 trees, height 8, window 250) after its
  online ``MinMaxScaler``; ``score_one`` before ``learn_one``.
- ``river-holt``: river's ``HoltWinters`` (alpha 0.3, beta 0.1, no season): the one-step
  forecast's error, in units of its running mean absolute error, mapped by
  ``1 - exp(-z / 3)`` (the residual score below).
- ``statsmodels-holt``: statsmodels' ``ExponentialSmoothing`` (additive trend) fitted
  on each file's probationary rows only (the rows NAB does not score), its parameters
  then frozen and its one-step forecasts over the file (``fittedvalues``: each made
  before its row) scored by the same residual score. Refitting as data arrives would
  cost a fit per point.
- ``NAME+episodes``: each library candidate's score passed through the builtin's own
  later stages (``episodes``: its likelihood and one finding per episode), so that the
  comparison is of the raw signal, not of the post-processing.
- ``ruptures-window``: ruptures' ``Window`` change score (model ``l2``, width 60),
  delayed by half its width so that it uses no later point, divided by its running mean
  and mapped like the residual score. (``Pelt``/``Binseg`` segment a whole series: not
  online.)

Memory per series: the builtin's columns are 128 bytes; for an object-per-series
library it is the deep size of one series' detector object after the file (Python
objects, dicts, lists and numpy arrays walked), which is what a fleet would keep per
node and metric.

    pip install -e '.[bench]'          # river, statsmodels, ruptures
    python bench/bench_detectors.py [NAB_DIR] [--detectors wyneos,river-hst,...] [--json FILE]

``NAB_DIR`` defaults to the repository's test copy (tests/data/nab, three files); give
the full NAB tree (``data/``, ``labels/``, ``config/``) for the real comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import nab_score  # noqa: E402

from wyneos_core.predict import detector, nab  # noqa: E402

LEARN = 100  # points each candidate only learns from (the builtin's own learning period)


def residual_score(errors: np.ndarray, learn: int = LEARN) -> np.ndarray:
    """``1 - exp(-z / 3)`` with ``z`` = |error| over the mean |error| of the points before
    (0 while learning): causal, scale-free, in [0, 1)."""
    size = np.abs(np.nan_to_num(errors, nan=0.0))
    before = np.concatenate([[0.0], np.cumsum(size)[:-1]]) / np.maximum(np.arange(len(size)), 1)
    z = size / (before + 1e-12)
    out = 1.0 - np.exp(-z / 3.0)
    out[:learn] = 0.0
    return out


def episodes(raw: np.ndarray, learn: int = LEARN, quiet: int = 150) -> np.ndarray:
    """The builtin's own stages after its raw surprise, for a candidate's raw score: the
    score smoothed (alpha 0.1), its likelihood against its running mean and variance
    (``-log10`` of the normal tail over 5), the learning period, and one finding per
    episode (after a score of 0.5 the next ``quiet`` points score 0). Causal."""
    out = np.zeros(len(raw))
    surprise = mean = var = 0.0
    hold = 0
    for i, r in enumerate(np.nan_to_num(raw).tolist()):
        surprise += 0.1 * (r - surprise)
        d = surprise - mean
        z = max(0.0, d / math.sqrt(var + 1e-6))
        score = 1.0 if z > 5.0 else min(1.0, -math.log10(0.5 * math.erfc(z / math.sqrt(2.0))) / 5.0)
        warm = max(0.0005, 1.0 / (i + 1))
        var += warm * (d * d - var)
        mean += warm * d
        if i <= learn or hold > 0:
            hold = max(0, hold - 1)
            score = 0.0
        elif score >= 0.5:
            hold = quiet
        out[i] = score
    return out


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and everything it holds (objects, containers, numpy arrays)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__"):
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return sys.getsizeof(obj) + (obj.nbytes if obj.base is None else 0)
    total = sys.getsizeof(obj)
    if isinstance(obj, dict):
        total += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset, deque)):
        total += sum(deep_size(x, seen) for x in obj)
    if hasattr(obj, "__dict__"):
        total += deep_size(vars(obj), seen)
    for name in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, name):
            total += deep_size(getattr(obj, name), seen)
    return total


# -- the candidates: each returns (scores per file, bytes per series) ----------------------------

def run_wyneos(series: list[nab.Series], daily: bool = False) -> tuple[list[np.ndarray], float]:
    scores = detector.run_series([s.values for s in series], [s.times for s in series],
                                 daily=[daily] * len(series))
    return scores, float(detector.BYTES_PER_SERIES)


def _per_series(series: list[nab.Series], make: Callable[[], object],
                one: Callable[[object, float], float]) -> tuple[list[np.ndarray], float]:
    out, sizes = [], []
    for s in series:
        model = make()
        out.append(np.array([one(model, float(v)) for v in s.values]))
        sizes.append(deep_size(model))
    return out, float(np.median(sizes))


def run_river_hst(series: list[nab.Series]) -> tuple[list[np.ndarray], float]:
    from river import anomaly, compose, preprocessing

    def make() -> object:
        return compose.Pipeline(preprocessing.MinMaxScaler(),
                                anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=42))

    def one(model, value: float) -> float:
        x = {"value": value}
        score = model.score_one(x)
        model.learn_one(x)
        return score

    scores, size = _per_series(series, make, one)
    for s in scores:
        s[:LEARN] = 0.0
    return scores, size


def run_river_holt(series: list[nab.Series]) -> tuple[list[np.ndarray], float]:
    from river import time_series

    out, sizes = [], []
    for s in series:
        model = time_series.HoltWinters(alpha=0.3, beta=0.1)
        errors = np.zeros(len(s.values))
        for i, value in enumerate(s.values.tolist()):
            if i >= 2:
                errors[i] = value - model.forecast(horizon=1)[0]
            model.learn_one(value)
        out.append(residual_score(errors))
        sizes.append(deep_size(model))
    return out, float(np.median(sizes))


def run_statsmodels_holt(series: list[nab.Series]) -> tuple[list[np.ndarray], float]:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    out, sizes = [], []
    for s in series:
        prefix = s.values[: nab_score.probation_length(len(s.values))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = ExponentialSmoothing(prefix, trend="add", initialization_method="estimated").fit()
            params = fitted.params
            frozen = ExponentialSmoothing(s.values, trend="add", initialization_method="known",
                                          initial_level=params["initial_level"],
                                          initial_trend=params["initial_trend"])
            run = frozen.fit(smoothing_level=params["smoothing_level"], smoothing_trend=params["smoothing_trend"],
                             optimized=False)
        out.append(residual_score(s.values - run.fittedvalues))
        sizes.append(deep_size(fitted))
    return out, float(np.median(sizes))


def run_ruptures_window(series: list[nab.Series], width: int = 60) -> tuple[list[np.ndarray], float]:
    import ruptures

    out, sizes = [], []
    for s in series:
        algo = ruptures.Window(width=width, model="l2", jump=1).fit(s.values.reshape(-1, 1))
        raw = np.zeros(len(s.values))
        # algo.score[k] belongs to the window centred on point width / 2 + k: it has seen
        # up to point width + k, so it becomes that point's score (no later point used)
        raw[width:width + len(algo.score)] = np.asarray(algo.score)[: max(0, len(s.values) - width)]
        out.append(residual_score(raw))
        sizes.append(8 * width + deep_size(algo.cost))  # what an online version keeps: the window
    return out, float(np.median(sizes))


def _with_episodes(run: Callable[[list[nab.Series]], tuple[list[np.ndarray], float]]):
    def both(series: list[nab.Series]) -> tuple[list[np.ndarray], float]:
        scores, size = run(series)
        return [episodes(s) for s in scores], size + 5 * 4  # + the five numbers those stages keep
    return both


CANDIDATES: dict[str, Callable[[list[nab.Series]], tuple[list[np.ndarray], float]]] = {
    "wyneos": run_wyneos,
    "wyneos-daily": lambda series: run_wyneos(series, daily=True),
    "river-hst": run_river_hst,
    "river-holt": run_river_holt,
    "statsmodels-holt": run_statsmodels_holt,
    "ruptures-window": run_ruptures_window,
}
# the same candidates with the builtin's likelihood and one finding per episode after them
CANDIDATES.update({f"{name}+episodes": _with_episodes(run) for name, run in list(CANDIDATES.items())
                   if not name.startswith("wyneos")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nab_dir", type=Path, nargs="?", default=ROOT / "tests" / "data" / "nab")
    parser.add_argument("--detectors", default=",".join(CANDIDATES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    files = nab_score.load_corpus(args.nab_dir)
    by_name = dict(nab.find_files(args.nab_dir))
    series = [nab.read_series(f.name, by_name[f.name]) for f in files]
    points = sum(len(s.values) for s in series)
    profiles = nab_score.profile_weights(args.nab_dir)
    print(f"{len(series)} files, {points} points ({args.nab_dir.name})")
    print(f"{'detector':<18} {'standard':>8} {'low FP':>7} {'low FN':>7} {'us/point':>9} {'bytes/series':>13}")
    rows = {}
    for module in ("river.anomaly", "river.time_series", "statsmodels.tsa.holtwinters", "ruptures"):
        try:
            __import__(module)  # imported before any timing
        except ImportError:
            pass  # its candidates say so below
    for name in args.detectors.split(","):
        if name not in CANDIDATES:
            raise SystemExit(f"--detectors: unknown {name!r} (known: {', '.join(CANDIDATES)})")
        started = time.perf_counter()
        try:
            scores, size = CANDIDATES[name](series)
        except ImportError as exc:
            print(f"{name:<18} skipped: {exc.name} is not installed (pip install -e '.[bench]')")
            continue
        seconds = time.perf_counter() - started
        for s in scores:
            if not (np.all(np.isfinite(s)) and s.min() >= 0.0 and s.max() <= 1.0):
                raise SystemExit(f"{name}: scores outside [0, 1]")
        result = nab_score.score_corpus(files, scores, profiles)
        row = {"standard": result["standard"]["score"], "low_fp": result["reward_low_FP_rate"]["score"],
               "low_fn": result["reward_low_FN_rate"]["score"], "us_per_point": 1e6 * seconds / points,
               "bytes_per_series": size}
        rows[name] = row
        print(f"{name:<18} {row['standard']:8.2f} {row['low_fp']:7.2f} {row['low_fn']:7.2f} "
              f"{row['us_per_point']:9.2f} {math.ceil(size):13d}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"nab_dir": args.nab_dir.name, "files": len(series), "points": points,
                                         "detectors": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
