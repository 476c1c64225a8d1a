"""rewrite_left_matmuls: `matmul(W[m, k], X[B, k, n])` becomes one linear, with the same values, at any batch."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from service.engine import Variant, reparameterize_all
from service.engine.graph_tools import aten
from tests.engine.conftest import assert_equivalent


class LeftMatmul(nn.Module):
    """A raw Parameter kernel times a batch of column stacks (n = 1: DeepCTR's cross layer)."""

    def __init__(self, d: int, columns: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(d + 2, d) / d**0.5)
        self.columns = columns

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        x = torch.cat([user, item], dim=1)  # [B, d]
        stacked = x.unsqueeze(2) if self.columns == 1 else torch.stack([x * (j + 1) for j in range(self.columns)], 2)
        return torch.sigmoid(torch.matmul(self.kernel, stacked).sum(dim=(1, 2)))


def _left_matmuls(graph) -> list:
    return [n for n in graph.nodes if n.target == aten.matmul.default and n.args[0].meta["val"].dim() == 2]


@pytest.mark.parametrize("columns", [1, 3])
def test_left_matmul_becomes_linear_and_every_variant_equals_the_eager_model(columns, generator):
    model = LeftMatmul(6, columns).eval()
    example = (torch.randn(1, 2, generator=generator), torch.randn(5, 4, generator=generator))
    built = reparameterize_all(model, example, ["user"])
    for variant, result in built.items():
        assert result.report.variant == variant, result.report.fallback_reason
        graph = result.graph_module.graph
        assert _left_matmuls(graph) == []  # no matmul left to expand W to [B, m, k] for a bmm
        assert [n for n in graph.nodes if n.target == aten.linear.default]
        for n in (1, 9):
            user, item = torch.randn(1, 2, generator=generator), torch.randn(n, 4, generator=generator)
            with torch.inference_mode():
                got = result.module(user, item)
                want = model(user.expand(n, -1), item)
            assert_equivalent(got, want, torch.float32)


def test_mari_splits_the_cross_layer_product_over_a_user_candidate_concat():
    built = reparameterize_all(LeftMatmul(6, 1).eval(), (torch.randn(1, 2), torch.randn(5, 4)), ["user"])
    concats = built[Variant.MARI].report.concats
    assert any(k.rewritten and k.op == "linear" for c in concats for k in c.consumers), concats
