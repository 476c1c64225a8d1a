"""A tiny model captured for one pass's test: the graph a pass receives in the pipeline, its user placeholders
and the batch symbol, without building any variant."""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch.fx as fx
from torch import Tensor, nn

from service.engine.capture import CapturedModel, capture, describe_inputs, user_placeholders
from service.engine.pipeline import fresh_copy


@dataclass
class PassInput:
    graph_module: fx.GraphModule  # a copy of the captured graph: the pass may rewrite it in place
    users: set[fx.Node]  # its user placeholders
    batch: sympy.Symbol

    def nodes(self, target: object) -> list[fx.Node]:
        return [n for n in self.graph_module.graph.nodes if n.target == target]


def capture_model(model: nn.Module, args: tuple[object, ...], user_inputs: list[str]) -> CapturedModel:
    """`args` is a real call: user leaves at batch 1, candidate leaves at any batch."""
    layout = describe_inputs(model.eval(), args, {}, user_inputs)
    return capture(model, layout, layout.tensor_leaves(args, {}))


def pass_input(model: nn.Module, args: tuple[Tensor, ...], user_inputs: list[str]) -> PassInput:
    """What build_variant hands a pass: a fresh copy of the captured graph (callable with the tensor leaves)."""
    captured = capture_model(model, args, user_inputs)
    root = fresh_copy(captured)
    return PassInput(root, user_placeholders(root, captured.layout), captured.batch)
