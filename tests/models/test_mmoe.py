import pytest
import torch
from torch import nn

from service.features.schema import PADDING_ID, Side
from service.models.mmoe import MMoEConfig, MMoERanker, concat_widths
from tests.models.conftest import small_model, tiled_batch


def test_default_concat_is_about_1170_wide_with_user_side_between_75_and_80_percent() -> None:
    widths = concat_widths(MMoEConfig())
    total = sum(width for _, _, width in widths)
    user = sum(width for _, side, width in widths if side is Side.USER)
    assert 1100 <= total <= 1250
    assert 0.75 <= user / total <= 0.80


def test_default_schema_has_user_id_ten_profile_fields_dense_stats_and_a_50_item_sequence() -> None:
    features = MMoEConfig().schema()
    user_sparse = [s for s in features.user_features if s.kind.value == "sparse_id"]
    assert user_sparse[0].name == "user_id" and len(user_sparse) == 11
    assert features.get("user_seq").max_len == 50
    assert features.get("user_seq").vocab_size == features.get("item_id").vocab_size
    assert {s.name for s in features.candidate_features} == {
        "item_id", "item_author", "item_category", "item_dense", "cross_dense"}


def test_experts_and_gates_read_one_concat_of_the_declared_width() -> None:
    _, config, model, _ = small_model("mmoe")
    width = sum(w for _, _, w in concat_widths(config))
    assert model.concat_dim == width
    assert len(model.mmoe.experts) == config.num_experts
    first_layers = [expert[0] for expert in model.mmoe.experts] + list(model.mmoe.gates.values())
    assert all(isinstance(layer, nn.Linear) and layer.in_features == width for layer in first_layers)


def test_default_weights_stay_under_30_megabytes() -> None:
    model = MMoERanker(MMoEConfig())
    assert sum(p.numel() * p.element_size() for p in model.parameters()) < 30e6


def test_padded_positions_of_the_sequence_do_not_change_scores() -> None:
    _, _, model, schema = small_model("mmoe")
    batch = tiled_batch(schema, 6)
    sequence = batch["user_seq"].clone()
    sequence[:, 3:] = PADDING_ID
    batch = {**batch, "user_seq": sequence, "item_id": batch["item_id"].clamp(min=1)}
    with torch.no_grad():
        before = model(batch)
        model.item_id.weight[PADDING_ID] += 5.0  # the padding row never enters pooling or attention
        after = model(batch)
    for task in before:
        torch.testing.assert_close(before[task], after[task], rtol=0, atol=1e-6)


def test_attention_over_a_fully_padded_sequence_stays_finite() -> None:
    _, _, model, schema = small_model("mmoe")
    batch = tiled_batch(schema, 3)
    with torch.no_grad():
        scores = model({**batch, "user_seq": torch.zeros_like(batch["user_seq"])})
    assert all(torch.isfinite(value).all() for value in scores.values())


def test_sequence_affects_scores_through_the_shared_item_table() -> None:
    _, _, model, schema = small_model("mmoe")
    batch = tiled_batch(schema, 3)
    with torch.no_grad():
        base = model(batch)
        other = model({**batch, "user_seq": (batch["user_seq"] % 7 + 1) * (batch["user_seq"] != 0)})
    assert any(not torch.allclose(base[t], other[t]) for t in base)


def test_config_refuses_mismatched_task_weights() -> None:
    with pytest.raises(ValueError, match="task_weights"):
        MMoEConfig(tasks=("click", "like"), task_weights=(1.0,))
