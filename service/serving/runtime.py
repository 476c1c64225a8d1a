"""What serves now: the loaded model and the routing, swapped whole on reload.

The runtime takes paths and raises the serving core's error kinds. A request reads `runtime.active` once and
uses that object to the end, so a new config that swaps the reference mid-request never mixes two models or
two routings. Building a version is service/serving/loading.py; what a build leaves behind,
service/serving/memory.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.engine import Variant
from service.serving.errors import ModelRejected, NotReady
from service.serving.fleet_config import CompareConfig
from service.serving.loading import build_serving_model
from service.serving.routing import Auto, VariantRouter, VersionRouter
from service.serving.serving_model import ServingModel
from service.serving.settings import Settings
from service.store import ArtifactError
from service.store.versions import check_component, resolve_version


@dataclass(frozen=True)
class ServingNow:
    """What serves requests now, swapped as one reference: the model, the routing and the config generation.

    With a version canary, `versions` holds every version that serves (the primary `serving` among them) and
    `version_router` picks one per user; the variant routing then applies inside that version.
    """

    serving: ServingModel  # the primary: anonymous requests, and what the other versions are compared with
    router: VariantRouter
    generation: int
    versions: Mapping[str, ServingModel] = field(default_factory=dict)  # empty: only `serving`
    version_router: VersionRouter | None = None  # None: only `serving`
    labels: Mapping[str, str] = field(default_factory=dict)  # label -> version (stable, canary)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def serving_versions(self) -> Mapping[str, ServingModel]:
        """Every version that serves, by name (the primary alone without a canary)."""
        return self.versions or {self.serving.version: self.serving}

    def serving_for(self, user_id: str | None) -> ServingModel:
        """The version that serves this user (anonymous: the primary)."""
        if self.version_router is None:
            return self.serving
        return self.serving_versions().get(self.version_router.route(user_id), self.serving)


@dataclass
class ModelRuntime:
    """What the service serves now (swapped atomically), and how to build a version of the configured model.

    The runtime does not decide what to serve: service/serving/config_watch.py applies the fleet config.
    """

    settings: Settings
    _active: ServingNow | None = None

    @property
    def active(self) -> ServingNow:
        active = self._active
        if active is None:
            raise NotReady("no model is loaded yet")
        return active

    @property
    def serving(self) -> ServingModel:
        return self.active.serving

    @property
    def router(self) -> VariantRouter:
        return self.active.router

    @property
    def ready(self) -> bool:
        return self._active is not None

    def version_path(self, version: str | None) -> Path:
        """The folder of `version` of the configured model (None: its latest); ModelRejected when there is none."""
        model_dir = self.settings.model_store / self.settings.model_name
        try:
            return resolve_version(model_dir / check_component("version", version) if version else model_dir)
        except ArtifactError as exc:
            raise ModelRejected(f"version {version or '(latest)'} refused: {exc}") from exc

    def build(self, path: Path, routed: frozenset[Variant | Auto] | None = None) -> ServingModel:
        """Build, verify and warm the version at `path` beside the one serving; requests see nothing yet.
        `routed`: the variants the fleet config sends requests to (what compile=auto compiles)."""
        return build_serving_model(self.settings, path, routed)

    def activate(self, serving: ServingModel, router: VariantRouter, generation: int,
                 split: VersionSplit | None = None) -> ServingNow:
        """Swap what serves: one reference assignment, so a request sees the old or the new config, whole.
        `split`: the versions of a canary (None: `serving` alone)."""
        if split is None:
            active = ServingNow(serving, router, generation)
        else:
            active = ServingNow(serving, router, generation, dict(split.versions), split.router, dict(split.labels),
                                split.compare)
        self._active = active
        return active


@dataclass(frozen=True)
class VersionSplit:
    """The versions of a canary, built and warmed, and how users are split across them."""

    versions: Mapping[str, ServingModel]  # the primary included
    router: VersionRouter
    labels: Mapping[str, str]
    compare: CompareConfig
