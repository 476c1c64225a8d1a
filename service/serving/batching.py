"""The batched form of every built variant (service.engine.segment_batch), made at load time when batching is on.

Each form is checked by the engine on a few random requests of different users and sizes (N = 1 included)
against the variant scoring them one by one. A variant that serves as VanI after the warm-up check batches
as VanI; one that cannot batch scores requests one at a time, and its report says why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from service.engine import Reparameterized, Variant
from service.engine.pipeline import GraphRunner
from service.engine.segment_batch import BatchingError, Call, segment_batch
from service.serving.build import CAPTURE_SEED, ExampleBatch
from service.serving.variant_status import Batching

logger = logging.getLogger(__name__)

CHECK_SEED = CAPTURE_SEED + 2
CHECK_SIZES = (1, 5, 2, 9)  # candidates of the check's requests, one user each


def build_batched(
    built: dict[Variant, Reparameterized], runs_as: Mapping[Variant, Variant], example_batch: ExampleBatch
) -> tuple[dict[Variant, nn.Module], dict[Variant, Batching]]:
    """Variant -> its segment-batched module, and every variant's Batching (why not, when it does not batch).
    `runs_as`: what each variant serves as after the warm-up check (one serving as VanI batches as VanI)."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    examples: list[Call] = [((example_batch(n, generator),), {}) for n in CHECK_SIZES]
    forms: dict[Variant, nn.Module] = {}
    batching: dict[Variant, Batching] = {}
    for variant in (Variant.VANI, Variant.UOI, Variant.MARI):
        if variant not in built:
            continue
        serves_as_vani = variant != Variant.VANI and runs_as.get(variant) is Variant.VANI
        if serves_as_vani and Variant.VANI in forms:
            forms[variant] = forms[Variant.VANI]
            batching[variant] = batching[Variant.VANI]
            continue
        result = built[variant]
        runner = result.module
        try:
            if not isinstance(runner, GraphRunner) or result.batch is None:
                raise BatchingError("the variant runs eagerly (no captured graph)")
            form = segment_batch(runner.graph_module, runner.layout, runner.out_spec, result.batch, runner, examples)
        except BatchingError as exc:
            logger.warning("variant %s scores requests one at a time: %s", variant.value, exc)
            batching[variant] = Batching(False, reason=str(exc))
            continue
        forms[variant] = form
        batching[variant] = Batching(True, user_side=form.user_side.value, user_values_gathered=len(form.gathers))
    return forms, batching
