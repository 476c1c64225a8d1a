"""bench.model_bound: a row per size and variant, with FLOPs that follow from what each variant computes.

No time or rate is asserted (a busy 2-core box); the FLOP relations are properties of the variants themselves:
at N = 1 every variant computes the same thing once, and at N > 1 MaRI computes the user side once where VanI
computes it N times."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.model_bound import main
from service.engine import Variant
from tests.conftest import SMALL_MODEL_NAME


def test_reports_every_size_and_variant_with_fewer_flops_for_mari(
        store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(store / SMALL_MODEL_NAME), "--sizes", "1,16", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s (the core's GEMM rate)" in out.splitlines()[0]
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    table = {(int(row[0]), row[1].strip()): [cell.strip() for cell in row[2:]] for row in rows}
    assert set(table) == {(n, v.value) for n in (1, 16) for v in Variant}
    mflops = {key: float(cells[1]) for key, cells in table.items()}
    for cells in table.values():
        assert float(cells[0]) > 0  # ms per call
        assert 0 <= int(cells[4].rstrip("%")) <= 100  # time in matmuls
    assert mflops[(16, "mari")] < mflops[(16, "vani")]
    assert mflops[(16, "vani")] > mflops[(1, "vani")]
