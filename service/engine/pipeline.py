"""reparameterize(): capture -> each variant's list of passes (PIPELINES) -> verify, with VanI fallback."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from service.engine.capture import CapturedModel, InputLayout, TiledCall, capture, describe_inputs
from service.engine.direct_calls import with_direct_calls
from service.engine.equivalence import BUILD_CHECK, max_difference
from service.engine.flops import FlopCount, count_flops
from service.engine.fold_concat_slices import fold_concat_slices_pass
from service.engine.fold_jagged import fold_jagged_pass
from service.engine.graph_tools import fake_mode_of
from service.engine.passes import Pass, PassContext
from service.engine.report import EngineReport
from service.engine.sink_tiles import rebuild_pass, sink_tiles_pass
from service.engine.split_matmuls import SplitOptions, split_concat_matmuls_pass
from service.engine.split_token_concats import split_token_concats_pass
from service.engine.tidy import tidy_pass
from service.engine.unstack_reads import unstack_reads_pass
from service.engine.variants import CaptureError, EngineError, Variant, first_line

# Each variant is the captured (VanI) graph through its list of passes (docs/engine.md, the pipeline).
FOLD_JAGGED = Pass("fold_jagged", fold_jagged_pass, "jagged")  # jagged sizes first: the slice passes then see them
UNSTACK_READS = Pass("unstack_reads", unstack_reads_pass)
FOLD_CONCAT_SLICES = Pass("fold_concat_slices", fold_concat_slices_pass, "folded_slices")
SPLIT_TOKEN_CONCATS = Pass("split_token_concats", split_token_concats_pass, "token_concats")
SPLIT_CONCAT_MATMULS = Pass("split_concat_matmuls", split_concat_matmuls_pass, "concats")
SINK_TILES = Pass("sink_tiles", sink_tiles_pass, "merges")
REBUILD = Pass("rebuild", rebuild_pass)  # VanI: the same rebuild, nothing computed at batch 1
TIDY = Pass("tidy", tidy_pass)
PIPELINES: dict[Variant, tuple[Pass, ...]] = {
    Variant.VANI: (REBUILD, TIDY),  # the captured graph, rebuilt and tidied: no rewrite changes what it computes
    Variant.UOI: (FOLD_JAGGED, UNSTACK_READS, FOLD_CONCAT_SLICES, SINK_TILES, TIDY),
    Variant.MARI: (
        FOLD_JAGGED, UNSTACK_READS, FOLD_CONCAT_SLICES, SPLIT_TOKEN_CONCATS, SPLIT_CONCAT_MATMULS, SINK_TILES, TIDY,
    ),
}


class GraphRunner(nn.Module):
    """Runs a rebuilt graph behind the model's own call signature (user leaves at batch 1)."""

    def __init__(self, graph_module: nn.Module, layout: InputLayout, out_spec: pytree.TreeSpec | None) -> None:
        super().__init__()
        self.graph_module = graph_module  # the variant's ATen graph, as the passes, FLOPs and compile see it
        # what runs: the same graph calling torch's dispatcher directly (service/engine/direct_calls.py)
        self.running = with_direct_calls(graph_module) if isinstance(graph_module, fx.GraphModule) else graph_module
        self.layout = layout
        self.out_spec = out_spec
        self._user_slots = [j for j, p in enumerate(layout.tensor_positions) if p in layout.user_positions]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tensors = self.layout.tensor_leaves(args, kwargs)
        for j in self._user_slots:
            if tensors[j].size(0) != 1:
                name = self.layout.leaf_names[self.layout.tensor_positions[j]]
                raise EngineError(f"user input '{name}' must have batch size 1, got {tensors[j].size(0)}")
        out = self.running(*tensors)
        return out if self.out_spec is None else pytree.tree_unflatten(list(out), self.out_spec)


@dataclass
class Reparameterized:
    module: nn.Module
    report: EngineReport
    graph_module: fx.GraphModule | None = None
    batch: sympy.Symbol | None = None

    def flops(self, n: int) -> int | None:
        """FLOPs of one call with n candidates; None for the eager fallback (no graph to count). A lower
        bound when some node's size is data-dependent: `flop_count(n).uncounted` names those nodes."""
        count = self.flop_count(n)
        return None if count is None else count.flops

    def flop_count(self, n: int) -> FlopCount | None:
        """flops(n) with the nodes it could not count (data-dependent sizes); None for the eager fallback."""
        if self.graph_module is None:
            return None
        return count_flops(self.graph_module, self.batch, n)


def build_variant(
    captured: CapturedModel, variant: Variant, options: SplitOptions | None = None
) -> tuple[fx.GraphModule, EngineReport]:
    """Derive one variant's graph from the captured VanI graph (never mutates `captured`)."""
    report = EngineReport(variant, variant, captured.layout.user_leaf_names)
    graph_module = fresh_copy(captured)
    context = PassContext(captured.layout, captured.batch, options)
    for step in PIPELINES[variant]:
        result = step.run(graph_module, context)
        graph_module = result.graph_module
        if step.report_field is not None:
            getattr(report, step.report_field).extend(result.records)
    _check_batch_kept(captured, variant)
    return graph_module, report


def fresh_copy(captured: CapturedModel) -> fx.GraphModule:
    """A copy of the captured graph for a variant's passes to rewrite."""
    with warnings.catch_warnings():  # deep-copying the pytree codegen trips a torch deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        graph = copy.deepcopy(captured.graph_module.graph)
    return fx.GraphModule(captured.graph_module, graph)


