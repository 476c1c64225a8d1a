"""What a model build leaves behind, given back after a swap (docs/soak.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import linecache
import warnings

from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import graph_module as fx_graph_module
from torch.fx.experimental.symbolic_shapes import ShapeEnv


def release_build_memory() -> None:
    """Give back what builds leave behind, once a swap has dropped the previous model (docs/soak.md).

    torch.export's class-level memo tables (ShapeEnv's lru_caches, keyed by the ShapeEnv itself, and
    FakeTensorMode's dispatch cache) keep past captures' shape environments and fake tensors alive; the old
    variants are cycles only the collector frees; and glibc keeps freed heap pages unless trimmed. Clearing the
    memo tables costs the next build a few recomputations, nothing else.

    At the end, what serves now is frozen (gc.freeze): the model, its graphs and torch's tables are hundreds of
    thousands of objects that live until the next swap, and a full collection walking them took 150-400 ms on
    the event loop's thread, a latency spike for every request waiting then. Frozen objects are never walked;
    the next call unfreezes them first, so the model it replaced is collected then like any other garbage.
    """
    gc.unfreeze()
    for member in vars(ShapeEnv).values():
        cache_clear = getattr(member, "cache_clear", None)
        if callable(cache_clear):
            cache_clear()
    FakeTensorMode.cache_clear()
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some of torch's deprecated objects warns
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        shape_envs = [obj for obj in objects if isinstance(obj, ShapeEnv)]
        graph_modules = [obj for obj in objects if isinstance(obj, fx.GraphModule)]
    del objects
    _forget_generated_sources(graph_modules)
    for shape_env in shape_envs:
        # fake tensor -> (C++ symbolic sizes) -> SymNode -> ShapeEnv -> tracked_fakes -> fake tensor: a cycle
        # through C++ that the collector cannot see; captures are over, so cut it on the ShapeEnv's side
        shape_env.tracked_fakes = None
        shape_env.fake_tensor_cache.clear()
    gc.collect()
    malloc_trim()
    gc.freeze()


def _forget_generated_sources(alive: list[fx.GraphModule]) -> None:
    """fx keeps the Python source of every GraphModule it ever generated (for tracebacks), in its loader's
    cache and in linecache, forever: about 0.7 MB per build of the default model. Keep only the live ones'."""
    keep = {getattr(getattr(type(module).forward, "__code__", None), "co_filename", None) for module in alive}
    cache = fx_graph_module._loader.eval_cache
    for key in [key for key in cache if key not in keep]:
        del cache[key]
        linecache.cache.pop(key, None)


def malloc_trim() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS (nothing elsewhere)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)
