"""What the engine did to a model, in a form the CLI, the service and tests can read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from service.engine.fold_concat_slices import FoldRecord
from service.engine.fold_jagged import JaggedFold
from service.engine.sink_tiles import MergeRecord
from service.engine.split_matmuls import ConcatReport, ConsumerReport
from service.engine.split_token_concats import TokenConcatReport
from service.engine.variants import Variant


@dataclass
class EngineReport:
    requested: Variant
    variant: Variant  # what actually runs: VanI when the requested variant could not be built
    user_inputs: list[str]
    fallback_reason: str | None = None
    concats: list[ConcatReport] = field(default_factory=list)
    merges: list[MergeRecord] = field(default_factory=list)
    token_concats: list[TokenConcatReport] = field(default_factory=list)
    folded_slices: list[FoldRecord] = field(default_factory=list)  # concat reads folded onto the parts
    jagged: list[JaggedFold] = field(default_factory=list)  # jagged sizes and lookups folded

    @property
    def rewritten(self) -> list[ConsumerReport]:
        return [c for concat in self.concats for c in concat.consumers if c.rewritten]

    @property
    def not_rewritten(self) -> list[ConsumerReport]:
        return [c for concat in self.concats for c in concat.consumers if not c.rewritten]

    def to_dict(self) -> dict[str, Any]:
        """The one serialisation of the report (JSON-ready): the service, the CLI and the analyzer use it."""
        return {
            "requested": self.requested.value,
            "variant": self.variant.value,
            "user_inputs": self.user_inputs,
            "fallback_reason": self.fallback_reason,
            "concats": [asdict(c) for c in self.concats],
            "merges": [asdict(m) for m in self.merges],
            "token_concats": [asdict(t) for t in self.token_concats],
            "folded_slices": [asdict(f) for f in self.folded_slices],
            "jagged": [asdict(j) for j in self.jagged],
        }


def consumer_flops(concat: ConcatReport, consumer: ConsumerReport, n: int) -> tuple[int, int]:
    """GEMM FLOPs of one concat consumer at N candidates, before and after the MaRI split (bias ignored)."""
    rows, out = concat.rows_per_candidate, consumer.out_features
    width = concat.user_width + concat.candidate_width
    before = 2 * n * rows * width * out
    after = 2 * rows * (concat.user_width + n * concat.candidate_width) * out
    return before, after
