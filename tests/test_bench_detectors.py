"""bench/bench_detectors.py (issue 20 item 3): the candidates' score transforms are causal
and in [0, 1], and the builtin's row is what the shipped NAB path gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAB = ROOT / "tests" / "data" / "nab"
sys.path.insert(0, str(ROOT / "bench"))

import bench_detectors  # noqa: E402
import nab_score  # noqa: E402


def test_the_score_transforms_use_no_later_point() -> None:
    rng = np.random.default_rng(3)
    errors = rng.normal(0, 1, 900)
    errors[500:530] = 25.0  # an anomaly of 30 points
    for transform in (bench_detectors.residual_score, lambda e: bench_detectors.episodes(
            bench_detectors.residual_score(e))):
        full = transform(errors)
        assert full.min() >= 0.0 and full.max() <= 1.0 and full[500:530].max() > 0.5
        for cut in (200, 500, 501, 777):
            assert np.array_equal(transform(errors[:cut]), full[:cut]), cut
    scored = bench_detectors.episodes(bench_detectors.residual_score(errors))
    fired = 500 + int(np.flatnonzero(scored[500:] >= 0.5)[0])
    assert 500 <= fired < 530 and not scored[fired + 1:fired + 151].any()  # one finding per episode


def test_the_builtins_row_is_what_wyneos_predict_nab_scores(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_detectors.py"), str(NAB), "--detectors", "wyneos",
                    "--json", str(out)], check=True, capture_output=True, text=True, timeout=600)
    row = json.loads(out.read_text())["detectors"]["wyneos"]
    subprocess.run([sys.executable, "-m", "wyneos_core.cli", "predict", "nab", str(NAB), "--out", str(tmp_path / "r")],
                   check=True, capture_output=True, text=True, timeout=600)
    files = nab_score.load_corpus(NAB)
    shipped = nab_score.score_corpus(files, nab_score.load_results(files, tmp_path / "r", "wyneos"),
                                     nab_score.profile_weights(NAB))
    assert row["standard"] == shipped["standard"]["score"]
    assert row["low_fp"] == shipped["reward_low_FP_rate"]["score"]
    assert row["bytes_per_series"] == 128


def test_deep_size_counts_what_an_object_holds() -> None:
    small = bench_detectors.deep_size({"a": [1.0] * 10})
    big = bench_detectors.deep_size({"a": [1.0] * 10, "b": np.zeros(1000)})
    assert big - small >= 8000
