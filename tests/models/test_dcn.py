import pytest
from torch import nn

from service.features.schema import Side
from service.models.dcn import INTERLEAVED_ORDER, DCNConfig, DCNRanker, concat_widths
from tests.models.conftest import small_model


def test_default_layout_interleaves_user_item_and_cross_features() -> None:
    sides = [side for _, side, _ in concat_widths(DCNConfig())]
    switches = sum(1 for a, b in zip(sides, sides[1:]) if (a is Side.USER) != (b is Side.USER))
    assert switches >= 6, "user and candidate blocks alternate many times"
    assert DCNConfig().schema().names == INTERLEAVED_ORDER


def test_default_user_side_is_about_70_percent_of_the_concat() -> None:
    widths = concat_widths(DCNConfig())
    user = sum(w for _, side, w in widths if side is Side.USER)
    assert 0.65 <= user / sum(w for _, _, w in widths) <= 0.75


def test_batchnorm_over_the_concat_feeds_the_cross_and_deep_networks() -> None:
    _, config, model, _ = small_model("dcn")
    width = sum(w for _, _, w in concat_widths(config))
    assert isinstance(model.norm, nn.BatchNorm1d) and model.norm.num_features == width
    assert len(model.cross.layers) == config.num_cross_layers == 2
    assert model.deep[0].in_features == width
    assert not model.training


def test_feature_order_must_be_a_permutation_of_the_catalogue() -> None:
    with pytest.raises(ValueError, match="feature_order"):
        DCNConfig(feature_order=INTERLEAVED_ORDER[:-1])
    DCNRanker(DCNConfig(feature_order=tuple(reversed(INTERLEAVED_ORDER)), user_vocab=10, item_vocab=10))
