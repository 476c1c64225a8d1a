"""The engine's pass contract: a graph module in, a PassResult out (torch.fx.passes.infra's shape, our report).

Every step the pipeline runs (service/engine/pipeline.py `PIPELINES`) is a `Pass`: its `run` takes the graph
module the previous pass returned and a `PassContext` (which inputs are user-side, the candidate batch symbol
N, MaRI's split options) and returns a `PassResult`: the graph module to hand on (the same object rewritten in
place, or a new one), the records the engine report lists for it (`report_field` names the EngineReport list
they extend; None: the report does not list them), and, when it changed nothing, why not.

Fake-tensor metadata follows ONE rule after every pass: a call_function node's `meta["val"]` is what
fake-running its op on its inputs' `meta["val"]` gives (graph_tools.fake_run). A pass keeps it so with
NodeFactory: `call` records a new node's value, `refresh` re-records the nodes whose inputs it changed and
everything downstream of them. A node rewired to a replacement of the same value (replace_all_uses_with)
keeps its value, and so does a copy (node_copy). Placeholders and get_attr nodes carry the value of the input
or attribute they read. The graphs segment_batch.py cuts record their values at one request (M = 1).
tests/engine/test_pass_contract.py runs every pass on every reference model and checks the recorded shapes
against a real run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sympy
import torch.fx as fx

from service.engine.capture import InputLayout, user_placeholders

if TYPE_CHECKING:
    from service.engine.split_matmuls import SplitOptions


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides the graph: the call's layout, the candidate batch N, MaRI's options."""

    layout: InputLayout
    batch: sympy.Symbol
    options: SplitOptions | None = None

    def user_placeholders(self, graph_module: fx.GraphModule) -> set[fx.Node]:
        """The placeholders of `graph_module` that receive user leaves (taken afresh: a pass may return a new
        module)."""
        return user_placeholders(graph_module, self.layout)


@dataclass
class PassResult:
    """What one pass did. `modified` False means the graph computes what it did before, node for node;
    `reason` then says why the pass found nothing to do."""

    graph_module: fx.GraphModule
    modified: bool
    records: list[Any] = field(default_factory=list)  # what it changed, as the engine report lists it
    reason: str = ""  # when nothing changed: why not

    def __post_init__(self) -> None:
        if not self.modified and not self.reason:
            raise ValueError("a pass that changed nothing must say why")


@dataclass(frozen=True)
class Pass:
    """One named step of a variant's pipeline."""

    name: str
    run: Callable[[fx.GraphModule, PassContext], PassResult]
    report_field: str | None = None  # the EngineReport list its records extend; None: not reported
