"""The model contract (service.models.contract), for every registered architecture: the config is a dataclass
that knows its schema, tasks and task weights and round-trips through its dict form; the module built from it
scores exactly the config's tasks."""

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import service.models
from service.models import ARCHITECTURES, RankerConfig, get_architecture
from service.models.dcn import DCNConfig
from tests.models.conftest import tiled_batch
from tests.models.small_configs import small_config

MODELS_DIR = Path(service.models.__file__).parent
# What a model file may import from the zoo: the contract and the shared catalogue and layers, never a sibling.
SHARED_MODULES = {"service.models.contract", "service.models.catalog", "service.models.layers"}
CATALOG_FIELDS = {
    "tasks", "task_weights", "user_vocab", "item_vocab", "author_vocab", "category_vocab", "age_vocab",
    "gender_vocab", "city_vocab", "device_vocab", "os_vocab", "embedding_dim", "user_dense_dim", "item_dense_dim",
    "cross_dense_dim",
}
# Stored in artifacts as source.hyper_parameters (and in format-1 manifests, which `ranker convert` rebuilds).
STORED_FIELDS = {
    "mmoe": {
        "tasks", "task_weights", "user_vocab", "item_vocab", "author_vocab", "category_vocab", "profile_fields",
        "user_id_dim", "profile_dim", "user_dense_dim", "user_mlp_dims", "seq_len", "item_dim", "author_dim",
        "category_dim", "item_dense_dim", "cross_dense_dim", "attention_dim", "num_experts", "expert_dims",
        "tower_dims",
    },
    "dcn": CATALOG_FIELDS | {"feature_order", "num_cross_layers", "deep_dims"},
    "dcnv2": CATALOG_FIELDS | {"feature_order", "num_cross_layers", "deep_dims"},
    "deepfm": CATALOG_FIELDS | {"deep_dims"},
    "autoint": CATALOG_FIELDS | {"num_layers", "num_heads", "head_dim", "tower_dims"},
    "rdcn": CATALOG_FIELDS | {"num_cross_layers", "deep_dims"},
}
OTHER_TASKS = {"tasks": ("a", "b", "c"), "task_weights": (0.2, 0.3, 0.5)}


def test_registry_pairs_every_name_with_a_config_class_and_a_module_class() -> None:
    assert sorted(ARCHITECTURES) == sorted(STORED_FIELDS)
    for name, arch in ARCHITECTURES.items():
        assert issubclass(arch.config_cls, RankerConfig) and issubclass(arch.module_cls, nn.Module), name


def test_config_round_trips_through_its_json_dict(architecture_name: str) -> None:
    for config in (get_architecture(architecture_name).default_config(), small_config(architecture_name)):
        restored = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
        assert restored == config


def test_hyper_parameter_names_stay_those_artifacts_store(architecture_name: str) -> None:
    assert set(get_architecture(architecture_name).default_config().to_dict()) == STORED_FIELDS[architecture_name]


def test_from_dict_refuses_unknown_and_missing_fields(architecture_name: str) -> None:
    config = get_architecture(architecture_name).default_config()
    values = config.to_dict()
    with pytest.raises(ValueError, match="unknown fields \\['depth'\\]"):
        type(config).from_dict({**values, "depth": 3})
    with pytest.raises(ValueError, match="missing fields \\['item_vocab'\\]"):
        type(config).from_dict({k: v for k, v in values.items() if k != "item_vocab"})


def test_overrides_refuse_unknown_hyper_parameters(architecture_name: str) -> None:
    with pytest.raises(ValueError, match="widthh"):
        get_architecture(architecture_name).default_config().with_overrides({"widthh": 3})


def test_schema_tasks_and_weights_come_from_the_config(architecture_name: str) -> None:
    config = small_config(architecture_name).with_overrides({"item_vocab": 77, **OTHER_TASKS})
    assert config.schema().get("item_id").vocab_size == 77
    assert config.tasks == ("a", "b", "c")
    assert config.weights_by_task() == {"a": 0.2, "b": 0.3, "c": 0.5}


def test_built_module_scores_exactly_the_tasks_of_its_config(architecture_name: str) -> None:
    config = small_config(architecture_name).with_overrides(OTHER_TASKS)
    model = get_architecture(architecture_name).build(config).eval()
    with torch.no_grad():
        scores = model(tiled_batch(config.schema(), 4))
    assert list(scores) == list(config.tasks)
    assert all(value.shape == (4,) for value in scores.values())


def test_build_refuses_another_architectures_config() -> None:
    with pytest.raises(TypeError, match="DCNv2Config"):
        get_architecture("dcnv2").build(DCNConfig())


def test_config_refuses_tasks_and_weights_of_different_lengths(architecture_name: str) -> None:
    with pytest.raises(ValueError, match="task_weights"):
        get_architecture(architecture_name).default_config().with_overrides({"task_weights": (1.0,) * 7})


def test_model_files_import_no_sibling_model() -> None:
    for path in sorted(MODELS_DIR.glob("*.py")):
        if path.stem in {"__init__", "registry"}:
            continue
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        zoo = {name for name in imported if name.startswith("service.models")}
        assert zoo <= SHARED_MODULES - {f"service.models.{path.stem}"}, f"{path.name} imports {sorted(zoo)}"
