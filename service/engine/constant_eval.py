"""Evaluate a sub-graph at rewrite time: the one evaluator of constant sub-graphs the passes share.

MaRI folds a weight written as `W.t() * 2` into its split GEMMs (split_matmuls.py), the concat-read fold reads
a lifted `torch.tensor([3, 7, 9])` index (fold_concat_slices.py), the jagged fold runs the shape-only sub-graph
at sampled batch sizes (fold_jagged.py). Each asks the same thing: the value of a node computed outside the
graph from parameters and constants, by running its ops eagerly. They differ only in which nodes count as
constant (`admit`) and in nodes whose value the caller knows without running them (`known`: a size at a
sampled N, a stand-in for a tensor read only for its shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from service.engine.graph_tools import Argument, attribute_value, callable_target


class NotConstant(Exception):
    """The sub-graph reads something the caller's rule does not admit; the message says what."""


class ConstantEvaluator:
    """Values of nodes of `graph_module` computed outside the graph, memoized per node.

    `admit(node)` is asked for every node the evaluation reaches: None to evaluate it, else the reason it does
    not count as constant (raised as NotConstant). `known(node)` may give a node's value directly (None: run
    its op). get_attr nodes read their attribute (tensors detached); call_function nodes run their op on their
    inputs' values, without autograd. An op's own error propagates: the caller decides what it means.
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        admit: Callable[[fx.Node], str | None],
        known: Callable[[fx.Node], Any] | None = None,
        max_depth: int | None = None,
    ) -> None:
        self.graph_module = graph_module
        self.admit = admit
        self.known = known
        self.max_depth = max_depth  # how many ops deep from the node asked for (None: no limit)
        self._values: dict[fx.Node, Any] = {}

    def value(self, node: Argument, depth: int = 0) -> Any:
        if not isinstance(node, fx.Node):
            return node
        if self.max_depth is not None and depth > self.max_depth:
            raise NotConstant(f"{node.name} is more than {self.max_depth} ops deep")
        if node in self._values:
            return self._values[node]
        why = self.admit(node)
        if why is not None:
            raise NotConstant(why)
        self._values[node] = self._evaluate(node, depth)
        return self._values[node]

    def memoized(self) -> list[fx.Node]:
        return list(self._values)

    def forget(self, node: fx.Node) -> None:
        """Drop a memoized value (a caller whose rule changed for this node)."""
        self._values.pop(node, None)

    def _evaluate(self, node: fx.Node, depth: int) -> Any:
        if node.op == "get_attr":
            attribute = attribute_value(self.graph_module, node)
            return attribute.detach() if isinstance(attribute, torch.Tensor) else attribute
        if node.op != "call_function":
            raise NotConstant(f"{node.name} is a graph input")
        given = self.known(node) if self.known is not None else None
        if given is not None:
            return given
        args = fx.node.map_aggregate(node.args, lambda a: self.value(a, depth + 1))
        kwargs = fx.node.map_aggregate(node.kwargs, lambda a: self.value(a, depth + 1))
        with torch.no_grad():
            return callable_target(node)(*args, **kwargs)
