"""FLOPs of graphs with data-dependent (unbacked) sizes: count what can be counted, name the rest, never crash.

`x[mask]`, `torch.nonzero` and `torch.split` by tensor-valued lengths give tensors whose sizes are only known
at run time. The engine captures such models; the FLOPs counter must still count every other node and say
which nodes it could not count (so the total is a lower bound), and the analyzer must show it.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

from service.engine import Variant, analyze, reparameterize_all
from service.engine.analysis import Analysis, format_analysis
from service.engine.flops import node_flops
from tests.engine.conftest import assert_equivalent

VARIANTS = [Variant.VANI, Variant.UOI, Variant.MARI]
USER, CAND, HIDDEN = 2, 4, 8
aten = torch.ops.aten


class MaskedBoost(nn.Module):
    """A bonus from the candidates whose first feature is positive (`h[mask]`: data-dependent rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(USER + CAND, HIDDEN), nn.Linear(HIDDEN, 1), nn.Linear(HIDDEN, 1)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        h = torch.relu(self.fc1(torch.cat([user, cand], dim=1)))
        bonus = self.fc2(h[cand[:, 0] > 0]).sum()
        return torch.sigmoid(self.fc3(h) + bonus)


class NonzeroRescore(nn.Module):
    """Rescore the candidates `torch.nonzero` picks and scatter the result back (index_add)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(USER + CAND, HIDDEN), nn.Linear(HIDDEN, 1), nn.Linear(HIDDEN, 1)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        h = torch.relu(self.fc1(torch.cat([user, cand], dim=1)))
        idx = torch.nonzero(cand[:, 1] > 0.3).squeeze(1)
        picked = torch.sigmoid(self.fc2(h[idx]))
        boost = torch.zeros(h.shape[0], 1, dtype=h.dtype).index_add(0, idx, picked)
        return torch.sigmoid(self.fc3(h) + boost)


class SplitByLengths(nn.Module):
    """Candidate columns split into two groups by tensor-valued lengths (`lengths[0].tolist()`), each pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(USER + 2 + 2, HIDDEN)
        self.out = nn.Linear(HIDDEN, 1)

    def forward(self, user: Tensor, cand: Tensor, lengths: Tensor) -> Tensor:
        a, b = torch.split(cand, lengths[0].tolist(), dim=1)
        pooled = torch.cat([a.sum(1, keepdim=True), b.relu().sum(1, keepdim=True)], dim=1)
        h = torch.relu(self.fc(torch.cat([user, pooled, cand[:, :2]], dim=1)))
        return torch.sigmoid(self.out(h))


def _args(name: str, n: int, dtype: torch.dtype, generator: torch.Generator) -> tuple:
    user = torch.randn(1, USER, generator=generator, dtype=torch.float64).to(dtype)
    cand = torch.randn(n, CAND, generator=generator, dtype=torch.float64).to(dtype)
    if name == "split_by_lengths":
        return user, cand, torch.tensor([[1, 3]]).expand(n, 2)
    return user, cand


MODELS = {"masked_boost": MaskedBoost, "nonzero_rescore": NonzeroRescore, "split_by_lengths": SplitByLengths}


@functools.cache
def built(name: str, dtype: torch.dtype):
    with torch.random.fork_rng():
        torch.manual_seed(len(name))
        model = MODELS[name]().to(dtype).eval()
    return model, reparameterize_all(model, _args(name, 7, dtype, torch.Generator().manual_seed(3)), ["user"])


@pytest.mark.parametrize("name", list(MODELS))
def test_data_dependent_model_is_captured_and_every_variant_built(name):
    _, results = built(name, torch.float32)
    for variant in VARIANTS:
        report = results[variant].report
        assert (report.variant, report.fallback_reason) == (variant, None)
        assert results[variant].graph_module is not None


@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("name", list(MODELS))
def test_variants_match_the_eager_model(name, variant, n, generator):
    model, results = built(name, torch.float32)
    args = _args(name, n, torch.float32, generator)
    tiled = (args[0].expand(n, -1), *args[1:])
    with torch.inference_mode():
        assert_equivalent(results[variant].module(*args), model(*tiled), torch.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_flops_count_what_they_can_and_name_the_data_dependent_nodes(name):
    _, results = built(name, torch.float32)
    for variant in VARIANTS:
        count = results[variant].flop_count(1000)
        assert isinstance(count.flops, int) and count.flops > 0
        assert count.flops == results[variant].flops(1000)
        assert count.uncounted and not count.exact
        graph = results[variant].graph_module.graph
        by_name = {node.name: node for node in graph.nodes}
        for node_name in count.uncounted:
            node = by_name[node_name]
            assert node_flops(node, results[variant].batch, 1000) is None
            values = [node.meta["val"], *(i.meta.get("val") for i in node.all_input_nodes)]  # reductions: input
            sizes = [s for v in values if isinstance(v, torch.Tensor) for s in v.shape if isinstance(s, torch.SymInt)]
            assert any(s.node.expr.free_symbols - {results[variant].batch} for s in sizes), node.format_node()
    assert results[Variant.MARI].flops(1000) < results[Variant.VANI].flops(1000)  # the split of fc1 still counts


def test_masked_boost_counted_part_matches_a_hand_count():
    n = 1000
    _, results = built("masked_boost", torch.float32)
    fc1 = 2 * n * (USER + CAND) * HIDDEN + n * HIDDEN
    relu, mask = n * HIDDEN, n  # relu; cand[:, 0] > 0
    fc3, add, sigmoid = 2 * n * HIDDEN + n, n, n
    count = results[Variant.VANI].flop_count(n)
    assert count.flops == fc1 + relu + mask + fc3 + add + sigmoid
    ops = {node.name: node.target for node in results[Variant.VANI].graph_module.graph.nodes}
    assert sorted(str(ops[name]) for name in count.uncounted) == ["aten.linear.default", "aten.sum.default"]


def test_zero_flop_ops_on_data_dependent_sizes_are_counted_as_zero_not_unknown():
    _, results = built("nonzero_rescore", torch.float32)
    vani = results[Variant.VANI]
    nodes = {node.target: node for node in vani.graph_module.graph.nodes}
    for target in (aten.nonzero.default, aten.index.Tensor):
        assert node_flops(nodes[target], vani.batch, 1000) == 0


def test_analysis_reports_the_uncounted_nodes():
    model = NonzeroRescore().eval()
    analysis = analyze(model, _args("nonzero_rescore", 5, torch.float32, torch.Generator().manual_seed(0)), ["user"])
    data = analysis.to_dict()
    for variant in VARIANTS:
        row = data["flops"][variant.value]
        assert row["flops"] > 0 and row["uncounted_nodes"] == len(row["uncounted"]) > 0
    assert "data-dependent sizes not counted" in format_analysis(analysis)


def test_a_model_without_data_dependent_sizes_is_counted_exactly():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(USER + CAND, 1)

        def forward(self, user: Tensor, cand: Tensor) -> Tensor:
            return self.fc(torch.cat([user, cand], dim=1))

    results = reparameterize_all(Plain().eval(), _args("plain", 4, torch.float32, torch.Generator()), ["user"])
    analysis = Analysis(1000, results)
    for variant in VARIANTS:
        assert results[variant].flop_count(1000).exact
        assert analysis.to_dict()["flops"][variant.value]["uncounted_nodes"] == 0
    assert "not counted" not in format_analysis(analysis)
