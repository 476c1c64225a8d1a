"""A variant's status is made anew by each stage that learns something (engine build, warm-up, batching) and
shows the JSON /v1/models has always shown."""

from __future__ import annotations

from service.engine import Variant
from service.engine.report import EngineReport
from service.serving.variant_status import Batching, VariantStatus


def _built(variant: Variant, fallback: str | None = None) -> VariantStatus:
    runs = Variant.VANI if fallback else variant
    return VariantStatus.built(EngineReport(variant, runs, ["user_id"], fallback_reason=fallback))


def test_a_built_variant_runs_as_the_engine_built_it() -> None:
    assert _built(Variant.MARI).runs_as is Variant.MARI
    refused = _built(Variant.MARI, "not exportable")
    assert (refused.runs_as, refused.fallback_reason) == (Variant.VANI, "not exportable")


def test_the_warm_up_fallback_is_a_new_status_and_the_json_says_what_serves() -> None:
    built = _built(Variant.UOI)
    fallen = built.served_as_vani("warm-up at N=1: differs")
    assert built.runs_as is Variant.UOI and built.fallback_reason is None  # never edited in place
    shown = fallen.to_dict()
    assert shown["requested"] == "uoi" and shown["variant"] == "vani"
    assert shown["fallback_reason"] == "warm-up at N=1: differs"
    assert "batching" not in shown  # batching off


def test_batching_shows_why_not_or_how() -> None:
    status = _built(Variant.MARI)
    assert status.with_batching(Batching(False, reason="eager"))\
        .to_dict()["batching"] == {"batched": False, "reason": "eager"}
    assert status.with_batching(Batching(True, user_side="batch_m", user_values_gathered=2)).to_dict()["batching"] \
        == {"batched": True, "user_side": "batch_m", "user_values_gathered": 2}
