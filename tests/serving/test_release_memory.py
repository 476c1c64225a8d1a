"""release_build_memory freezes what serves (no full collection walks it) and frees what it replaced."""

from __future__ import annotations

import gc
import weakref

from service.serving.memory import release_build_memory


class _Cycle:
    """Garbage only the cyclic collector can free, like a dropped fx.GraphModule."""

    def __init__(self) -> None:
        self.me = self


def test_what_serves_is_frozen_and_what_it_replaced_is_collected_by_the_next_release() -> None:
    serving = _Cycle()
    alive = weakref.ref(serving)
    try:
        release_build_memory()  # a swap to `serving`: it is frozen with everything else alive now
        assert gc.get_freeze_count() > 0
        assert not any(obj is serving for obj in gc.get_objects())  # frozen: no generation holds it

        del serving  # the next swap drops it; a cycle, so only the collector can free it
        gc.collect()
        assert alive() is not None  # frozen objects are out of the collector's reach...

        release_build_memory()  # ...until the next release unfreezes them first
        assert alive() is None
    finally:
        gc.unfreeze()
