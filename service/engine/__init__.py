"""The re-parameterization engine: VanI, UOI and MaRI derived from one trained ranker by graph transformation.

    from service.engine import reparameterize, Variant
    result = reparameterize(model, (features,), user_inputs=["user_id", "user_seq"], variant=Variant.MARI)
    scores = result.module(features)     # user leaves at batch 1, candidate leaves at batch N
    result.report                        # what was rewritten, what was not and why

The engine imports nothing else from `service`: it works on any nn.Module given its user-side inputs.
"""

from service.engine.analysis import Analysis, analyze
from service.engine.pipeline import Reparameterized, reparameterize, reparameterize_all
from service.engine.report import EngineReport
from service.engine.split_matmuls import SplitOptions
from service.engine.variants import EngineError, Variant

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
