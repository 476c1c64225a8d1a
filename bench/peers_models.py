"""The user's own eager model behind a stored model: what a team serving it without this service would run.

Both peer servers of bench.peers (bench/peers_plain_app.py, bench/peers_kserve.py) load their model here, so
they run the same nn.Module, with the same weights, as the artifact this service serves:

- a model trained by `ranker train` (manifest source "builtin"): its architecture rebuilt from the registry
  with the manifest's hyper-parameters;
- the flat-tensor model bench.peers packages itself (`package_flat`): bench.conventions' DeepCTR-style model
  (one float tensor of interleaved user and candidate columns) at production size, behind `FlatColumns`.

The weights are read from the artifact's weights.safetensors and loaded strictly: the stored program's state
is the packaged head's (service.store.packaging.TaskScores, whose `model` is the user's module), so a module
that does not match the artifact exactly fails here instead of serving other scores. The artifact is not
loaded through the service (no program is run): a peer only ever runs the eager module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from service.features.schema import FeatureSchema, FeatureSpec
from service.models.registry import get_architecture
from service.store.manifest import BUILTIN, MANIFEST_FILE, WEIGHTS_FILE
from service.store.packaging import TaskScores
from service.store.program import STATE_PREFIX
from service.store.versions import resolve_version

FLAT_NAME = "deepctr_flat"  # the packaged flat-tensor model's name in bench.peers' temporary store
FLAT_SEED = 11


class FlatColumns(nn.Module):
    """The user's adapter of a DeepCTR-style model: the service's features -> one flat float tensor in the
    model's column order (ids [N] as one float column each, dense features as they are)."""

    def __init__(self, model: nn.Module, columns: list[tuple[str, str]]) -> None:
        super().__init__()
        self.model, self.columns = model, columns  # (feature name, "sparse" | "dense"), the model's order

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        parts = [features[name].unsqueeze(1).float() if kind == "sparse" else features[name]
                 for name, kind in self.columns]
        return self.model(torch.cat(parts, dim=1))


@dataclass(frozen=True)
class EagerModel:
    """The eager module of a stored model and what a server needs to feed it."""

    module: nn.Module  # features dict (every feature at batch N) -> {task: score [N]}; eval mode
    schema: FeatureSchema
    tasks: list[str]
    path: Path  # the version folder

    @property
    def user_features(self) -> list[str]:
        return [spec.name for spec in self.schema.user_features]


def _flat_model(columns: tuple[tuple[str, bool, str, int], ...]) -> FlatColumns:
    from bench.conventions import PRODUCTION_SIZES
    from tests.engine.test_flat_tensor_convention import DeepCTRStyleDNN

    return FlatColumns(DeepCTRStyleDNN(columns, **PRODUCTION_SIZES), [(name, kind) for name, _, kind, _ in columns])


def flat_schema(columns: tuple[tuple[str, bool, str, int], ...]) -> FeatureSchema:
    """The service's schema for the flat model's columns, in the model's own column order (user and candidate
    columns interleaved); an id column of `size` embedding rows has vocabulary size - 1 (the service maps ids
    past the vocabulary to the last row)."""
    return FeatureSchema(tuple(
        FeatureSpec(name, "user" if user else "item", "sparse_id", vocab_size=size - 1) if kind == "sparse"
        else FeatureSpec(name, "user" if user else "item", "dense", dim=size) for name, user, kind, size in columns))


def package_flat(store: Path) -> Path:
    """Package the production-size DeepCTR-style flat-tensor model (seeded weights; capacity does not need a
    trained one) into `store`; returns its version folder."""
    from service.store import package
    from tests.engine.test_flat_tensor_convention import DEEPCTR_COLUMNS

    torch.manual_seed(FLAT_SEED)
    model = _flat_model(DEEPCTR_COLUMNS).eval()
    schema = flat_schema(DEEPCTR_COLUMNS)
    example = schema.example_batch(8, torch.Generator().manual_seed(FLAT_SEED))
    return package(model, example, schema, tasks=["click"], store=store, name=FLAT_NAME).path


def _user_module(manifest: dict) -> nn.Module:
    source = manifest["source"]
    if source.get("kind") == BUILTIN:
        arch = get_architecture(source["architecture"])
        return arch.build(arch.config_cls.from_dict(source["hyper_parameters"]))
    if source.get("model_class") == f"{FlatColumns.__module__}.{FlatColumns.__qualname__}":
        from tests.engine.test_flat_tensor_convention import DEEPCTR_COLUMNS

        return _flat_model(DEEPCTR_COLUMNS)
    raise ValueError(f"{manifest['name']}: no eager model known for source {source}; bench.peers serves models "
                     f"trained by `ranker train` and its own packaged flat-tensor model")


def load_eager(path: Path | str) -> EagerModel:
    """The eager model of a version folder (or a model folder's latest version), weights loaded strictly."""
    version_dir = resolve_version(path)
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    outputs = manifest["outputs"]
    head = TaskScores(_user_module(manifest), outputs["mapping"], outputs["scores"])
    tensors = load_file(version_dir / WEIGHTS_FILE)
    state = {key[len(STATE_PREFIX):]: value for key, value in tensors.items() if key.startswith(STATE_PREFIX)}
    head.load_state_dict(state, strict=True)
    return EagerModel(head.eval(), FeatureSchema.from_dict(manifest["feature_schema"]), list(manifest["tasks"]),
                      version_dir)
