"""What one variant of a loaded version is, typed: what the engine built, what it serves as after the warm-up
check, and whether it batches.

Three stages learn these facts one after the other (the engine's build, the warm-up's equivalence check, the
batched forms), so the status is made once per stage as a new value, never edited in place: what `/v1/models`
shows and what the FLOPs analysis says a variant runs as come from the same final value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from service.engine import Variant
from service.engine.report import EngineReport


@dataclass(frozen=True)
class Batching:
    """Whether waiting requests of this variant are scored as one call, and why not when they are not."""

    batched: bool
    reason: str | None = None  # why not (batched False)
    user_side: str | None = None  # how the batched form keeps the user side split (batched True)
    user_values_gathered: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if not self.batched:
            return {"batched": False, "reason": self.reason}
        return {"batched": True, "user_side": self.user_side, "user_values_gathered": self.user_values_gathered}


@dataclass(frozen=True)
class VariantStatus:
    """One variant of a loaded version. `runs_as` is what actually serves it: VanI when the engine could not
    build it, or when the warm-up found it not equivalent to VanI (`fallback_reason` says which and why)."""

    engine: EngineReport
    runs_as: Variant
    fallback_reason: str | None = None
    batching: Batching | None = None  # None: batching is off

    @classmethod
    def built(cls, report: EngineReport) -> VariantStatus:
        """As the engine built it: the engine's own fallback (a variant it could not build) included."""
        return cls(report, report.variant, report.fallback_reason)

    def served_as_vani(self, reason: str) -> VariantStatus:
        """The warm-up found this variant not equivalent to VanI: VanI serves it."""
        return replace(self, runs_as=Variant.VANI, fallback_reason=reason)

    def with_batching(self, batching: Batching) -> VariantStatus:
        return replace(self, batching=batching)

    def to_dict(self) -> dict[str, Any]:
        """The engine's report with what serves now (`variant`, `fallback_reason`) and `batching` when it is on:
        the JSON shape /v1/models has always shown."""
        shown = {**self.engine.to_dict(), "variant": self.runs_as.value, "fallback_reason": self.fallback_reason}
        if self.batching is not None:
            shown["batching"] = self.batching.to_dict()
        return shown
