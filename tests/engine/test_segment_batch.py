"""Micro-batching keeps the user split (service/engine/segment_batch.py): several requests of different users
and sizes scored as one call equal each request scored by the user's own eager model on tiled inputs.

Every reference model and variant, float32 and float64, fresh weights per test function, case and dtype (its
three variants built from one capture) and fresh inputs per test; plus models the
cut must refuse (a listwise op mixing candidates) or run once per request (a user side that drops its batch
dimension).
"""

from __future__ import annotations

import functools
import zlib

import pytest
import torch
from torch import Tensor, nn

from service.engine import Reparameterized, Variant, reparameterize, reparameterize_all
from service.engine.segment_batch import BatchingError, SegmentBatched, UserSide, segment_batch
from tests.engine.conftest import CASES, ReferenceCase, assert_equivalent, build_model, reference_scores
from tests.engine.metadata_check import metadata_mismatches

VARIANTS = [Variant.VANI, Variant.UOI, Variant.MARI]
CHECK_SIZES = (1, 3, 5, 2)  # the build check's requests
REQUEST_SIZES = (7, 1, 30, 2, 1, 12)  # the test's requests: different users, N = 1 twice


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, parts)).encode()))


@functools.cache
def _built(test: str, case_name: str, dtype: torch.dtype) -> tuple[nn.Module, dict[Variant, Reparameterized]]:
    """The model of one (test function, case, dtype), fresh random weights, and its three variants from ONE capture
    (reparameterize_all, what a server builds at start-up): torch.export is the costly part, and reparameterize()
    per variant captured again and rebuilt VanI as the reference of UOI and MaRI. Each test function and dtype
    draws its own weights; the variant tests of one (test function, case, dtype) share them and draw their own
    inputs. Read-only to the tests: segment_batch cuts a variant's graph into new graphs, never rewriting it."""
    case = CASES[case_name]
    generator = _generator(test, "weights", case_name, dtype)
    model = build_model(case, dtype, generator)
    example = case.call_args(case.random_inputs(7, dtype, generator))
    return model, reparameterize_all(model, example, case.user_inputs, VARIANTS)


def _batched(case: ReferenceCase, result: Reparameterized, dtype: torch.dtype,
             generator: torch.Generator) -> SegmentBatched:
    runner = result.module
    checks = [(case.call_args(case.random_inputs(n, dtype, generator)), {}) for n in CHECK_SIZES]
    return segment_batch(runner.graph_module, runner.layout, runner.out_spec, result.batch, runner, checks)


# float32 for every reference model; float64 (1e-10) for the three whose cut is the most involved, to keep the
# suite's time: attention over a user sequence, one concat feeding many Linears, a fragmented concat.
FLOAT64_CASES = ("target_attention", "mmoe_shared_concat", "interleaved_concat")
DTYPE_CASES = [(name, torch.float32) for name in CASES] + [(name, torch.float64) for name in FLOAT64_CASES]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize(("case_name", "dtype"), DTYPE_CASES, ids=lambda value: str(value))
def test_requests_scored_together_equal_the_eager_model_on_each_request(case_name, variant, dtype):
    case = CASES[case_name]
    model, results = _built("scored_together", case_name, dtype)
    generator = _generator(case_name, variant.value, dtype)  # this variant's inputs: the checks, then the requests
    batched = _batched(case, results[variant], dtype, generator)
    assert batched.user_side is UserSide.BATCHED  # every reference model's user side runs at batch M
    requests = [case.random_inputs(n, dtype, generator) for n in REQUEST_SIZES]
    with torch.no_grad():
        outputs = batched([(case.call_args(values), {}) for values in requests])
    assert len(outputs) == len(requests)
    for values, output, n in zip(requests, outputs, REQUEST_SIZES):
        assert_equivalent(output, reference_scores(model, case, values, n), dtype, case.post_sigmoid)


def test_one_request_alone_through_the_batched_form_equals_the_eager_model():
    case = CASES["target_attention"]
    generator = _generator("alone")
    model = build_model(case, torch.float32, generator)
    example = case.call_args(case.random_inputs(7, torch.float32, generator))
    batched = _batched(case, reparameterize(model, example, case.user_inputs, Variant.MARI), torch.float32, generator)
    values = case.random_inputs(1, torch.float32, generator)
    with torch.no_grad():
        (output,) = batched([(case.call_args(values), {})])
    assert_equivalent(output, reference_scores(model, case, values, 1), torch.float32, case.post_sigmoid)


