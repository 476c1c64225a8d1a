"""A small re-implementation of `kubectl kustomize` for exactly the features deploy/k8s uses.

The manifests tests must run where kubectl is not installed, so this renders the same objects from the same
kustomization files. It supports: `resources` (YAML files and directories holding a kustomization), `namespace`,
`labels` (metadata labels only), `images`, `configMapGenerator` (literals; create and merge, with kustomize's
content-hash name suffix and the references to it rewritten), and `patches` (strategic merge of maps without
lists, or JSON 6902 add/replace/remove with a target). Anything else raises Unsupported instead of being
ignored, so a kustomization that outgrows this file fails loudly; where kubectl exists the tests also compare
both renderings object by object.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "configMapGenerator",
                    "patches"}
HASH_ALPHABET = str.maketrans("013ae", "ghkmt")  # kustomize's hasher: no vowels, no ambiguous digits
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                        "PersistentVolume", "StorageClass", "PriorityClass"}
GENERATED = "__generated__"  # marker key on generated ConfigMaps until their names get the hash suffix

Obj = dict[str, Any]


class Unsupported(ValueError):
    """A kustomization uses a feature this renderer does not implement."""


def build(directory: Path) -> list[Obj]:
    """The objects `kubectl kustomize directory` prints (order aside)."""
    objects = _build(Path(directory))
    _finish_generated(objects)
    return objects


def _build(directory: Path) -> list[Obj]:
    kustomization = _read_kustomization(directory)
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise Unsupported(f"{directory}: kustomization fields {sorted(unknown)} are not supported")
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += _build(path) if path.is_dir() else _read_objects(path)
    for generator in kustomization.get("configMapGenerator", []):
        _generate_config_map(objects, generator)
    for patch in kustomization.get("patches", []):
        _apply_patch(objects, directory, patch)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] in CLUSTER_SCOPED_KINDS:
                raise Unsupported(f"namespace transformer on the cluster-scoped {obj['kind']}")
            obj["metadata"]["namespace"] = kustomization["namespace"]
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates") or set(label) - {
                "pairs", "includeSelectors", "includeTemplates"}:
            raise Unsupported(f"labels entry {label}: only metadata labels (`pairs`) are supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                container["image"] = _retag(container["image"], image)
    return objects


def _read_kustomization(directory: Path) -> Obj:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return yaml.safe_load((directory / name).read_text()) or {}
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _read_objects(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------- configMapGenerator


def _generate_config_map(objects: list[Obj], generator: Obj) -> None:
    if set(generator) - {"name", "literals", "behavior"}:
        raise Unsupported(f"configMapGenerator {generator.get('name')}: only name, literals and behavior")
    data = dict(_literal(entry) for entry in generator.get("literals", []))
    behavior = generator.get("behavior", "create")
    existing = [obj for obj in objects if obj.get(GENERATED) and obj["metadata"]["name"] == generator["name"]]
    if behavior == "create":
        if existing:
            raise ValueError(f"configMapGenerator {generator['name']} exists already (use behavior: merge)")
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                        "data": data, GENERATED: True})
    elif behavior in ("merge", "replace") and len(existing) == 1:
        existing[0]["data"] = {**existing[0]["data"], **data} if behavior == "merge" else data
    else:
        raise Unsupported(f"configMapGenerator {generator['name']}: behavior {behavior} on {len(existing)} bases")


def _literal(entry: str) -> tuple[str, str]:
    key, sep, value = entry.partition("=")
    if not sep:
        raise ValueError(f"literal {entry!r} is not KEY=VALUE")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":  # kustomize drops one pair of quotes
        value = value[1:-1]
    return key, value


def _finish_generated(objects: list[Obj]) -> None:
    """Append the content hash to generated names and point every reference at the new name."""
    renamed = {}
    for obj in objects:
        if obj.pop(GENERATED, False):
            # kustomize hashes {"data", "kind", "name"} with the name still empty (observed with v5.5.0).
            encoded = json.dumps({"data": obj["data"], "kind": "ConfigMap", "name": ""}, sort_keys=True,
                                 separators=(",", ":"), ensure_ascii=False)
            encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # Go's
            suffix = hashlib.sha256(encoded.encode()).hexdigest()[:10].translate(HASH_ALPHABET)
            old = obj["metadata"]["name"]
            renamed[old] = obj["metadata"]["name"] = f"{old}-{suffix}"
    for obj in objects:
        _rename_config_map_references(obj, renamed)


def _rename_config_map_references(node: Any, renamed: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMapRef", "configMapKeyRef", "configMap") and isinstance(value, dict):
                value["name"] = renamed.get(value.get("name"), value.get("name"))
            _rename_config_map_references(value, renamed)
    elif isinstance(node, list):
        for item in node:
            _rename_config_map_references(item, renamed)


# ---------------------------------------------------------------- patches


def _apply_patch(objects: list[Obj], directory: Path, entry: Obj) -> None:
    if set(entry) - {"path", "patch", "target"}:
        raise Unsupported(f"patch options {sorted(set(entry) - {'path', 'patch', 'target'})}")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    if isinstance(body, list):  # JSON 6902
        if "target" not in entry:
            raise ValueError("a JSON 6902 patch needs a target")
        for obj in _targets(objects, entry["target"]):
            for operation in body:
                _json6902(obj, operation)
        return
    target = entry.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    for obj in _targets(objects, target):
        _merge_maps(obj, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}, path=obj["kind"])


def _targets(objects: list[Obj], target: Obj) -> list[Obj]:
    if set(target) - {"group", "version", "kind", "name"}:
        raise Unsupported(f"patch target fields {sorted(target)}")
    found = []
    for obj in objects:
        group, _, version = obj["apiVersion"].rpartition("/")
        if all(target.get(field) in (None, value) for field, value in
               (("group", group), ("version", version), ("kind", obj["kind"]), ("name", obj["metadata"]["name"]))):
            found.append(obj)
    if not found:
        raise ValueError(f"patch target {target} matches nothing")
    return found


def _merge_maps(into: Obj, patch: Obj, path: str) -> None:
    """Strategic merge restricted to maps: lists would need the per-field merge keys of kustomize."""
    for key, value in patch.items():
        where = f"{path}.{key}"
        if isinstance(value, list) or key.startswith("$"):
            raise Unsupported(f"{where}: strategic-merge patches of lists or with directives are not supported")
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_maps(into[key], value, where)
        else:
            into[key] = copy.deepcopy(value)


def _json6902(obj: Obj, operation: Obj) -> None:
    op, pointer = operation["op"], operation["path"]
    parts = [part.replace("~1", "/").replace("~0", "~") for part in pointer.lstrip("/").split("/")]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if op not in ("add", "replace", "remove"):
        raise Unsupported(f"JSON 6902 op {op}")
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        else:
            del parent[index]
    else:
        if op != "add" and last not in parent:
            raise KeyError(f"{pointer}: no such member to {op}")
        if op == "remove":
            del parent[last]
        else:
            parent[last] = copy.deepcopy(operation["value"])


# ---------------------------------------------------------------- images


def _containers(obj: Obj) -> list[Obj]:
    """Containers and init containers of every pod template in obj (Deployment, Job, CronJob, Pod...)."""
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj.get("spec", {}))
    return found


def _retag(reference: str, image: Obj) -> str:
    if set(image) - {"name", "newName", "newTag"}:
        raise Unsupported(f"images entry {image}: only name, newName, newTag")
    name, tag = reference, None
    if "@" in name:
        raise Unsupported(f"image digests ({reference})")
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    tag = image.get("newTag", tag)
    return f"{name}:{tag}" if tag else name
