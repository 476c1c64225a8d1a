"""Engine test support: the reference cases (which inputs are user-side, how the model is called), random
weights and inputs, and the section 3 equivalence check (service.engine.equivalence)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from service.engine import Reparameterized, Variant
from service.engine.equivalence import LOGITS, SCORES, max_difference, rankings_agree
from tests.engine import reference_models as rm


@dataclass(frozen=True)
class InputSpec:
    """One input leaf. Shape is per row (the batch dimension is added by the test)."""

    name: str
    user: bool
    shape: tuple[int, ...]
    vocab: int = 0  # > 0: int64 ids in [0, vocab)
    padded: bool = False  # id sequence padded on the right with 0, at least one real id


@dataclass(frozen=True)
class ReferenceCase:
    name: str
    build: Callable[[], nn.Module]
    inputs: tuple[InputSpec, ...]
    takes_dict: bool  # forward(features: dict) rather than forward(*tensors)
    post_sigmoid: bool = True

    @property
    def user_inputs(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.inputs if spec.user)

    def random_inputs(self, n: int, dtype: torch.dtype, generator: torch.Generator) -> dict[str, Tensor]:
        """User leaves at batch 1, candidate leaves at batch n, in the order the model expects."""
        return {spec.name: _random_leaf(spec, 1 if spec.user else n, dtype, generator) for spec in self.inputs}

    def tiled(self, values: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """What VanI serving feeds the trained model: every user leaf repeated to n rows."""
        return {
            name: value.expand(n, *value.shape[1:]).contiguous() if name in self.user_inputs else value
            for name, value in values.items()
        }

    def call_args(self, values: dict[str, Tensor]) -> tuple:
        return (dict(values),) if self.takes_dict else tuple(values[spec.name] for spec in self.inputs)


def _random_leaf(spec: InputSpec, rows: int, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    if not spec.vocab:
        return torch.randn(rows, *spec.shape, generator=generator, dtype=torch.float64).to(dtype)
    if not spec.padded:
        return torch.randint(0, spec.vocab, (rows, *spec.shape), generator=generator)
    (max_len,) = spec.shape
    ids = torch.randint(1, spec.vocab, (rows, max_len), generator=generator)
    lengths = torch.randint(1, max_len + 1, (rows, 1), generator=generator)
    return ids.masked_fill(torch.arange(max_len) >= lengths, 0)


def user_input(name: str, *shape: int, vocab: int = 0, padded: bool = False) -> InputSpec:
    return InputSpec(name, True, shape, vocab, padded)


def candidate_input(name: str, *shape: int, vocab: int = 0) -> InputSpec:
    return InputSpec(name, False, shape, vocab)


_ta = rm.TargetAttentionConfig()
_bs = rm.BatchSizeReadingConfig()
_dt = rm.DictTasksConfig()

CASES: dict[str, ReferenceCase] = {
    case.name: case
    for case in (
        ReferenceCase(
            "interleaved_concat",
            rm.InterleavedConcatMLP,
            (
                user_input("u1", 3),
                candidate_input("c1", 4),
                user_input("u2", 2),
                candidate_input("c2", 5),
                user_input("u3", 6),
            ),
            takes_dict=False,
        ),
        ReferenceCase(
            "layer_norm_over_concat",
            rm.LayerNormWideDeep,
            (user_input("user_profile", 4), candidate_input("item_dense", 6), user_input("user_context", 3)),
            takes_dict=True,
        ),
        ReferenceCase(
            "batch_norm_over_concat",
            rm.BatchNormConcat,
            (user_input("user", 5), candidate_input("item", 4), candidate_input("cross", 3)),
            takes_dict=False,
        ),
        ReferenceCase(
            "batch_size_reading_user_tower",
            rm.BatchSizeReadingRanker,
            (
                user_input("user_seq_ids", _bs.seq_len, vocab=_bs.seq_vocab, padded=True),
                user_input("user_dense", _bs.user_dense),
                candidate_input("item_id", vocab=_bs.item_vocab),
                candidate_input("item_dense", _bs.item_dense),
            ),
            takes_dict=True,
        ),
        ReferenceCase(
            "user_mlp_tower",
            rm.UserTowerConcat,
            (user_input("user_features", 8), candidate_input("candidate_features", 5)),
            takes_dict=False,
        ),
        ReferenceCase(
            "target_attention",
            rm.TargetAttention,
            (
                user_input("user_behaviour_ids", _ta.seq_len, vocab=_ta.vocab, padded=True),
                candidate_input("item_id", vocab=_ta.vocab),
                user_input("user_dense", _ta.user_dense),
            ),
            takes_dict=True,
        ),
        ReferenceCase(
            "mmoe_shared_concat",
            rm.MMoE,
            (
                user_input("user_a", 4),
                candidate_input("item_a", 5),
                user_input("user_b", 3),
                candidate_input("cross_a", 2),
            ),
            takes_dict=True,
        ),
        ReferenceCase(
            "dict_in_dict_out",
            rm.DictTasksRanker,
            (
                user_input("user_id", vocab=_dt.user_vocab),
                candidate_input("item_id", vocab=_dt.item_vocab),
                user_input("user_history_length", 1),
                candidate_input("item_price", 1),
                candidate_input("cross_ctr", _dt.cross),
            ),
            takes_dict=True,
        ),
        ReferenceCase(
            "untraceable_dict_loop",
            rm.DictLoopRanker,
            (
                user_input("user_seq", 4, 3),
                user_input("user_vec", 5),
                candidate_input("item_vec", 4),
                candidate_input("item_seq", 3, 2),
            ),
            takes_dict=True,
        ),
        ReferenceCase(
            "matmul_flavours",
            rm.MatmulFlavours,
            (user_input("user", 4), candidate_input("candidate", 6)),
            takes_dict=False,
            post_sigmoid=False,
        ),
    )
}


def randomize_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fresh non-trivial weights (never zeros or ones), scaled so logits stay O(1) and sigmoids unsaturated."""
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.Embedding):
                nn.init.normal_(param, 0.0, 1.0, generator=generator)
            elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)) and name == "weight":
                nn.init.uniform_(param, 0.5, 1.5, generator=generator)
            elif param.dim() == 1:
                nn.init.uniform_(param, -0.5, 0.5, generator=generator)
            else:
                # nn.Linear / F.linear weights are (out, in); raw matmul parameters are (in, out).
                fan_in = param.shape[1] if isinstance(module, nn.Linear) or "linear" in name else param.shape[0]
                nn.init.normal_(param, 0.0, 1.0 / fan_in**0.5, generator=generator)
        if isinstance(module, nn.BatchNorm1d):
            nn.init.normal_(module.running_mean, 0.0, 0.5, generator=generator)
            nn.init.uniform_(module.running_var, 0.5, 2.0, generator=generator)
    return model


