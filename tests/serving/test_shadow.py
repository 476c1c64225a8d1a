"""ShadowComparator without a server: sampling and the bounded queue (comparisons: tests/api/test_shadow.py)."""

from __future__ import annotations

from service.engine import Variant
from service.serving.metrics import ServiceMetrics
from service.serving.shadow import ShadowComparator, ShadowJob


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    metrics = ServiceMetrics()
    # not started
    comparator = ShadowComparator(Variant.VANI, 1.0, queue_size=2, tolerance=1e-5, metrics=metrics, model="m")
    job = ShadowJob("r", None, Variant.MARI, Variant.VANI, {}, {})  # type: ignore[arg-type]
    assert [comparator.submit(job) for _ in range(5)] == [True, True, False, False, False]
    assert metrics.registry is not None and metrics.registry.get_sample_value("ranker_shadow_dropped_total") == 3


def test_only_requests_served_by_another_variant_are_sampled() -> None:
    comparator = ShadowComparator(Variant.VANI, 1.0, queue_size=2, tolerance=1e-5, metrics=ServiceMetrics(), model="m")
    assert comparator.sample(Variant.MARI) is Variant.VANI and comparator.sample(Variant.VANI) is None
    off = ShadowComparator(None, 1.0, queue_size=2, tolerance=1e-5, metrics=ServiceMetrics(), model="m")
    assert not off.enabled and off.sample(Variant.MARI) is None


def test_a_new_fleet_config_switches_the_shadow_variant_and_rate() -> None:
    comparator = ShadowComparator(None, 0.0, queue_size=2, tolerance=1e-5, metrics=ServiceMetrics(), model="m")
    comparator.configure(Variant.UOI, 1.0)
    assert comparator.enabled and comparator.sample(Variant.MARI) is Variant.UOI
    comparator.configure(Variant.UOI, 0.0)
    assert not comparator.enabled and comparator.sample(Variant.MARI) is None
