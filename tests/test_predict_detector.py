"""The online detector, its columns, the NAB runner and the NAB scorer (issue 20 items 2, 8).

Data: three series of the Numenta Anomaly Benchmark in tests/data/nab (MIT licence).
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wyneos_core.predict import detector, nab
from wyneos_core.predict.detector import BYTES_PER_SERIES, Columns

ROOT = Path(__file__).resolve().parents[1]
NAB = Path(__file__).resolve().parent / "data" / "nab"
sys.path.insert(0, str(ROOT / "bench"))

import nab_score  # noqa: E402


def series(name: str) -> tuple[np.ndarray, np.ndarray]:
    loaded = nab.read_series(name, NAB / "data" / name)
    return loaded.values, loaded.times


def test_a_series_takes_at_most_128_bytes() -> None:
    assert BYTES_PER_SERIES <= 128
    cols = Columns.empty(1000)
    assert cols.nbytes == 1000 * BYTES_PER_SERIES
    cols.grow(5000)
    assert cols.nbytes == 5000 * BYTES_PER_SERIES


def test_scores_of_a_prefix_never_change_when_more_data_arrives() -> None:
    values, times = series("realTraffic/speed_7578.csv")
    full = detector.run_series([values], [times])[0]
    assert full.max() > 0.5  # the series has anomalies the detector reports
    for cut in (150, 400, 777, len(values) - 1):
        prefix = detector.run_series([values[:cut]], [times[:cut]])[0]
        assert np.array_equal(prefix, full[:cut]), cut


def test_series_side_by_side_score_as_alone() -> None:
    """The fleet step is one column per series: a neighbour never changes a score."""
    a, ta = series("realTraffic/speed_7578.csv")
    b, tb = series("realAdExchange/exchange-3_cpc_results.csv")
    together = detector.run_series([a, b], [ta, tb])
    assert np.array_equal(together[0], detector.run_series([a], [ta])[0])
    assert np.array_equal(together[1], detector.run_series([b], [tb])[0])


def test_scores_are_in_0_1_and_the_learning_period_is_quiet() -> None:
    values, times = series("realAdExchange/exchange-3_cpc_results.csv")
    scores = detector.run_series([values], [times])[0]
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert not scores[: detector.Params().learn + 1].any()


def test_a_spike_scores_1_and_the_episode_is_reported_once() -> None:
    rng = np.random.default_rng(1)
    values = 10.0 + rng.normal(0, 0.5, 600)
    values[400] = 30.0
    scores = detector.run_series([values])[0]
    assert scores[400] == 1.0
    assert scores[:400].max() < 0.5
    assert scores[401:401 + detector.Params().quiet].max() == 0.0


def test_forecast_and_time_to_follow_a_trend() -> None:
    cols = Columns.empty(1)
    for t in range(0, 6000, 10):  # 0.001 per second from 0.2
        cols.step(np.array([0.2 + 0.001 * t]), np.array([True]), float(t))
    now = 5990.0
    at = np.array([0])
    assert float(detector.forecast(cols, at, 3600.0, now)[0]) == pytest.approx(0.2 + 0.001 * (now + 3600), rel=1e-3)
    assert float(detector.time_to(cols, at, 7.0, now)[0]) == pytest.approx((7.0 - 0.2) / 0.001 - now, rel=1e-3)
    assert float(detector.time_to(cols, at, 1.0, now)[0]) == 0.0  # already above
    falling = Columns.empty(1)
    for t in range(0, 3000, 10):
        falling.step(np.array([5.0 - 0.001 * t]), np.array([True]), float(t))
    assert math.isnan(float(detector.time_to(falling, at, 9.0, 2990.0)[0]))  # above it and going down: never
    flat = Columns.empty(1)
    for t in range(0, 3000, 10):
        flat.step(np.array([5.0]), np.array([True]), float(t))
    assert math.isnan(float(detector.time_to(flat, at, 9.0, 2990.0)[0]))  # never gets there
    assert float(detector.time_to(falling, at, 0.0, 2990.0)[0]) == pytest.approx((5.0 - 0.001 * 2990) / 0.001,
                                                                                 rel=1e-2)


def test_a_level_shift_is_a_change_point() -> None:
    values = np.r_[np.full(1000, 5.0), np.full(300, 9.0)] + np.random.default_rng(3).normal(0, 0.1, 1300)
    cols = Columns.empty(1)
    counts = []
    for t, v in enumerate(values):
        cols.step(np.array([v]), np.array([True]), float(t))
        counts.append(int(cols.get("changes")[0]))
    assert counts[999] == 0
    assert counts[1010] >= 1


def test_nab_cli_writes_nabs_layout_the_same_twice(tmp_path: Path) -> None:
    out = tmp_path / "results"
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "predict", "nab", str(NAB), "--out", str(out)],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        first = (out / "wyneos" / "realTraffic" / "wyneos_speed_7578.csv").read_text()
    assert "3 data files" in done.stdout
    with (NAB / "data" / "realTraffic" / "speed_7578.csv").open() as handle:
        data = list(csv.reader(handle))
    rows = list(csv.reader(first.splitlines()))
    assert rows[0] == ["timestamp", "value", "anomaly_score"]
    assert [r[:2] for r in rows[1:]] == data[1:]
    scores = np.array([float(r[2]) for r in rows[1:]])
    expected = detector.run_series(*[[x] for x in series("realTraffic/speed_7578.csv")])[0]
    assert np.allclose(scores, expected, atol=1e-6)


def test_nab_cli_names_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "data" / "cat"
    bad.mkdir(parents=True)
    (bad / "x.csv").write_text("timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,lots\n")
    done = subprocess.run([sys.executable, "-m", "wyneos_core.cli", "predict", "nab", str(tmp_path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "x.csv: line 3" in done.stderr
    assert not (tmp_path / "out" / "wyneos").exists()


# -- the scorer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[nab_score.ScoredFile]:
    return nab_score.load_corpus(NAB)


def test_null_scores_0_and_perfect_100(corpus) -> None:
    profiles = nab_score.profile_weights(NAB)
    null = nab_score.score_corpus(corpus, [np.zeros(f.rows) for f in corpus], profiles)
    perfect = nab_score.score_corpus(corpus, nab_score.perfect_scores(corpus), profiles)
    for name in nab_score.PROFILES:
        assert null[name]["score"] == 0.0
        assert perfect[name]["score"] == 100.0
    windows = sum(len(np.unique(f.window[f.window >= 0])) for f in corpus)
    assert null["standard"]["raw"] == -windows  # every window missed, fn weight 1
    assert null["reward_low_FN_rate"]["raw"] == -2 * windows


def test_one_detection_scores_as_nab_weighs_it(corpus) -> None:
    """One detection in the middle of the first window of one file, nothing else: that
    window's sigmoid weight, every other window a miss; one false positive far from any
    window costs the profile's fp weight."""
    cost = nab_score.profile_weights(NAB)["standard"]
    f = corpus[0]
    rows = np.flatnonzero(f.window == f.window[f.window >= 0].min())
    middle = rows[len(rows) // 2]
    scores = [np.zeros(g.rows) for g in corpus]
    scores[0][f.probation + middle] = 1.0
    width = len(rows)
    weight = (2 / (1 + math.exp(5 * -(rows[-1] - middle + 1) / width)) - 1) / (2 / (1 + math.exp(-5)) - 1)
    windows = sum(len(np.unique(g.window[g.window >= 0])) for g in corpus)
    threshold, raw = nab_score.sweep(corpus, scores, cost)
    assert threshold == 1.0
    assert raw == pytest.approx(weight - (windows - 1))
    assert 0.5 < weight < 1.0
    # a lone false positive before every window: -fp; the sweep then prefers no detection at all
    first_window_row = int(np.flatnonzero(f.window >= 0)[0])
    if first_window_row > 0:
        lone = [np.zeros(g.rows) for g in corpus]
        lone[0][f.probation] = 1.0
        assert nab_score.score_at(f, lone[0], 1.0, cost) == pytest.approx(
            -cost["fpWeight"] - len(np.unique(f.window[f.window >= 0])))


def test_the_detector_beats_null_on_these_files(tmp_path: Path, corpus) -> None:
    nab.run(NAB, tmp_path)
    results = nab_score.score_corpus(corpus, nab_score.load_results(corpus, tmp_path, "wyneos"),
                                     nab_score.profile_weights(NAB))
    assert results["standard"]["score"] > 0.0
