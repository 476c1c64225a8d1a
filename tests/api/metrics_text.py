"""Read Prometheus exposition text into {(sample name, labels): value} for assertions."""

from __future__ import annotations

from loadtest.report import Samples, parse_metrics

__all__ = ["Samples", "parse_metrics", "total", "value"]


def value(samples: Samples, metric: str, **labels: str) -> float:
    """One sample's value (0 when absent, as for a counter never incremented)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


def total(samples: Samples, metric: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= set(ls))
