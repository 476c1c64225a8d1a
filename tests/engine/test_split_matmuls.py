"""split_concat_matmuls (docs/ARCHITECTURE.md section 2, step 6) on tiny captured graphs: what it splits,
what stops it, horizontal fusion, BatchNorm folding, and that the rewritten graph computes the same scores."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from service.engine.split_matmuls import SplitOptions, split_concat_matmuls
from tests.engine.captured import PassInput, pass_input

aten = torch.ops.aten
USER, CAND = 2, 3


class SharedConcat(nn.Module):
    """cat(user, cand) read by two Linears and by a LayerNorm (which mixes the user and candidate columns)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(USER + CAND, 4)
        self.second = nn.Linear(USER + CAND, 2)
        self.norm = nn.LayerNorm(USER + CAND)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        x = torch.cat([user, cand], dim=1)
        return self.first(x).sum(1) + self.second(x).sum(1) + self.norm(x).sum(1)


class BatchNormBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(USER + CAND)
        self.fc = nn.Linear(USER + CAND, 3)
        nn.init.uniform_(self.bn.running_mean, -1.0, 1.0)
        nn.init.uniform_(self.bn.running_var, 0.5, 2.0)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        return self.fc(self.bn(torch.cat([user, cand], dim=1)))


class CandidateOnlyConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * CAND, 1)

    def forward(self, user: Tensor, cand: Tensor) -> Tensor:
        return self.fc(torch.cat([cand, cand * 2], dim=1)) + user.sum(1, keepdim=True)


def _example(n: int = 4) -> tuple[Tensor, Tensor]:
    return torch.randn(1, USER), torch.randn(n, CAND)


def _captured(model: nn.Module) -> PassInput:
    return pass_input(model, _example(), ["user"])


def _scores(captured: PassInput, user: Tensor, cand: Tensor) -> Tensor:
    with torch.no_grad():
        scores: Tensor = captured.graph_module(user, cand)  # the captured graph returns the model's output
    return scores


def test_report_names_the_concat_widths_and_each_consumer_split_or_not_with_the_reason():
    captured = _captured(SharedConcat())
    (concat,) = split_concat_matmuls(captured.graph_module, captured.users, captured.batch)
    assert (concat.user_width, concat.candidate_width) == (USER, CAND)
    rewritten = sorted((c.op, c.out_features) for c in concat.consumers if c.rewritten)
    assert rewritten == [("linear", 2), ("linear", 4)]
    (kept,) = [c for c in concat.consumers if not c.rewritten]
    assert kept.op == "layer_norm" and "normalizes across the concatenated feature axis" in kept.reason


def test_consumers_of_one_concat_share_one_user_gemm_and_one_candidate_gemm():
    captured = _captured(SharedConcat())
    split_concat_matmuls(captured.graph_module, captured.users, captured.batch)
    gemm_weights = sorted(tuple(n.args[1].meta["val"].shape) for n in captured.nodes(aten.linear.default))
    assert gemm_weights == [(4 + 2, USER), (4 + 2, CAND)]  # both Linears' rows stacked, one GEMM per side


def test_without_fusion_each_consumer_gets_its_own_user_and_candidate_gemm():
    captured = _captured(SharedConcat())
    options = SplitOptions(fuse_consumers=False)
    split_concat_matmuls(captured.graph_module, captured.users, captured.batch, options)
    assert len(captured.nodes(aten.linear.default)) == 4


def test_the_split_graph_computes_the_same_scores_as_the_captured_one():
    model = SharedConcat().eval()
    captured = _captured(model)
    user, cand = _example(7)
    before = _scores(captured, user, cand)
    split_concat_matmuls(captured.graph_module, captured.users, captured.batch)
    torch.testing.assert_close(_scores(captured, user, cand), before)


def test_an_eval_batch_norm_between_the_concat_and_the_linear_is_folded_into_its_weights():
    model = BatchNormBetween().eval()
    captured = _captured(model)
    (concat,) = split_concat_matmuls(captured.graph_module, captured.users, captured.batch)
    assert [(c.op, c.rewritten) for c in concat.consumers] == [("linear", True)]
    assert not [n for n in captured.graph_module.graph.nodes if "batch_norm" in str(n.target)]
    user, cand = _example(5)
    with torch.no_grad():
        reference = model(user.expand(5, -1), cand)
    torch.testing.assert_close(_scores(captured, user, cand), reference)


def test_a_concat_of_candidate_parts_only_is_left_alone():
    captured = _captured(CandidateOnlyConcat())
    assert split_concat_matmuls(captured.graph_module, captured.users, captured.batch) == []
    (linear,) = captured.nodes(aten.linear.default)
    assert linear.args[0].target == aten.cat.default


def test_the_cost_rule_leaves_a_split_whole_when_it_saves_less_than_the_threshold_and_says_so():
    captured = _captured(SharedConcat())
    saved = 2 * 99 * USER * (4 + 2)  # the user GEMM's 99 extra rows at N = 100, both fused Linears
    options = SplitOptions(min_saved_flops=saved + 1)
    (concat,) = split_concat_matmuls(captured.graph_module, captured.users, captured.batch, options)
    linears = [c for c in concat.consumers if c.op == "linear"]
    assert len(linears) == 2 and not any(c.rewritten for c in linears)
    assert all(f"saves {saved:,} FLOPs at N = 100" in c.reason for c in linears), linears
    (linear_cat,) = {n.args[0] for n in captured.nodes(aten.linear.default)}
    assert linear_cat.target == aten.cat.default  # both Linears still read the whole concat


def test_the_cost_rule_splits_when_the_saving_reaches_the_threshold():
    captured = _captured(SharedConcat())
    options = SplitOptions(min_saved_flops=2 * 99 * USER * (4 + 2))
    (concat,) = split_concat_matmuls(captured.graph_module, captured.users, captured.batch, options)
    assert sorted(c.out_features for c in concat.consumers if c.rewritten) == [2, 4]
