"""The paper study runs end to end on tiny sizes, and its fragmented-layout variant is what it claims to be."""

from __future__ import annotations

import torch

from bench import paper_study
from bench.paper_study import StudyPlan, build_fragmented, build_variants, count_gemms
from bench.study_models import StudyConfig, study_inputs
from service.engine import Variant

TINY = StudyConfig(user_width=32, item_width=16, cross_width=16, hidden=32, user_tower=8)
# widths overlap the defaults, so each width sweep builds one new model (engine builds dominate the run time)
TINY_PLAN = StudyPlan(TINY, n=20, ns=(10, 500), widths=(16, 32), chunks=(8,), repeats=2, warmup=1, quick=True)


def test_tiny_study_writes_every_figure_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(paper_study, "QUICK_PLAN", TINY_PLAN)
    assert paper_study.main(["--quick", "--out", str(tmp_path)]) == 0

    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    expected = {f"paper_{axis}.png" for axis in paper_study.SWEEPS} | {"paper_fragmentation.png"}
    assert figures == expected
    assert all((tmp_path / "figures" / name).read_bytes().startswith(b"\x89PNG") for name in figures)
    report = (tmp_path / "paper_study.md").read_text()
    assert "python -m bench.paper_study --quick" in report
    for name in figures:
        assert f"figures/{name}" in report
    for published in ("1.58x", "10.95x", "+38.8%", "+69.4%", "+96.3%"):  # the paper's figures sit beside ours
        assert published in report
    assert "| 500 |" in report  # the N sweep's table has a row per N


def test_fragmented_mari_runs_one_gemm_per_chunk_and_still_equals_vani():
    config = TINY.with_(chunk=8)
    built = build_variants(config)
    fragmented = build_fragmented(config)
    # 32 user columns and 32 candidate columns in chunks of 8: 4 + 4 parts, one GEMM each, instead of 2
    assert count_gemms(fragmented) - count_gemms(built[Variant.MARI]) == 8 - 2
    assert fragmented.report.variant == Variant.MARI

    inputs = study_inputs(config, 37, seed=3)
    with torch.inference_mode():
        vani = built[Variant.VANI].module(inputs)
        for result in (built[Variant.MARI], fragmented):
            torch.testing.assert_close(result.module(inputs), vani, rtol=0, atol=1e-6)

