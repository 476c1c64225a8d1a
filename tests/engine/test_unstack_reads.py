"""An id matrix built with torch.stack and read back column by column folds like a concat."""

import torch
from torch import nn

from service.engine import Variant, reparameterize_all
from service.engine.capture import capture, describe_inputs
from service.engine.unstack_reads import unstack_reads


class StackedIds(nn.Module):
    """The adapter stacks user and item ids into one [N, 2] matrix; the model reads `ids[:, k]`."""

    def __init__(self) -> None:
        super().__init__()
        self.user_table, self.item_table = nn.Embedding(20, 16), nn.Embedding(30, 16)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = torch.stack([features["user_id"], features["item_id"]], dim=1)
        x = torch.cat([self.user_table(ids[:, 0]), self.item_table(ids[:, 1])], dim=1)
        return torch.sigmoid(self.mlp(x)).squeeze(1)


class StackedTokens(nn.Module):
    """A token set (FM-like): the stack feeds a reduction, not index reads, so it must stay a stack."""

    def __init__(self) -> None:
        super().__init__()
        self.user_table, self.item_table = nn.Embedding(20, 8), nn.Embedding(30, 8)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack([self.user_table(features["user_id"]), self.item_table(features["item_id"])], dim=1)
        return tokens.sum(dim=1).pow(2).sum(dim=1)


def _features(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"user_id": torch.randint(0, 20, (1,), generator=generator),
            "item_id": torch.randint(0, 30, (n,), generator=generator)}


def test_reads_of_a_stacked_id_matrix_let_mari_split_the_user_embedding() -> None:
    torch.manual_seed(0)
    model = StackedIds().eval()
    generator = torch.Generator().manual_seed(1)
    built = reparameterize_all(model, (_features(8, generator),), ["user_id"])
    assert built[Variant.MARI].report.variant is Variant.MARI
    assert built[Variant.MARI].flops(1000) < built[Variant.VANI].flops(1000)
    for n in (1, 7, 1000):
        features = _features(n, generator)
        tiled = {**features, "user_id": features["user_id"].expand(n)}
        with torch.no_grad():
            reference = model(tiled)
            for variant in Variant:
                assert (built[variant].module(features) - reference).abs().max().item() <= 1e-5


def test_a_stack_with_a_non_read_consumer_is_left_alone() -> None:
    model = StackedTokens().eval()
    example = _features(4, torch.Generator().manual_seed(2))
    layout = describe_inputs(model, (example,), {}, ["user_id"])
    captured = capture(model, layout, layout.tensor_leaves((example,), {}))
    assert unstack_reads(captured.graph_module) == 0
    assert any(node.target is torch.ops.aten.stack.default for node in captured.graph_module.graph.nodes)
