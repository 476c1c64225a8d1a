"""Read Prometheus exposition text into {(sample name, labels): value} for assertions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, metric: str, **labels: str) -> float:
    """One sample's value (0 when absent, as for a counter never incremented)."""
    return samples.get((metric, frozenset(labels.items())), 0.0)


def total(samples: Samples, metric: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= set(ls))
