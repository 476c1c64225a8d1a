"""The `auto` form: of the equivalent forms a model was built into, the fastest one per request size.

Which form is fastest depends on the model and on N: MaRI saves user-side arithmetic that grows with N, and
costs a few more ops per call, which on a small ranker at N = 100 can weigh more (docs/conventions.md). So the
forms are timed at start-up on the warm-up sizes (interleaved, after a warm-up, median of several calls each:
service.benchmark.interleaved_medians), and a request of N candidates runs the form measured fastest at the
warm-up size nearest N (on a log scale). Every form timed here has already passed the equivalence check, so the
choice changes speed, never scores. A configured variant or A/B arm runs exactly what it names: `auto` is only
what the default serves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from service.benchmark import interleaved_medians
from service.engine import Variant

AUTO_REPEATS = 7  # calls per form and size: a median of 7 interleaved calls is stable to a few percent
AUTO_WARMUP = 2
AUTO_SEED = 20260225  # fixed inputs: the start-up measurement is reproducible

ExampleBatch = Callable[[int, torch.Generator], dict[str, Tensor]]
Timer = Callable[[dict[str, Callable[[], object]], int, int], dict[str, float]]  # interleaved_medians' shape


@dataclass(frozen=True)
class FastestForms:
    """Median milliseconds of every form at every measured size, and the fastest form per size."""

    milliseconds: dict[int, dict[Variant, float]]

    @property
    def fastest(self) -> dict[int, Variant]:
        return {n: min(times, key=lambda v: (times[v], _PREFERENCE.index(v))) for n, times in self.milliseconds.items()}

    def variant_for(self, n: int) -> Variant:
        """The form measured fastest at the size nearest n (log scale: 300 is nearer 100 than 1000)."""
        nearest = min(self.milliseconds, key=lambda size: (abs(math.log(max(n, 1) / size)), size))
        return self.fastest[nearest]

    def to_dict(self) -> dict[str, Any]:
        """As /v1/models shows it: per size, each form's median ms and the one `auto` serves."""
        return {str(n): {"fastest": self.fastest[n].value,
                         "median_ms": {v.value: round(ms, 4) for v, ms in times.items()}}
                for n, times in self.milliseconds.items()}


_PREFERENCE = [Variant.MARI, Variant.UOI, Variant.VANI]  # on an exact tie, the form with less arithmetic


def measure_forms(forms: Mapping[Variant, nn.Module], example_batch: ExampleBatch, sizes: Sequence[int],
                  timer: Timer | None = None) -> FastestForms:
    """Time every distinct form at every size (forms that are one module, a fallback to VanI, timed once)."""
    measure = timer or (lambda calls, repeats, warmup: interleaved_medians(calls, repeats, warmup))
    distinct: dict[int, Variant] = {}
    for variant in reversed(_PREFERENCE):  # a fallback is VanI's own module: it is timed under VanI's name
        if variant in forms:
            distinct.setdefault(id(forms[variant]), variant)
    milliseconds: dict[int, dict[Variant, float]] = {}
    for n in sorted(set(sizes)):
        features = example_batch(n, torch.Generator().manual_seed(AUTO_SEED + n))
        calls = {variant.value: _call(forms[variant], features) for variant in distinct.values()}
        seconds = measure(calls, AUTO_REPEATS, AUTO_WARMUP)
        milliseconds[n] = {variant: seconds[variant.value] * 1e3 for variant in distinct.values()}
    return FastestForms(milliseconds)


def _call(module: nn.Module, features: dict[str, Tensor]) -> Callable[[], object]:
    return lambda: module(features)


class AutoForm(nn.Module):
    """Runs, for each request, the form measured fastest at its size; same call and output as every form."""

    def __init__(self, forms: Mapping[Variant, nn.Module], measured: FastestForms,
                 user_features: Sequence[str]) -> None:
        super().__init__()
        self.forms = nn.ModuleDict({variant.value: module for variant, module in forms.items()})
        self.measured = measured
        self.user_features = frozenset(user_features)

    def forward(self, features: dict[str, Tensor]) -> Any:
        n = next((t.size(0) for name, t in features.items() if name not in self.user_features), 1)
        return self.forms[self.measured.variant_for(n).value](features)
