"""Every variant of a model, built by the engine on one example call: the one place the service captures.

The engine needs a real call (user features at batch 1, candidate features at batch N) and the names of the
user-side inputs. For a stored model both come with it: the example from its feature schema
(`schema.example_batch`), the user inputs from its manifest. The service, `ranker analyze/bench/package`
and the benchmarks all build through `build_variants`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import Tensor, nn

from service.engine import Reparameterized, SplitOptions, Variant, reparameterize_all
from service.engine.variants import CAPTURE_CANDIDATES

CAPTURE_SEED = 20260223  # fixed example values: a build (and its check against VanI) is reproducible

ExampleBatch = Callable[[int, torch.Generator], dict[str, Tensor]]  # (n candidates, generator) -> features


def build_variants(
    model: nn.Module,
    user_inputs: Collection[str],
    example_batch: ExampleBatch,
    *,
    variants: Collection[Variant] = tuple(Variant),
    candidates: int = CAPTURE_CANDIDATES,
    seed: int = CAPTURE_SEED,
    options: SplitOptions | None = None,
) -> dict[Variant, Reparameterized]:
    """Capture `model` once on `example_batch(candidates, seeded generator)` and derive `variants` from it.

    `user_inputs` names the user-side leaves of the call. A variant the engine cannot build runs as VanI,
    and its report says why. `options`: MaRI's split options (None: the engine's defaults).
    """
    example = example_batch(candidates, torch.Generator().manual_seed(seed))
    return reparameterize_all(model, (example,), list(user_inputs), tuple(variants), options=options)
