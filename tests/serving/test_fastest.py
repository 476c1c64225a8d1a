"""The `auto` form: the fastest equivalent form per request size, from start-up measurements.

Times come from an injected timer (never from this machine's speed), so the choice logic is what is tested."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from service.engine import Variant
from service.serving.fastest import AUTO_TIE, FastestForms, measure_forms


class Marked(nn.Module):
    """A stand-in form that scores every candidate with its own mark, so a test sees which form ran."""

    def __init__(self, mark: float) -> None:
        super().__init__()
        self.mark = mark

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"click": torch.full((features["item"].size(0),), self.mark)}


def _example(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    return {"user": torch.randn(1, 2, generator=generator), "item": torch.randn(n, 3, generator=generator)}


def _timer(table: dict[int, dict[str, float]]):
    """interleaved_medians' shape; answers from `table`, keyed by the candidate count of the call it is given."""
    def measure(calls, repeats, warmup):
        n = next(iter(calls.values()))()["click"].shape[0]
        return {name: table[n][name] for name in calls}
    return measure


def test_each_size_serves_the_form_measured_fastest_there_and_between_sizes_the_nearest_on_a_log_scale():
    forms = {Variant.VANI: Marked(0.0), Variant.UOI: Marked(1.0), Variant.MARI: Marked(2.0)}
    table = {100: {"vani": 0.9e-3, "uoi": 1.0e-3, "mari": 1.1e-3}, 1000: {"vani": 9e-3, "uoi": 7e-3, "mari": 4e-3}}
    measured = measure_forms(forms, _example, [1000, 100], _timer(table))
    assert measured.fastest == {100: Variant.VANI, 1000: Variant.MARI}
    assert measured.milliseconds[1000][Variant.UOI] == 7.0
    assert [measured.variant_for(n) for n in (1, 100, 300, 320, 5000)] == [
        Variant.VANI, Variant.VANI, Variant.VANI, Variant.MARI, Variant.MARI]
    assert measured.seconds > 0  # the start-up time it added, shown in /v1/models


def test_forms_that_are_one_module_are_timed_once_and_a_tie_goes_to_the_form_with_less_arithmetic():
    shared = Marked(0.0)  # UOI fell back to VanI: one module under two names
    forms = {Variant.VANI: shared, Variant.UOI: shared, Variant.MARI: Marked(2.0)}
    timed: list[set[str]] = []

    def timer(calls, repeats, warmup):
        timed.append(set(calls))
        return {name: 1e-3 for name in calls}

    measured = measure_forms(forms, _example, [100], timer)
    assert timed == [{"mari", "vani"}]  # the shared module under its own name
    assert measured.fastest == {100: Variant.MARI}
    assert measured.to_dict() == {"100": {"fastest": "mari", "median_ms": {"vani": 1.0, "mari": 1.0}}}


def test_without_an_injected_timer_every_form_is_run_and_timed():
    forms = {Variant.VANI: Marked(0.0), Variant.MARI: Marked(2.0)}
    measured = measure_forms(forms, _example, [3])
    assert set(measured.milliseconds[3]) == {Variant.VANI, Variant.MARI}
    assert all(ms > 0 for ms in measured.milliseconds[3].values())
    assert isinstance(measured, FastestForms)


def test_forms_within_the_tie_band_of_the_fastest_go_to_the_one_with_less_arithmetic_and_beyond_it_the_fastest():
    inside, outside = 1.0 * (1 + AUTO_TIE) * 0.99, 1.0 * (1 + AUTO_TIE) * 1.01
    measured = FastestForms({1: {Variant.VANI: 1.0, Variant.UOI: inside, Variant.MARI: outside},
                             100: {Variant.VANI: outside, Variant.UOI: 1.0, Variant.MARI: inside},
                             1000: {Variant.VANI: 1.0, Variant.UOI: outside, Variant.MARI: outside}})
    assert measured.fastest == {1: Variant.UOI, 100: Variant.MARI, 1000: Variant.VANI}
