"""bench.capacity: the sweep's rate schedule, and a quick open-loop sweep against a real server on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.capacity import LADDER_FACTOR, LADDER_START, LOW_LOAD, MARK_BEGIN, MARK_END, Curve, Step, main, next_rate
from tests.conftest import SMALL_MODEL_NAME

SLO_MS = 2000.0  # loose: the quick sweep runs on a shared 2-core box; the test checks the tool, not the server


def _step(rate: float, meets_slo: bool) -> Step:
    return Step(rate, 1.0, 1, 0, rate, rate, 1.0, 1.0, 1.0, 1.0, 0.0, {}, meets_slo)


def test_sweep_starts_at_low_load_ladders_up_then_bisects() -> None:
    curve = Curve("mari", False, "small", 50.0, single_slot_rps=100.0)
    assert next_rate(curve, 100.0) == pytest.approx(LOW_LOAD * 100)
    curve.steps.append(_step(20.0, True))
    assert next_rate(curve, 100.0) == pytest.approx(LADDER_START * 100)
    curve.steps.append(_step(60.0, True))
    assert next_rate(curve, 100.0) == pytest.approx(60 * LADDER_FACTOR)
    curve.steps.append(_step(78.0, False))
    assert next_rate(curve, 100.0) == 78.0  # a failure is tried once more before it counts
    curve.steps.append(_step(78.0, False))
    assert next_rate(curve, 100.0) == pytest.approx((60 * 78) ** 0.5)
    curve.steps.append(_step(77.0, True))
    assert next_rate(curve, 100.0) is None  # 78 / 77 < 1.05: pinned
    assert curve.best is not None and curve.best.offered_rps == 77.0 and curve.bounded


def test_sweep_halves_when_even_low_load_fails() -> None:
    curve = Curve("vani", True, "mix", 10.0, single_slot_rps=50.0)
    curve.steps += [_step(10.0, False), _step(10.0, False)]
    assert next_rate(curve, 50.0) == pytest.approx(5.0)
    assert curve.best is None and curve.summary()["capacity_rps"] == 0.0


def test_a_failure_that_passes_on_its_second_try_does_not_stop_the_ladder() -> None:
    curve = Curve("mari", False, "mix", 500.0, single_slot_rps=10.0)
    curve.steps += [_step(2.0, True), _step(6.0, False), _step(6.0, True)]
    assert next_rate(curve, 10.0) == pytest.approx(6.0 * LADDER_FACTOR)
    assert curve.best is not None and curve.best.offered_rps == 6.0 and not curve.bounded


def test_quick_sweep_against_a_real_server_reports_every_step(store: Path, tmp_path: Path) -> None:
    code = main(["--model", str(store / SMALL_MODEL_NAME / "v1"), "--quick", "--variants", "mari",
                 "--batching", "off", "--mixes", "small", "--slo-ms", f"small={SLO_MS}", "--outside-n", "40",
                 "--server-env", "RANKER_WARMUP_CANDIDATES=[1,16]", "--compile", "off",
                 "--server-env", "RANKER_DRAIN_DELAY_S=0",  # a quick stop: the sweep is over by then
                 "--out", str(tmp_path),
                 "--results-dir", str(tmp_path / "results")])
    assert code == 0
    data = json.loads((tmp_path / "capacity.json").read_text())
    [curve] = data["curves"]
    assert (curve["variant"], curve["batching"], curve["mix"], curve["slo_ms"]) == ("mari", False, "small", SLO_MS)
    assert curve["single_slot_rps"] > 0
    steps = curve["steps"]
    assert len(steps) == 2 and steps[0]["offered_rps"] < steps[1]["offered_rps"]
    for step in steps:
        assert step["requests"] == max(1, round(step["offered_rps"] * step["duration_s"]))
        assert step["failures"] == 0 and step["meets_slo"], step
        assert 0 < step["p50_ms"] <= step["p90_ms"] <= step["p99_ms"] <= step["max_ms"] < SLO_MS
        assert step["achieved_rps"] > 0
        assert 50 <= step["candidates_per_s"] / step["achieved_rps"] <= 200  # the small mix's N range
    assert curve["summary"]["capacity_rps"] == steps[1]["offered_rps"]
    assert not curve["summary"]["bounded"]
    outside = data["outside_inference"]["mari"]
    assert outside["n"] == 40 and 0 <= outside["median_share"] < 1
    assert 0 < outside["mean_infer_ms"] <= outside["mean_total_ms"]
    assert data["mixes"]["small"]["n_min"] >= 50 and data["mixes"]["small"]["n_max"] <= 200
    page = (tmp_path / "capacity.md").read_text()
    assert MARK_BEGIN in page and MARK_END in page and "| mari | off |" in page
    assert (tmp_path / "capacity_small.png").read_bytes()[:4] == b"\x89PNG"
