"""VariantRouter: the default variant, or a stable A/B arm per user; the one check of an A/B split."""

from __future__ import annotations

import math
import uuid

import pytest

from service.engine import Variant
from service.serving.routing import VariantRouter, VersionRouter, check_ab_split


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


def test_version_router_keeps_each_user_on_one_version_and_follows_the_weights() -> None:
    weights = {"v7": 0.95, "v8": 0.05}
    router, again = VersionRouter("v7", weights), VersionRouter("v7", dict(reversed(weights.items())))
    users = [uuid.uuid4().hex for _ in range(2000)]  # fresh ids each run
    picked = [router.route(user) for user in users]
    assert picked == [again.route(user) for user in users] == [router.route(user) for user in users]
    # binomial(2000, 0.05): mean 100, sd 9.7; six sd either side fails once in ~5e8 runs
    assert abs(picked.count("v8") - 100) < 6 * math.sqrt(2000 * 0.05 * 0.95)
    assert router.route(None) == "v7" and VersionRouter("v7", {}).route(users[0]) == "v7"


def test_a_users_version_is_independent_of_its_variant_arm() -> None:
    versions = VersionRouter("v1", {"v1": 0.5, "v2": 0.5})
    variants = VariantRouter(Variant.MARI, {Variant.MARI: 0.5, Variant.VANI: 0.5})
    users = [uuid.uuid4().hex for _ in range(2000)]
    both = sum(1 for user in users if versions.route(user) == "v2" and variants.route(user) is Variant.VANI)
    # independent: binomial(2000, 0.25), mean 500, sd 19.4 (the same hash would put ~1,000 users in both)
    assert abs(both - 500) < 6 * math.sqrt(2000 * 0.25 * 0.75)


def test_version_weights_are_checked_like_an_ab_split() -> None:
    with pytest.raises(ValueError, match="versions weights"):
        VersionRouter("v1", {"v1": 0.0, "v2": 0.0})
    assert VersionRouter("v1", {"v1": 3, "v2": 1, "v3": 0}).shares == {"v1": 0.75, "v2": 0.25}
