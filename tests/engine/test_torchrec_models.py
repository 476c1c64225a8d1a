"""torchrec rankers (torchrec's own DLRM and DeepFM, EmbeddingBagCollection, EmbeddingCollection) through the engine.

torchrec is a required test dependency (the Makefile installs it, CPU-only): without it these tests fail at
import, they are never skipped. Each model gets fresh random weights and is built once (all three variants
from one capture, at an example batch of 7 candidates); every test draws its own inputs. The reference is
always the user's own eager model (adapter + torchrec modules) on user features tiled to N rows.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import pytest
import sympy
import torch
import torch.fx as fx
from torch import Tensor, nn

from service.engine import Reparameterized, Variant, reparameterize_all
from service.engine.graph_tools import aten, depends_on, shape_exprs
from tests.engine.conftest import assert_equivalent
from tests.engine.torchrec_models import CASES, TorchrecCase, build

VARIANTS = [Variant.VANI, Variant.UOI, Variant.MARI]
CASE_NAMES = list(CASES)
BUILD_N = 7
LOOKUPS = (
    aten.embedding.default,
    aten.embedding_bag.default,
    aten.embedding_bag.padding_idx,
    aten._embedding_bag.default,
    aten._embedding_bag_forward_only.default,
)
# What the jagged fold must find: every case has per-key sizes read back with .item() and a split of the
# values concat; pooled collections also fold embedding_bag, the sequence one its padded-dense conversion.
EXPECTED_FOLDS = {
    "dlrm": {"item", "split", "embedding_bag"},
    "deepfm": {"item", "split", "embedding_bag"},
    "ebc_mlp": {"item", "split", "embedding_bag"},
    "multi_hot": {"row", "item", "split", "embedding_bag"},  # per-key rows first: the tags' sizes stay unknown
    "ec_seq": {"item", "split", "jagged_to_padded_dense"},
    "ec_seq_longest": {"item", "split", "jagged_to_padded_dense"},
}


@dataclass
class Built:
    case: TorchrecCase
    model: nn.Module
    results: dict[Variant, Reparameterized]


@functools.cache
def built(case_name: str) -> Built:
    case = CASES[case_name]
    generator = torch.Generator().manual_seed(zlib.crc32(case_name.encode()))
    model = build(case, generator)
    example = case.random_inputs(BUILD_N, generator)
    return Built(case, model, reparameterize_all(model, (example,), case.user_inputs))


# -- which inputs each embedding lookup reads, and at how many rows it runs ---------------------------


@dataclass(frozen=True)
class Lookup:
    node: str
    reads: frozenset[str]  # names of the inputs its ids derive from
    rows: sympy.Expr | int  # rows of its output: an int when it runs once per request


def lookups(result: Reparameterized) -> list[Lookup]:
    """Every embedding / embedding_bag in the variant's graph, with the inputs its ids read and its rows."""
    graph = result.graph_module.graph
    layout = result.module.layout
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    names = {n: layout.leaf_names[layout.tensor_positions[j]].rsplit(".", 1)[-1] for j, n in enumerate(placeholders)}
    found = []
    for node in graph.nodes:
        if node.target not in LOOKUPS:
            continue
        value = node.meta["val"]
        out = value[0] if isinstance(value, (tuple, list)) else value
        keys = frozenset(names[p] for p in _placeholders_behind(node.args[1]))
        found.append(Lookup(node.name, keys, shape_exprs(out)[0]))
    return found


def _placeholders_behind(node: fx.Node) -> set[fx.Node]:
    seen, stack, found = set(), [node], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            found.add(current)
        stack.extend(current.all_input_nodes)
    return found


def runs_once_per_request(lookup: Lookup, batch: sympy.Symbol) -> bool:
    """A lookup runs once per request when its output rows do not grow with the candidate count N."""
    return not depends_on(lookup.rows, batch)


# -- equivalence -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_variant_matches_the_eager_torchrec_model_on_tiled_user_features(case_name, variant, n, generator):
    b = built(case_name)
    values = b.case.random_inputs(n, generator)
    with torch.inference_mode():
        actual = b.results[variant].module(values)
    with torch.no_grad():
        reference = b.model(b.case.tiled(values, n))
    assert reference.shape == (n,)
    assert_equivalent(actual, reference, torch.float32)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_requested_variant_is_built_without_falling_back(case_name, variant):
    report = built(case_name).results[variant].report
    assert (report.variant, report.fallback_reason) == (variant, None)


# -- user lookups run once ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [Variant.UOI, Variant.MARI], ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_each_user_key_is_looked_up_once_per_request(case_name, variant):
    b = built(case_name)
    result = b.results[variant]
    found = lookups(result)
    user = set(b.case.user_inputs)
    for key, ids_per_request in b.case.user_lookups.items():
        own = [lk for lk in found if lk.reads == {key}]
        assert len(own) == 1, f"{key}: lookups {own}"
        assert runs_once_per_request(own[0], result.batch), f"{key} is looked up at {own[0].rows} rows"
        assert own[0].rows == ids_per_request
    for lk in found:  # and no lookup mixes user ids with candidate ids any more
        assert lk.reads <= user or not lk.reads & user, lk
        if not lk.reads & user:
            assert not runs_once_per_request(lk, result.batch), lk  # candidate keys: N rows


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_vani_looks_up_every_key_at_batch_n(case_name):
    result = built(case_name).results[Variant.VANI]
    found = lookups(result)
    assert found
    assert not any(runs_once_per_request(lk, result.batch) for lk in found)


# -- report and arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [Variant.UOI, Variant.MARI], ids=lambda v: v.value)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_report_lists_the_jagged_folds(case_name, variant):
    report = built(case_name).results[variant].report
    ops = {fold.op for fold in report.jagged}
    assert ops == EXPECTED_FOLDS[case_name], report.jagged
    assert "jagged" in report.to_dict()


def test_vani_stays_the_captured_graph():
    for case_name in CASE_NAMES:
        assert built(case_name).results[Variant.VANI].report.jagged == []


# VanI's count is a lower bound where a size is data-dependent in the captured graph (the padded length of
# ec_seq_longest: the attention over the sequence is uncounted there), so that case is not compared.
FULLY_COUNTED = [name for name in CASE_NAMES if name != "ec_seq_longest"]


@pytest.mark.parametrize("case_name", FULLY_COUNTED)
def test_mari_does_less_arithmetic_than_vani_at_1000_candidates(case_name):
    # every case has user features in the first Linear after user and candidate data meet
    results = built(case_name).results
    assert not results[Variant.VANI].flop_count(1000).uncounted
    flops = {v: results[v].flops(1000) for v in VARIANTS}
    assert flops[Variant.MARI] < flops[Variant.UOI] <= flops[Variant.VANI], flops


def test_folded_sizes_leave_nothing_uncounted():
    for case_name in CASE_NAMES:
        for variant in (Variant.UOI, Variant.MARI):
            assert not built(case_name).results[variant].flop_count(1000).uncounted, (case_name, variant)


def test_user_lookups_are_independent_of_the_candidates(generator):
    # the same user scored with 1 and with 1000 candidates: candidate 0's score does not move
    b = built("ec_seq")
    values = b.case.random_inputs(1000, generator)
    alone = {k: v if k in b.case.user_inputs else v[:1] for k, v in values.items()}
    with torch.inference_mode():
        many: Tensor = b.results[Variant.MARI].module(values)
        one: Tensor = b.results[Variant.MARI].module(alone)
    assert (many[0] - one[0]).abs().item() <= 1e-5
