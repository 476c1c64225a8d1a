"""Every model one server serves (RANKER_MODELS), each in its own `ModelHost`.

A host owns what one model needs end to end: its runtime, its admission (an InferencePool of its own, so a hot
model fills only its own queue and never takes another model's slots), its shadow, its scorer and the watcher
of its own fleet config (model_store/<name>/serving.json). The metrics object is shared: every series carries
the model's name. Nothing here knows HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.serving.admission import BatchPolicy, InferencePool
from service.serving.config_watch import ConfigWatcher
from service.serving.errors import UnknownModel
from service.serving.metrics import ServiceMetrics
from service.serving.runtime import ModelRuntime
from service.serving.scorer import RequestScorer
from service.serving.serving_model import ServingModel
from service.serving.settings import EVERY_MODEL, Settings, check_model_count
from service.serving.shadow import ShadowComparator
from service.serving.version_compare import VersionComparator
from service.store import ArtifactError
from service.store.manifest import MANIFEST_FILE
from service.store.versions import check_component

logger = logging.getLogger(__name__)


@dataclass
class ModelHost:
    """One served model: what it serves now, its own admission bounds, shadow, scorer and fleet config."""

    name: str
    settings: Settings  # the server's settings with model_name = name
    runtime: ModelRuntime
    pool: InferencePool
    shadow: ShadowComparator
    scorer: RequestScorer
    config: ConfigWatcher
    versions: VersionComparator  # its own model versions compared on live traffic (a canary)

    @classmethod
    def create(cls, settings: Settings, metrics: ServiceMetrics) -> ModelHost:
        """The host of `settings.model_name`; nothing is loaded until start_up."""
        runtime = ModelRuntime(settings)
        pool = InferencePool(settings.inference_concurrency, settings.max_queued_requests,
                             settings.max_queued_candidates, settings.queue_timeout_s, settings.retry_after_s,
                             BatchPolicy(settings.batching, settings.batch_window_ms / 1e3,
                                         settings.batch_max_requests, settings.batch_max_candidates))
        shadow = ShadowComparator(settings.shadow_variant, settings.shadow_sample_rate, settings.shadow_queue_size,
                                  settings.tolerance, metrics, model=settings.model_name)
        versions = VersionComparator(settings.shadow_queue_size, metrics, settings.model_name)
        scorer = RequestScorer(runtime, pool, shadow, metrics, versions)
        config = ConfigWatcher(settings, runtime, shadow, metrics)
        return cls(settings.model_name, settings, runtime, pool, shadow, scorer, config, versions)

    @property
    def ready(self) -> bool:
        return self.runtime.ready

    def start_up(self) -> ServingModel:
        """Build, verify and warm what the fleet config (or the settings) names; raises when it cannot serve."""
        return self.config.start_up()

    def start(self) -> None:
        """The shadow's and the version comparison's workers and the fleet config poll, once start_up has served."""
        self.shadow.start()
        self.versions.start()
        self.config.start()

    def stop(self) -> None:
        self.config.stop()
        self.shadow.stop()
        self.versions.stop()
        self.pool.shutdown()


class ModelHosts:
    """The served models by name; `default` is model_name, served at POST /rank."""

    def __init__(self, hosts: dict[str, ModelHost], default: str) -> None:
        if default not in hosts:
            raise ValueError(f"the default model {default!r} is not among the served {sorted(hosts)}")
        self.by_name = hosts
        self.default = hosts[default]

    @classmethod
    def create(cls, settings: Settings, metrics: ServiceMetrics) -> ModelHosts:
        """A host per served model (served_model_names), sharing `metrics`."""
        names = served_model_names(settings)
        return cls({name: ModelHost.create(settings.for_model(name), metrics) for name in names},
                   settings.model_name)

    def get(self, name: str) -> ModelHost:
        """The host of `name`; UnknownModel naming the served ones (never echoing more than a short name)."""
        host = self.by_name.get(name)
        if host is None:
            raise UnknownModel(f"model {name[:100]!r} is not served here; known models: {', '.join(self.by_name)}",
                               field="model")
        return host

    def __iter__(self) -> Iterator[ModelHost]:
        return iter(self.by_name.values())

    @property
    def ready(self) -> bool:
        """Every served model is built and warmed."""
        return all(host.ready for host in self.by_name.values())


def served_model_names(settings: Settings) -> list[str]:
    """The models this server serves: RANKER_MODELS (`*`: every model folder of the store holding a version),
    else model_name alone; ValueError naming the settings when model_name is not among them or they are more
    than max_models."""
    if not settings.models:
        return [settings.model_name]
    names = store_models(settings.model_store) if settings.models == [EVERY_MODEL] else list(settings.models)
    if settings.model_name not in names:
        raise ValueError(f"RANKER_MODEL_NAME {settings.model_name!r} (the default model) is not among the models "
                         f"RANKER_MODELS={','.join(settings.models)} serves: {names}")
    check_model_count(len(names), settings.max_models)
    return names


def store_models(store: Path) -> list[str]:
    """Names of the store's model folders holding at least one version (hidden and unusable names skipped)."""
    if not store.is_dir():
        raise ValueError(f"RANKER_MODELS={EVERY_MODEL}: the store {store} is not a folder")
    names = []
    for folder in sorted(store.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if not any((version / MANIFEST_FILE).is_file() for version in folder.iterdir()
                   if version.is_dir() and not version.name.startswith(".")):
            continue
        try:
            names.append(check_component("model name", folder.name))
        except ArtifactError:
            logger.warning("model folder %s skipped: its name is not a single safe path component", folder)
    return names
