"""The MaRI paper's published figures, set beside this machine's in the study's plots and report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperValues:
    """The paper's published figures as quoted in the issue (the paper itself was not consulted)."""

    max_speedup: float = 1.58
    max_flops_ratio: float = 10.95
    speedup_large_n: float = 1.10  # "about 1.1x for N >= 500 at its default sizes"
    large_n: int = 500
    speedup_by_hidden: tuple[tuple[int, float], ...] = ((64, 1.10), (2048, 1.58))
    fragmented_vs_uoi: float = 1.388  # "a fragmented layout 38.8% slower than UOI"
    chunk: int = 50
    chunk_vs_original: float = 1.694  # at chunk 50: +69.4% latency against the original matmul
    chunk_vs_neat_mari: float = 1.963  # ... and +96.3% against neat MaRI


PAPER = PaperValues()
