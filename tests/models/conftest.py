import pytest
import torch
from torch import nn

from service.features.schema import FeatureSchema
from service.models import ARCHITECTURES, Architecture, RankerConfig
from tests.models.small_configs import small_config
from tests.tiling import tile_user_features


class TileUserFeatures(nn.Module):
    """Serving-shaped wrapper: user features at batch 1, candidates at batch n, tiled inside."""

    def __init__(self, model: nn.Module, schema: FeatureSchema) -> None:
        super().__init__()
        self.model = model
        self.user_names = tuple(spec.name for spec in schema.user_features)
        self.reference = schema.candidate_features[0].name

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = features[self.reference].shape[0]
        return self.model(
            {name: value.expand(n, *value.shape[1:]) if name in self.user_names else value
             for name, value in features.items()}
        )


def small_model(name: str, seed: int = 0) -> tuple[Architecture, RankerConfig, nn.Module, FeatureSchema]:
    arch = ARCHITECTURES[name]
    config = small_config(name)
    torch.manual_seed(seed)
    model = arch.build(config).eval()
    _randomize_batchnorm(model)
    return arch, config, model, config.schema()


def _randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BatchNorm is not the identity."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            with torch.no_grad():
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()


def tiled_batch(schema: FeatureSchema, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return tile_user_features(schema, schema.example_batch(n, torch.Generator().manual_seed(seed)), n)


@pytest.fixture(params=sorted(ARCHITECTURES))
def architecture_name(request: pytest.FixtureRequest) -> str:
    return request.param
