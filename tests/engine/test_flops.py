"""The analyzer's FLOPs against a hand count, and its rewritten / not-rewritten lists."""

import torch
from torch import nn

from service.engine import Variant, analyze

USER, CAND, HIDDEN, OUT = 6, 3, 5, 2


class TwoLayer(nn.Module):
    """cat(user[6], cand[3]) -> Linear(9, 5) -> ReLU -> Linear(5, 2), plus a LayerNorm branch that must stop."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(USER + CAND, HIDDEN)
        self.second = nn.Linear(HIDDEN, OUT)
        self.norm = nn.LayerNorm(USER + CAND)
        self.side = nn.Linear(USER + CAND, 1, bias=False)

    def forward(self, user: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        x = torch.cat([user, cand], dim=-1)
        return self.second(torch.relu(self.first(x))) + self.side(self.norm(x))


def _example(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, USER), torch.randn(n, CAND)


def test_flops_match_a_hand_count_for_every_variant():
    n = 1000
    analysis = analyze(TwoLayer(), _example(), ["user"], n=n)
    d = USER + CAND
    first = 2 * n * d * HIDDEN + n * HIDDEN  # GEMM + bias
    relu = n * HIDDEN
    second = 2 * n * HIDDEN * OUT + n * OUT
    norm = 5 * n * d
    side = 2 * n * d * 1
    add = n * OUT
    vani = first + relu + second + norm + side + add
    assert analysis.flops(Variant.VANI) == vani
    assert analysis.flops(Variant.UOI) == vani  # UOI only saves user-only sub-graphs; here there are none
    # MaRI: user GEMM once (with the bias) + candidate GEMM whose bias is the user part (one add per output)
    mari_first = (2 * USER * HIDDEN + HIDDEN) + (2 * n * CAND * HIDDEN + n * HIDDEN)
    assert analysis.flops(Variant.MARI) == vani - first + mari_first


def test_report_lists_the_split_linear_and_the_layer_norm_that_stopped():
    data = analyze(TwoLayer(), _example(), ["user"], n=100).to_dict()
    (concat,) = data["concats"]
    assert (concat["user_width"], concat["candidate_width"]) == (USER, CAND)
    rewritten = [c for c in concat["consumers"] if c["rewritten"]]
    kept = [c for c in concat["consumers"] if not c["rewritten"]]
    assert [(c["op"], c["out_features"]) for c in rewritten] == [("linear", HIDDEN)]
    assert rewritten[0]["flops_before"] == 2 * 100 * (USER + CAND) * HIDDEN
    assert rewritten[0]["flops_after"] == 2 * (USER + 100 * CAND) * HIDDEN
    assert len(kept) == 1 and "layer_norm" in kept[0]["reason"]


def test_unreorganized_layout_runs_one_gemm_per_fragment_and_still_matches():
    from service.engine import SplitOptions, reparameterize

    class Interleaved(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2 + 3 + 2 + 3, 4)

        def forward(self, u1, c1, u2, c2):
            return self.fc(torch.cat([u1, c1, u2, c2], dim=-1))

    model = Interleaved().eval()
    args = (torch.randn(1, 2), torch.randn(5, 3), torch.randn(1, 2), torch.randn(5, 3))
    reference = model(args[0].expand(5, -1), args[1], args[2].expand(5, -1), args[3])
    for reorganize, gemms in ((True, 2), (False, 4)):
        options = SplitOptions(reorganize_layout=reorganize)
        result = reparameterize(model, args, ["u1", "u2"], Variant.MARI, options=options)
        linears = [n for n in result.graph_module.graph.nodes if n.target == torch.ops.aten.linear.default]
        assert len(linears) == gemms
        torch.testing.assert_close(result.module(*args), reference)
