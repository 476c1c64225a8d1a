"""VariantRouter: the default variant, or a stable A/B arm per user; the one check of an A/B split."""

from __future__ import annotations

import pytest

from service.engine import Variant
from service.serving.routing import VariantRouter, check_ab_split


def test_router_is_deterministic_and_follows_the_split() -> None:
    router = VariantRouter(Variant.MARI, {Variant.MARI: 0.8, Variant.VANI: 0.2})
    again = VariantRouter(Variant.MARI, {Variant.VANI: 0.2, Variant.MARI: 0.8})
    arms = [router.route(f"user-{i}") for i in range(5000)]
    assert arms == [again.route(f"user-{i}") for i in range(5000)]
    assert 0.77 < arms.count(Variant.MARI) / len(arms) < 0.83
    assert set(arms) == {Variant.MARI, Variant.VANI}
    assert VariantRouter(Variant.UOI, {}).route("anyone") is Variant.UOI


@pytest.mark.parametrize("split", [{Variant.MARI: -1.0}, {Variant.MARI: 0.0}, {Variant.MARI: 1.0, Variant.VANI: -0.5}])
def test_negative_or_all_zero_weights_are_refused(split: dict[Variant, float]) -> None:
    with pytest.raises(ValueError, match="ab_split"):
        check_ab_split(split)
    with pytest.raises(ValueError, match="ab_split"):
        VariantRouter(Variant.MARI, split)


def test_an_empty_split_is_no_ab_test() -> None:
    assert check_ab_split({}) == {}
    assert VariantRouter(Variant.UOI, {}).to_dict() == {"default_variant": "uoi", "ab_split": {}}
