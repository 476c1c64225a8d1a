"""The re-parameterization engine: VanI, UOI and MaRI derived from one trained ranker by graph transformation.

    from service.engine import reparameterize, Variant
    result = reparameterize(model, (features,), user_inputs=["user_id", "user_seq"], variant=Variant.MARI)
    scores = result.module(features)     # user leaves at batch 1, candidate leaves at batch N
    result.report                        # what was rewritten, what was not and why

The engine imports nothing else from `service` (but service.lazy_names, a generic helper): it works on any
nn.Module given its user-side inputs.
`Variant` and `EngineError` are torch-free; the rest is imported on first use, so the settings and the CLI can
name a variant without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.engine.variants import EngineError, Variant
from service.lazy_names import lazy_names

if TYPE_CHECKING:
    from service.engine.analysis import Analysis, analyze
    from service.engine.pipeline import Reparameterized, reparameterize, reparameterize_all
    from service.engine.report import EngineReport
    from service.engine.split_matmuls import SplitOptions

_LAZY = {"Analysis": "service.engine.analysis", "analyze": "service.engine.analysis",
         "Reparameterized": "service.engine.pipeline", "reparameterize": "service.engine.pipeline",
         "reparameterize_all": "service.engine.pipeline", "EngineReport": "service.engine.report",
         "SplitOptions": "service.engine.split_matmuls"}

__all__ = [
    "Analysis",
    "EngineError",
    "EngineReport",
    "Reparameterized",
    "SplitOptions",
    "Variant",
    "analyze",
    "reparameterize",
    "reparameterize_all",
]

__getattr__ = lazy_names(__name__, _LAZY)
