import json

import pytest
import torch

from service.features.schema import PADDING_ID, FeatureSchema, FeatureSpec, Kind, Side
from service.models import ARCHITECTURES
from tests.tiling import tile_user_features


def _small_schema() -> FeatureSchema:
    return FeatureSchema((
        FeatureSpec("user_id", Side.USER, Kind.SPARSE_ID, vocab_size=100),
        FeatureSpec("user_dense", Side.USER, Kind.DENSE, dim=5),
        FeatureSpec("user_seq", Side.USER, Kind.ID_SEQUENCE, vocab_size=40, max_len=7),
        FeatureSpec("item_id", Side.ITEM, Kind.SPARSE_ID, vocab_size=40),
        FeatureSpec("cross_dense", Side.CROSS, Kind.DENSE, dim=3),
    ))


@pytest.mark.parametrize("schema", [_small_schema()] + [a.default_config().schema() for a in ARCHITECTURES.values()])
def test_schema_round_trips_through_json(schema: FeatureSchema) -> None:
    restored = FeatureSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert restored == schema
    assert all(isinstance(spec.side, Side) and isinstance(spec.kind, Kind) for spec in restored.features)


def test_user_and_candidate_features_partition_the_schema_by_side() -> None:
    schema = _small_schema()
    assert [spec.name for spec in schema.user_features] == ["user_id", "user_dense", "user_seq"]
    assert [spec.name for spec in schema.candidate_features] == ["item_id", "cross_dense"]
    assert schema.get("item_id").vocab_size == 40
    with pytest.raises(KeyError, match="nope"):
        schema.get("nope")


def test_example_batch_has_user_features_at_batch_one_and_candidates_at_batch_n() -> None:
    batch = _small_schema().example_batch(9, torch.Generator().manual_seed(0))
    assert batch["user_id"].shape == (1,) and batch["user_id"].dtype == torch.int64
    assert batch["user_dense"].shape == (1, 5) and batch["user_dense"].dtype == torch.float32
    assert batch["user_seq"].shape == (1, 7) and batch["user_seq"].dtype == torch.int64
    assert batch["item_id"].shape == (9,) and batch["item_id"].dtype == torch.int64
    assert batch["cross_dense"].shape == (9, 3) and batch["cross_dense"].dtype == torch.float32


def test_example_batch_ids_are_in_vocabulary_and_sequences_are_right_padded() -> None:
    schema = _small_schema()
    for seed in range(20):
        batch = schema.example_batch(50, torch.Generator().manual_seed(seed))
        assert 0 <= batch["user_id"].min() and batch["user_id"].max() < 100
        assert 0 <= batch["item_id"].min() and batch["item_id"].max() < 40
        sequence = batch["user_seq"][0]
        real = sequence != PADDING_ID
        assert real[0], "a sequence holds at least one real id"
        assert sequence.max() < 40
        # once padding starts it never stops: pad on the right
        assert torch.equal(real, torch.sort(real.int(), descending=True, stable=True).values.bool())


def test_example_batch_is_deterministic_under_a_generator_seed() -> None:
    schema = _small_schema()
    first = schema.example_batch(4, torch.Generator().manual_seed(3))
    second = schema.example_batch(4, torch.Generator().manual_seed(3))
    assert all(torch.equal(first[name], second[name]) for name in schema.names)


def test_tile_user_features_expands_only_user_features() -> None:
    schema = _small_schema()
    tiled = tile_user_features(schema, schema.example_batch(6), 6)
    assert tiled["user_seq"].shape == (6, 7) and tiled["user_dense"].shape == (6, 5)
    assert tiled["item_id"].shape == (6,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": Kind.DENSE, "dim": 0}, "dim must be >= 1"),
        ({"kind": Kind.SPARSE_ID, "vocab_size": 0}, "vocab_size must be >= 1"),
        ({"kind": Kind.SPARSE_ID, "vocab_size": 5, "dim": 3}, "dim must be 1"),
        ({"kind": Kind.ID_SEQUENCE, "vocab_size": 5}, "max_len must be >= 1"),
        ({"kind": Kind.DENSE, "dim": 2, "vocab_size": 5}, "no vocab_size"),
    ],
)
def test_invalid_feature_spec_is_refused_with_the_field_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeatureSpec("f", Side.USER, **kwargs)


def test_duplicate_feature_names_are_refused() -> None:
    spec = FeatureSpec("f", Side.USER, Kind.DENSE, dim=2)
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSchema((spec, spec))


def test_from_dict_refuses_unknown_side_and_unknown_fields() -> None:
    good = FeatureSpec("f", Side.ITEM, Kind.DENSE, dim=2).to_dict()
    with pytest.raises(ValueError):
        FeatureSchema.from_dict({"features": [{**good, "side": "elsewhere"}]})
    with pytest.raises(ValueError, match="unknown fields"):
        FeatureSchema.from_dict({"features": [{**good, "colour": "blue"}]})
    with pytest.raises(ValueError, match="features"):
        FeatureSchema.from_dict({"specs": []})