class PaddedUserVector(nn.Module):
    """A user side that builds a batch-sized tensor (`new_zeros(B, 2)`): the engine evaluates B at 1 there, so
    the user side cannot run at batch M and must run once per request."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Linear(4, 6)
        self.item = nn.Linear(5, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        u = torch.tanh(self.user(user))
        u = torch.cat([u, u.new_zeros(u.size(0), 2)], dim=1)  # [B, 8]
        return torch.sigmoid(self.out(torch.relu(self.item(item) + u))).squeeze(-1)


class RowZeroUserVector(nn.Module):
    """Reads row 0 of the user rows: the same for every tiled row of one request, the first request's once
    VanI's tiled rows of several requests are stacked."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Linear(4, 6)
        self.item = nn.Linear(5, 6)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        return torch.sigmoid((self.item(item) * torch.tanh(self.user(user))[0]).sum(-1))


class ListwiseSoftmax(nn.Module):
    """Scores normalised over the candidate list: scoring two lists together would mix them."""

    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Linear(4, 6)
        self.item = nn.Linear(5, 6)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        logits = (self.item(item) * self.user(user)).sum(-1)  # [N]
        return torch.softmax(logits, dim=0)


def _build_two_input(model: nn.Module, variant: Variant) -> tuple[nn.Module, SegmentBatched]:
    generator = torch.Generator().manual_seed(7)
    model = model.eval()
    example = (torch.randn(1, 4, generator=generator), torch.randn(6, 5, generator=generator))
    result = reparameterize(model, example, ["user"], variant)
    runner = result.module
    checks = [((torch.randn(1, 4, generator=generator), torch.randn(n, 5, generator=generator)), {})
              for n in CHECK_SIZES]
    return runner, segment_batch(runner.graph_module, runner.layout, runner.out_spec, result.batch, runner, checks)


@pytest.mark.parametrize("variant", [Variant.UOI, Variant.MARI], ids=lambda v: v.value)
def test_a_user_side_that_is_not_batch_polymorphic_runs_once_per_request_and_still_matches(variant):
    model = PaddedUserVector()
    _, batched = _build_two_input(model, variant)
    assert batched.user_side is UserSide.PER_REQUEST
    generator = torch.Generator().manual_seed(8)
    calls = [(torch.randn(1, 4, generator=generator), torch.randn(n, 5, generator=generator)) for n in (3, 1, 9)]
    with torch.no_grad():
        outputs = batched([(call, {}) for call in calls])
        for (user, item), output in zip(calls, outputs):
            eager = model(user.expand(item.size(0), -1), item)
            assert torch.allclose(output, eager, atol=1e-6, rtol=0)


def test_vani_reading_row_0_of_the_tiled_user_rows_is_refused():
    # VanI computes the user vector on N tiled rows and reads row 0: batched, row 0 is the first request's user.
    with pytest.raises(BatchingError, match="differs from alone"):
        _build_two_input(RowZeroUserVector(), Variant.VANI)


def test_a_model_that_mixes_candidates_of_one_list_is_refused_with_the_difference():
    with pytest.raises(BatchingError, match="differs from alone"):
        _build_two_input(ListwiseSoftmax(), Variant.MARI)


def test_requests_with_different_feature_shapes_cannot_share_a_call():
    _, batched = _build_two_input(PaddedUserVector(), Variant.UOI)
    calls = [((torch.randn(1, 4), torch.randn(3, 5)), {}), ((torch.randn(2, 4), torch.randn(3, 5)), {})]
    with pytest.raises(ValueError, match="user input 'user'"):
        batched(calls)


class _Checked(nn.Module):
    """One of the cut's graphs, each call first run node by node against its recorded metadata."""

    def __init__(self, graph_module: torch.fx.GraphModule, batch, n: int, found: list[str]) -> None:
        super().__init__()
        self.graph_module, self.batch, self.n, self.found = graph_module, batch, n, found

    def forward(self, *inputs):
        self.found.extend(metadata_mismatches(self.graph_module, list(inputs), self.batch, self.n))
        return self.graph_module(*inputs)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", list(CASES))
def test_the_cut_graphs_record_each_value_at_one_request(case_name, variant):
    """passes.py's metadata rule in the two graphs the cut makes: scoring one request (M = 1) of n candidates,
    every node's recorded value has the shape the real run gives, the nodes the cut itself makes included."""
    case, n = CASES[case_name], 3
    _, results = _built("metadata", case_name, torch.float32)
    result = results[variant]
    generator = _generator("metadata", case_name, variant.value)  # this variant's inputs: the checks, then the call
    batched = _batched(case, result, torch.float32, generator)
    found: list[str] = []
    batched.user_graph = _Checked(batched.user_graph, result.batch, n, found)
    batched.candidate_graph = _Checked(batched.candidate_graph, result.batch, n, found)
    with torch.no_grad():
        batched([(case.call_args(case.random_inputs(n, torch.float32, generator)), {})])
    assert found == []
