"""A stack that is only read back by index is a concat of unsqueezed parts, so its reads fold too.

Adapters often build one id matrix with `torch.stack([ids_a, ids_b, ...], 1)` and the model reads
`ids[:, k]`. `fold_concat_slices` folds reads of concats; rewriting such a stack as
`cat([a.unsqueeze(d), b.unsqueeze(d), ...], d)` (the same values, exactly) lets it fold these too. A
stack with any other consumer (an FM or attention over a token set) is left for split_token_concats.
"""

from __future__ import annotations

import torch.fx as fx

from service.engine.graph_tools import NodeFactory, aten, normalize_dim
from service.engine.passes import PassContext, PassResult

STACK = aten.stack.default
INDEX_READS = (aten.slice.Tensor, aten.select.int, aten.index_select.default, aten.index.Tensor)


def unstack_reads(gm: fx.GraphModule) -> int:
    """Rewrite every index-read-only stack as a concat of unsqueezed parts; returns how many."""
    return len(_unstack(gm))


def unstack_reads_pass(gm: fx.GraphModule, context: PassContext) -> PassResult:
    """The pass form: records name the stacks rewritten (the engine report does not list them)."""
    rewritten = _unstack(gm)
    return PassResult(gm, bool(rewritten), rewritten, "" if rewritten else "no stack is read only by index")


def _unstack(gm: fx.GraphModule) -> list[str]:
    rewritten: list[str] = []
    factory: NodeFactory | None = None
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not STACK or not node.users:
            continue
        parts = list(node.args[0])
        rank = node.meta["val"].dim()
        dim = normalize_dim(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), rank)
        if not all(user.op == "call_function" and user.target in INDEX_READS for user in node.users):
            continue
        factory = factory or NodeFactory(gm.graph)
        with gm.graph.inserting_before(node):
            unsqueezed = [factory.call(aten.unsqueeze.default, (part, dim)) for part in parts]
            concat = factory.call(aten.cat.default, (unsqueezed, dim))
        node.replace_all_uses_with(concat)
        rewritten.append(node.name)
        gm.graph.erase_node(node)
    if rewritten:
        gm.recompile()
    return rewritten
