"""`ranker train` says what it is doing: phases, and step lines with loss and time left, at most every few seconds."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from service.training.progress import PrintedProgress, StepProgress
from service.training.train import train_model
from tests.small_artifacts import QUICK_TRAINING, SMALL_MMOE

REPO_ROOT = Path(__file__).resolve().parents[2]


class Recorded:
    def __init__(self) -> None:
        self.phases: list[str] = []
        self.steps: list[StepProgress] = []

    def phase(self, what: str) -> None:
        self.phases.append(what)

    def step(self, progress: StepProgress) -> None:
        self.steps.append(progress)


def test_training_reports_every_step_in_order_with_its_loss_and_the_phases() -> None:
    recorded = Recorded()
    train_model("mmoe", seed=0, steps=4, config_overrides=SMALL_MMOE, settings=QUICK_TRAINING, progress=recorded)
    assert [(p.step, p.steps) for p in recorded.steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(p.loss > 0 and p.elapsed_s >= 0 for p in recorded.steps)
    assert recorded.steps[-1].remaining_s == 0
    assert "synthetic training rows" in recorded.phases[0] and recorded.phases[-1] == "holdout AUC"


def test_step_lines_are_rate_limited_but_the_first_and_last_always_print() -> None:
    out = io.StringIO()
    printed = PrintedProgress(out, every_s=3600.0)
    for step in range(1, 101):
        printed.step(StepProgress(step, 100, loss=1.0 / step, elapsed_s=step * 0.5))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "step 1/100 (1%)  loss 1.0000  0 s in, about 50 s of training left" in lines[0]
    assert "step 100/100 (100%)" in lines[1] and "about 0 s of training left" in lines[1]


def test_ranker_train_prints_progress_before_the_result(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "train", "--arch", "mmoe", "--steps", "3",
                             "--store", str(tmp_path), "--name", "m", "--threads", "1"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    order = [out.index(text) for text in ("synthetic training rows", "step 1/3", "step 3/3", "holdout AUC",
                                          "packaging", "wrote ")]
    assert order == sorted(order), out
