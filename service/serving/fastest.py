"""The `auto` form: of the equivalent forms a model was built into, the fastest one per request size.

Which form is fastest depends on the model and on N: MaRI saves user-side arithmetic that grows with N, and
costs a few more ops per call, which on a small ranker at N = 100 can weigh more (docs/conventions.md). So the
forms are timed at start-up on the warm-up sizes (interleaved, after a warm-up round, median of several calls
each: service.benchmark.interleaved_medians; fewer where a round is slow, AUTO_BUDGET_S), and a request of N
candidates runs the form measured fastest at the warm-up size nearest N (on a log scale). Every form timed here
has already passed the equivalence check, so the choice changes speed, never scores. A configured variant or
A/B arm runs exactly what it names: `auto` is only what the default serves (service/serving/routing.py spells
it). The scorer resolves it per request (`FastestForms.variant_for`), so the response, the metrics and the
batching key name the form that ran.

The forms are timed as they serve: compiled where compile kept them compiled (service/serving/compile.py), under
inference mode. Under compile=auto, which form is worth compiling comes from a first, uncompiled measurement: the
one `auto` would serve at the most sizes (`compile_targets`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from service.benchmark import interleaved_medians
from service.engine import Variant
from service.serving.routing import Auto

AUTO_REPEATS = 7  # calls per form and size: a median of 7 interleaved calls is stable to a few percent
# ... unless a round of calls is slow: then as many rounds as fit in this budget per size, at least 3 (a large N of a
# large model: the forms differ most there, by 2-3x, and start-up should not wait seconds to tell them apart)
AUTO_BUDGET_S = 0.5
AUTO_MIN_REPEATS = 3
# Forms within this fraction of the fastest are a tie (a median of 3-7 calls on a busy machine moves by more), and a
# tie goes to the form with less arithmetic: the choice does not flip between restarts on noise, and under
# compile=auto one form, not three, is compiled where all run alike (N = 1).
AUTO_TIE = 0.05
AUTO_SEED = 20260225  # fixed inputs: the start-up measurement is reproducible

ExampleBatch = Callable[[int, torch.Generator], dict[str, Tensor]]
Timer = Callable[[dict[str, Callable[[], object]], int, int], dict[str, float]]  # interleaved_medians' shape


@dataclass(frozen=True)
class FastestForms:
    """Median milliseconds of every form at every measured size, and the fastest form per size."""

    milliseconds: dict[int, dict[Variant, float]]
    seconds: float = 0.0  # what measuring took (start-up time it added)

    @functools.cached_property
    def fastest(self) -> dict[int, Variant]:
        """Per size, the fastest form, or of the forms within AUTO_TIE of it the one with less arithmetic."""
        return {n: _fastest(times) for n, times in self.milliseconds.items()}

    def variant_for(self, n: int) -> Variant:
        """The form measured fastest at the size nearest n (log scale: 300 is nearer 100 than 1000). Runs per
        request: a few microseconds."""
        nearest = min(self.milliseconds, key=lambda size: (abs(math.log(max(n, 1) / size)), size))
        return self.fastest[nearest]

    def to_dict(self) -> dict[str, Any]:
        """As /v1/models shows it: per size, each form's median ms and the one `auto` serves."""
        return {str(n): {"fastest": self.fastest[n].value,
                         "median_ms": {v.value: round(ms, 4) for v, ms in times.items()}}
                for n, times in self.milliseconds.items()}


_PREFERENCE = [Variant.MARI, Variant.UOI, Variant.VANI]  # on a tie, the form with less arithmetic


def _fastest(times: Mapping[Variant, float]) -> Variant:
    best = min(times.values())
    return min((v for v, ms in times.items() if ms <= best * (1 + AUTO_TIE)), key=_PREFERENCE.index)


def measure_forms(forms: Mapping[Variant, nn.Module], example_batch: ExampleBatch, sizes: Sequence[int],
                  timer: Timer | None = None) -> FastestForms:
    """Time every distinct form at every size (forms that are one module, a fallback to VanI, timed once).
    interleaved_medians times under inference mode, as requests are scored (a compiled form's guards check it)."""
    started = time.perf_counter()
    measure = timer or (lambda calls, repeats, warmup: interleaved_medians(calls, repeats, warmup))
    distinct: dict[int, Variant] = {}
    for variant in reversed(_PREFERENCE):  # a fallback is VanI's own module: it is timed under VanI's name
        if variant in forms:
            distinct.setdefault(id(forms[variant]), variant)
    milliseconds: dict[int, dict[Variant, float]] = {}
    for n in sorted(set(sizes)):
        features = example_batch(n, torch.Generator().manual_seed(AUTO_SEED + n))
        calls = {variant.value: _call(forms[variant], features) for variant in distinct.values()}
        seconds = measure(calls, _repeats(_one_round(calls)), 0)
        milliseconds[n] = {variant: seconds[variant.value] * 1e3 for variant in distinct.values()}
    return FastestForms(milliseconds, time.perf_counter() - started)


def _call(module: nn.Module, features: dict[str, Tensor]) -> Callable[[], object]:
    return lambda: module(features)


def _one_round(calls: Mapping[str, Callable[[], object]]) -> float:
    """Seconds of one call of each form: the warm-up round, and what sets how many rounds fit the budget."""
    started = time.perf_counter()
    with torch.inference_mode():
        for call in calls.values():
            call()
    return time.perf_counter() - started


def _repeats(round_seconds: float) -> int:
    fit = int(AUTO_BUDGET_S / round_seconds) if round_seconds > 0 else AUTO_REPEATS
    return max(AUTO_MIN_REPEATS, min(AUTO_REPEATS, fit))


def compile_targets(routed: Collection[Variant | Auto] | None, uncompiled: FastestForms | None
                    ) -> frozenset[Variant] | None:
    """The variants compile=auto compiles: the ones `routed` names, and when it routes to `auto` the one form it
    would serve at the most warm-up sizes measured uncompiled (`uncompiled`; a tie: the one at the largest size).
    One form, not every one fastest somewhere: each compile costs start-up seconds to a minute, and at the sizes
    where another form won uncompiled it wins by little (N = 1, where all forms run alike) or keeps winning.
    None (every variant) stays None."""
    if routed is None:
        return None
    named = frozenset(choice for choice in routed if isinstance(choice, Variant))
    if Auto.AUTO not in routed or uncompiled is None:
        return named
    by_size = [uncompiled.fastest[n] for n in sorted(uncompiled.fastest, reverse=True)]  # largest size first
    return named | {max(by_size, key=by_size.count)}  # max keeps the first of equal counts