def _check_batch_kept(captured: CapturedModel, variant: Variant) -> None:
    """A pass that fake-runs an op whose kernel reads a size as a plain int fixes the batch symbol to its
    trace-time value in the shared ShapeEnv: every size derived from it then reads as a constant."""
    shape_env = fake_mode_of(captured.graph_module.graph).shape_env
    batch = shape_env.replace(captured.batch) if shape_env is not None else captured.batch
    if captured.batch not in batch.free_symbols:
        raise CaptureError(f"building {variant.value} fixed the candidate batch {captured.batch} to {batch}")


def _verify(
    candidate: nn.Module,
    reference: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    layout: InputLayout,
    reference_name: str = "VanI",
) -> None:
    """Compare to the reference at the example batch and at one candidate (equivalence.BUILD_CHECK); raise if
    the rewrite changed scores. One candidate is never the trace batch (capture.TRACE_BATCH), so a graph whose
    sizes were fixed to that batch fails here."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    single = [
        leaf[:1] if i in layout.tensor_positions and i not in layout.user_positions else leaf
        for i, leaf in enumerate(leaves)
    ]
    with torch.no_grad():
        for call_args, call_kwargs in ((args, kwargs), pytree.tree_unflatten(single, spec)):
            got, want = candidate(*call_args, **call_kwargs), reference(*call_args, **call_kwargs)
            difference = max_difference(got, want)
            if not difference <= BUILD_CHECK.bound(want):
                raise EngineError(f"verification against {reference_name} failed: max |difference| {difference:.3g}")


def reparameterize(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    user_inputs: Collection[str],
    variant: Variant | str,
    example_kwargs: Mapping[str, Any] | None = None,
    verify: bool = True,
    options: SplitOptions | None = None,
) -> Reparameterized:
    """Derive the requested variant of `model` by graph transformation.

    `example_inputs`/`example_kwargs` are a real call with user leaves at batch 1 and candidate leaves
    at batch N; `user_inputs` names the user-side leaves (dict key or argument name). The result's
    module takes calls of that shape at any N and returns the model's output structure. A model the
    engine cannot capture or transform runs as VanI, and the report says why.
    """
    wanted = Variant(variant)
    return reparameterize_all(model, example_inputs, user_inputs, [wanted], example_kwargs, verify, options)[wanted]


def reparameterize_all(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    user_inputs: Collection[str],
    variants: Collection[Variant | str] = tuple(Variant),
    example_kwargs: Mapping[str, Any] | None = None,
    verify: bool = True,
    options: SplitOptions | None = None,
) -> dict[Variant, Reparameterized]:
    """Capture once, derive several variants (what a server builds at start-up)."""
    wanted = [Variant(v) for v in variants]
    if any(module.training for module in model.modules()):
        model.eval()  # a loaded torch.export program is already in eval mode and refuses .eval()
    args, kwargs = tuple(example_inputs), dict(example_kwargs or {})
    layout = describe_inputs(model, args, kwargs, user_inputs)
    try:
        captured = capture(model, layout, layout.tensor_leaves(args, kwargs))
        vani_graph, vani_report = build_variant(captured, Variant.VANI)
    except CaptureError as exc:
        return {v: _eager(model, layout, v, f"capture failed ({first_line(exc)})") for v in wanted}
    except EngineError:
        raise  # the call was wrong (names, batch sizes): the caller must fix it
    except Exception as exc:  # capture limits are model properties: serve eagerly as VanI
        return {v: _eager(model, layout, v, f"capture failed ({first_line(exc)})") for v in wanted}
    vani_module = GraphRunner(vani_graph, layout, captured.out_spec)
    if verify:
        try:  # VanI is the reference of the other variants: it must be the model, at more than the trace N
            _verify(vani_module, _eager_runner(model, layout), args, kwargs, layout, "the model")
        except Exception as exc:
            return {v: _eager(model, layout, v, f"VanI graph not usable ({first_line(exc)})") for v in wanted}
    built: dict[Variant, Reparameterized] = {}
    for variant in wanted:
        if variant == Variant.VANI:
            built[variant] = Reparameterized(vani_module, vani_report, vani_graph, captured.batch)
            continue
        try:
            graph, report = build_variant(captured, variant, options)
            module = GraphRunner(graph, layout, captured.out_spec)
            if verify:
                _verify(module, vani_module, args, kwargs, layout)
            built[variant] = Reparameterized(module, report, graph, captured.batch)
        except Exception as exc:  # any failure to transform leaves the model serving as VanI
            reason = f"{variant.value} not built ({first_line(exc)})"
            report = EngineReport(variant, Variant.VANI, layout.user_leaf_names, reason)
            built[variant] = Reparameterized(vani_module, report, vani_graph, captured.batch)
    return built


def _eager_runner(model: nn.Module, layout: InputLayout) -> GraphRunner:
    """The model itself behind the variants' call signature: user leaves tiled, no graph."""
    return GraphRunner(TiledCall(model, layout), layout, None)


def _eager(model: nn.Module, layout: InputLayout, variant: Variant, reason: str) -> Reparameterized:
    runner = _eager_runner(model, layout)
    return Reparameterized(runner, EngineReport(variant, Variant.VANI, layout.user_leaf_names, reason))
