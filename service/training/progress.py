"""What `ranker train` prints while it works: the phase, and every few seconds the step, loss and time left.

Training the default model takes minutes on a small machine (`make run`, the image build); without this it
printed nothing until the end. The trainer calls a `TrainProgress`; tests and library callers pass none.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Protocol, TextIO

PRINT_EVERY_S = 5.0  # one step line at most this often (and always the first and the last step)


@dataclass(frozen=True)
class StepProgress:
    """Where training stands after `step` of `steps` optimizer steps."""

    step: int
    steps: int
    loss: float  # this step's summed per-task loss
    elapsed_s: float  # since the first step started

    @property
    def remaining_s(self) -> float:
        """Time left at the mean step time so far."""
        return self.elapsed_s / self.step * (self.steps - self.step)


class TrainProgress(Protocol):
    def phase(self, what: str) -> None: ...

    def step(self, progress: StepProgress) -> None: ...


class PrintedProgress:
    """Prints phases and rate-limited step lines to a stream (flushed: a build log shows them as they come)."""

    def __init__(self, stream: TextIO | None = None, every_s: float = PRINT_EVERY_S) -> None:
        self.stream = stream or sys.stdout
        self.every_s = every_s
        self._started = time.perf_counter()
        self._last_printed: float | None = None

    def _print(self, line: str) -> None:
        print(f"[{time.perf_counter() - self._started:6.1f} s] {line}", file=self.stream, flush=True)

    def phase(self, what: str) -> None:
        self._print(what)

    def step(self, progress: StepProgress) -> None:
        now = time.perf_counter()
        due = self._last_printed is None or now - self._last_printed >= self.every_s
        if not (due or progress.step == progress.steps):
            return
        self._last_printed = now
        self._print(f"step {progress.step}/{progress.steps} ({100 * progress.step // progress.steps}%)  "
                    f"loss {progress.loss:.4f}  {progress.elapsed_s:.0f} s in, about {progress.remaining_s:.0f} s "
                    "of training left")