def build_model(case: ReferenceCase, dtype: torch.dtype, generator: torch.Generator) -> nn.Module:
    return randomize_(case.build(), generator).to(dtype).eval()


def reference_scores(model: nn.Module, case: ReferenceCase, values: dict[str, Tensor], n: int):
    """The original eager model on user leaves tiled to n rows: what every variant must reproduce."""
    with torch.no_grad():
        return model(*case.call_args(case.tiled(values, n)))


def run_variant(module: nn.Module, case: ReferenceCase, values: dict[str, Tensor]):
    with torch.inference_mode():
        return module(*case.call_args(values))


def score_matrix(output) -> Tensor:
    """Any supported output structure as an (N, tasks) matrix, tasks in structure order."""
    if isinstance(output, dict):
        return torch.stack([score_matrix(v).squeeze(1) for v in output.values()], dim=1)
    if isinstance(output, (tuple, list)):
        return torch.stack([score_matrix(v).squeeze(1) for v in output], dim=1)
    return output.unsqueeze(1) if output.dim() == 1 else output


def assert_same_structure(actual, reference) -> None:
    assert type(actual) is type(reference) or (
        isinstance(actual, Tensor) and isinstance(reference, Tensor)
    ), f"output type {type(actual).__name__}, expected {type(reference).__name__}"
    if isinstance(reference, dict):
        assert list(actual) == list(reference), f"task keys {list(actual)}, expected {list(reference)}"
    if isinstance(reference, (tuple, list)):
        assert len(actual) == len(reference)
    assert score_matrix(actual).shape == score_matrix(reference).shape


def score_bound(reference: Tensor, dtype: torch.dtype, post_sigmoid: bool) -> float:
    """The section 3 bound: absolute for post-sigmoid scores, relative to the largest logit for raw logits."""
    return (SCORES if post_sigmoid else LOGITS).bound(reference, dtype)


def assert_equivalent(actual, reference, dtype: torch.dtype, post_sigmoid: bool = True) -> None:
    """Docs/ARCHITECTURE.md section 3: per candidate and task within the bound, and rankings agree except
    between candidates whose reference scores differ by less than the bound."""
    assert_same_structure(actual, reference)
    got, want = score_matrix(actual), score_matrix(reference)
    assert got.dtype == want.dtype == dtype
    bound = score_bound(want, dtype, post_sigmoid)
    worst = max_difference(got, want)
    assert worst <= bound, f"max |variant - reference| = {worst:.3e} > {bound:.1e}"
    for task in range(want.shape[1]):
        assert rankings_agree(got[:, task], want[:, task], bound), f"task {task}: candidates ranked differently"


def assert_built_with_less_arithmetic(results: dict[Variant, Reparameterized], n: int = 1000) -> None:
    """Every variant runs as itself (no VanI fallback), and at n candidates MaRI < UOI <= VanI in FLOPs."""
    for variant, result in results.items():
        assert (result.report.variant, result.report.fallback_reason) == (variant, None)
    flops = {variant: result.flops(n) for variant, result in results.items()}
    assert flops[Variant.MARI] < flops[Variant.UOI] <= flops[Variant.VANI]


@pytest.fixture
def generator(request: pytest.FixtureRequest) -> torch.Generator:
    """A generator seeded from the test id: every test draws its own, reproducible weights and inputs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
