"""package(): turn any trained ranker (an nn.Module) into a servable artifact, without its source code.

    from service.store import package
    package(model, example_features, schema, tasks=["click", "like"], store="model_store", name="my_ranker")

`model` is called as `model(features)`, where `features` is the service's request encoding: a dict of
tensors keyed by the schema's feature names, every feature at batch N (user features tiled). The user
wraps their own model in the few lines that turn that dict into its inputs (a flat column tensor, a
KeyedJaggedTensor, several positional tensors). Its output (a tensor with one column per task, a tuple or
a dict) is mapped to task names here, so every stored program returns {task: score [N]}.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from service.engine.left_matmuls import rewrite_left_matmuls
from service.engine.variants import CAPTURE_CANDIDATES
from service.features.schema import FeatureSchema, FeatureSpec, Kind
from service.store.artifact import LoadedArtifact, load_artifact, staging_folder, write_artifact
from service.store.export_diagnosis import diagnose_export
from service.store.manifest import BUILTIN, PACKAGED, ArtifactError
from service.store.program import ProgramError, program_to_json
from service.store.versions import check_component, next_version

CHECK_BATCHES = (1, 3)  # the stored program is compared with the eager model at these N as well
CHECK_TOLERANCE = 1e-5  # absolute, on scores; the program runs the same ops, so differences are ~0
MAX_CANDIDATE_BATCH = 1 << 20
TaskSpec = Sequence[str] | Mapping[str, str | int]
ScoreKind = Literal["probability", "logit"]


class PackageError(ValueError):
    """The model, example or schema cannot be packaged; the message names the argument and the problem."""


class TaskScores(nn.Module):
    """The user's model with its output mapped to {task: score [N]} (sigmoid applied to logits)."""

    def __init__(self, model: nn.Module, outputs: dict[str, str | int | None], scores: ScoreKind) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs  # task -> dict key, tuple index or tensor column (None: the whole 1-D output)
        self.apply_sigmoid = scores == "logit"

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.finish(self.raw_scores(features))

    def raw_scores(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The model's own numbers per task, before any sigmoid: what the package checks judge."""
        output = self.model(features)
        return {task: _select(output, where, task) for task, where in self.outputs.items()}

    def finish(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        return {task: torch.sigmoid(score) if self.apply_sigmoid else score for task, score in raw.items()}


def _select(output: Any, where: str | int | None, task: str) -> Tensor:
    if isinstance(output, Tensor):
        picked = output if where is None else output[:, cast(int, where)]  # tensors map tasks to columns
    elif isinstance(output, Mapping):
        picked = output[where]
    else:
        picked = output[where]  # tuple or list
    if picked.dim() == 2 and picked.size(1) == 1:
        picked = picked[:, 0]
    if picked.dim() != 1:
        raise PackageError(f"task {task!r}: output {where!r} has shape {tuple(picked.shape)}, expected [N] or [N, 1]")
    return picked


def output_mapping(output: Any, tasks: TaskSpec) -> tuple[dict[str, str | int | None], str]:
    """Where each task's scores are in the model's output, and the output's structure, checked on a real call."""
    if isinstance(tasks, Mapping):
        mapping: dict[str, Any] = dict(tasks)
    else:
        mapping = {task: (task if isinstance(output, Mapping) else index) for index, task in enumerate(tasks)}
    if not mapping or not all(isinstance(task, str) and task for task in mapping):
        raise PackageError(f"tasks must name at least one task, got {tasks!r}")
    if isinstance(output, Tensor):
        structure = "tensor"
        columns = 1 if output.dim() == 1 or (output.dim() == 2 and output.size(1) == 1) else None
        if output.dim() == 1 or columns == 1:
            if len(mapping) != 1:
                raise PackageError(f"the model returns one score column (shape {tuple(output.shape)}) but "
                                   f"tasks names {len(mapping)}: {list(mapping)}")
            mapping = {task: None for task in mapping}
        elif output.dim() == 2:
            bad = {t: w for t, w in mapping.items() if not isinstance(w, int) or not 0 <= w < output.size(1)}
            if bad or len(mapping) != output.size(1) and not isinstance(tasks, Mapping):
                raise PackageError(f"the model returns {output.size(1)} score columns; tasks {list(mapping)} "
                                   f"must name one per column (or map task -> column index)")
        else:
            raise PackageError(f"the model returns a tensor of shape {tuple(output.shape)}; expected [N] or [N, T]")
    elif isinstance(output, Mapping):
        structure = "dict"
        unknown = {t: w for t, w in mapping.items() if w not in output}
        if unknown:
            raise PackageError(f"tasks {unknown} name keys the model's output does not have; keys: {list(output)}")
    elif isinstance(output, (tuple, list)):
        structure = "tuple"
        bad = {t: w for t, w in mapping.items() if not isinstance(w, int) or not 0 <= w < len(output)}
        if bad:
            raise PackageError(f"tasks {bad} are not positions of the model's {len(output)}-element output")
    else:
        raise PackageError(f"the model returns a {type(output).__name__}; expected a tensor, tuple or dict")
    return mapping, structure


def check_example(schema: FeatureSchema, example: Mapping[str, Tensor]) -> int:
    """The example call matches the schema: same names, dtypes, widths; returns its candidate batch."""
    if not isinstance(example, Mapping):
        raise PackageError(f"example_features must be a dict of tensors, got {type(example).__name__}")
    missing, unknown = sorted(set(schema.names) - set(example)), sorted(set(example) - set(schema.names))
    if missing or unknown:
        raise PackageError(f"example_features: missing features {missing}, features not in the schema {unknown}")
    batches = set()
    for spec in schema.features:
        value = example[spec.name]
        if not isinstance(value, Tensor):
            raise PackageError(f"example_features[{spec.name!r}] is a {type(value).__name__}, expected a tensor")
        want_float = spec.kind is Kind.DENSE
        if want_float != value.is_floating_point():
            raise PackageError(f"example_features[{spec.name!r}] has dtype {value.dtype}, expected "
                               f"{'a float dtype' if want_float else 'torch.int64'} for a {spec.kind.value} feature")
        width = {Kind.DENSE: (spec.dim,), Kind.ID_SEQUENCE: (spec.max_len,), Kind.SPARSE_ID: ()}[spec.kind]
        if value.dim() != 1 + len(width) or tuple(value.shape[1:]) != width:
            raise PackageError(f"example_features[{spec.name!r}] has shape {tuple(value.shape)}, expected "
                               f"[batch{', ' + str(width[0]) if width else ''}]")
        if not spec.is_user:
            batches.add(value.size(0))
        elif value.size(0) != 1:
            batches.add(value.size(0))  # user features may come tiled, then they share the candidate batch
    if len(batches) != 1:
        raise PackageError(f"example_features: candidate features must share one batch size, got {sorted(batches)}")
    return batches.pop()


def _rows(schema: FeatureSchema, example: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
    """The example at candidate batch n, user features tiled (the VanI call), in schema order."""
    out = {}
    for spec in schema.features:
        value = example[spec.name]
        index = torch.arange(n) % value.size(0)
        out[spec.name] = value[index].contiguous()
    return out


def export_program(head: TaskScores, features: dict[str, Tensor]) -> torch.export.ExportedProgram:
    """torch.export with a dynamic candidate batch; functional ATen with linear/matmul/layer_norm whole."""
    batch = torch.export.Dim("candidates", min=1, max=MAX_CANDIDATE_BATCH)
    dynamic = ({name: {0: batch} for name in features},)
    try:
        program: torch.export.ExportedProgram = torch.export.export(head, (features,), dynamic_shapes=dynamic,
                                                                    strict=False)
        program = program.run_decompositions({})
    except PackageError:
        raise
    except Exception as error:  # export's failures are many kinds; all mean "this call cannot be captured"
        text = str(error).strip().splitlines()
        said = f"{type(error).__name__}: {text[0] if text else ''}"[:300]
        diagnosis = diagnose_export(head, (features,), dynamic)
        cause = f"{diagnosis.sentence()} (export: {said})" if diagnosis else said
        raise PackageError(f"torch.export could not capture the model with a dynamic candidate batch: {cause}"
                           ) from error
    _drop_scalar_asserts(program)
    if rewrite_left_matmuls(program.graph_module):  # the store's weights lose grad, and with it eager's mm
        program.graph_module.recompile()
    return program


def _drop_scalar_asserts(program: torch.export.ExportedProgram) -> None:
    """Export's runtime checks on data-dependent sizes can bake in the example batch (`u4 >= 40` for a
    jagged length at N = 8), which would refuse every other N; the program is checked against the eager
    model at several N before it is stored instead."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_scalar.default:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()


def package(
    model: nn.Module,
    example_features: Mapping[str, Tensor],
    schema: FeatureSchema,
    *,
    tasks: TaskSpec,
    store: Path | str = "model_store",
    name: str = "default",
    version: str | None = None,
    user_features: Sequence[str] | None = None,
    task_weights: Mapping[str, float] | None = None,
    scores: ScoreKind = "probability",
    metrics: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> LoadedArtifact:
    """Capture `model`, check it servable and the capture equal to it, and write store/name/version.

    Before anything is written, the eager model and the captured program run the example at several N and
    every id feature's extremes (id 0, vocab_size - 1, the out-of-vocabulary row vocab_size; empty, one-id and
    full sequences): a model that fails on any, or scores NaN/inf, or (scores="probability") leaves [0, 1], is
    refused with one PackageError naming the feature or task and the fix. The stored program is checked
    again, loaded back as the service loads it, before its version appears in the store.

    `user_features` (default: the schema's user-side features) must be exactly the schema's user side.
    `tasks` lists task names per output column / tuple position / dict key, or maps task -> key or index.
    `scores`: "probability" if the model returns probabilities, "logit" to apply a sigmoid.
    Returns the artifact as the service will load it.
    """
    if not isinstance(schema, FeatureSchema):
        raise PackageError(f"schema must be a FeatureSchema, got {type(schema).__name__}")
    schema_users = [spec.name for spec in schema.user_features]
    if user_features is not None and sorted(user_features) != sorted(schema_users):
        raise PackageError(f"user_features {sorted(user_features)} must be the schema's user-side features "
                           f"{sorted(schema_users)}")
    if scores not in ("probability", "logit"):
        raise PackageError(f"scores must be 'probability' or 'logit', got {scores!r}")
    check_example(schema, example_features)
    check_component("model name", name)
    version = check_component("version", version or next_version(store, name))
    model.eval()
    features = _rows(schema, example_features, CAPTURE_CANDIDATES)
    with torch.no_grad():
        mapping, structure = output_mapping(model(features), tasks)
    head = TaskScores(model, mapping, scores).eval()
    weights = {task: float((task_weights or {}).get(task, 1.0)) for task in mapping}
    unknown_weights = sorted(set(task_weights or {}) - set(mapping))
    if unknown_weights:
        raise PackageError(f"task_weights names tasks {unknown_weights} that are not in tasks {list(mapping)}")
    program = export_program(head, features)  # first: a model export cannot capture hears export's reason
    calls = check_calls(schema, example_features)
    wants = eager_scores(head, calls, schema, example_features)
    check_program(program.module(), "the captured program", calls, wants, head, schema, example_features)
    try:
        program_json, tensors = program_to_json(program)
    except ProgramError as error:
        raise PackageError(f"the captured program cannot be stored: {error}") from error
    manifest_fields = {
        "name": name, "version": version, "feature_schema": schema.to_dict(), "user_features": schema_users,
        "tasks": list(mapping), "task_weights": weights,
        "source": dict(source) if source else {"kind": PACKAGED, "model_class": _class_path(model)},
        "outputs": {"structure": structure, "mapping": mapping, "scores": scores},
        "metrics": _json_ready(dict(metrics or {})),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "torch_version": torch.__version__,
    }
    return publish(Path(store) / name / version, manifest_fields, program_json, tensors,
                   lambda loaded: check_program(loaded.model, "the stored program", calls, wants, head, schema,
                                                example_features))


def publish(target: Path, manifest_fields: dict[str, Any], program_json: bytes, tensors: dict[str, Tensor],
            check: Any = None) -> LoadedArtifact:
    """Write to a staging folder, load it back as the service would, run `check`, then rename into place."""
    if target.exists():
        raise ArtifactError(f"{target}: version already exists; artifacts are immutable")
    staging = staging_folder(target)
    try:
        write_artifact(staging, manifest_fields, program_json, tensors)
        loaded = load_artifact(staging)
        if check is not None:
            check(loaded)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(loaded, path=target)  # already loaded and checked: only the folder moved


@dataclass(frozen=True)
class CheckCall:
    """One input package() runs through the eager model and through the captured and the stored program."""

    label: str  # how messages name it: "the example at N=8", "the id extremes (call 2 of 4)"
    features: dict[str, Tensor]
    extremes: bool = False  # a failure here is traced back to one feature's extreme value


@dataclass(frozen=True)
class Extreme:
    """A value of an id feature the service can hand the model, as one row ([] or [max_len])."""

    what: str
    value: Tensor
    out_of_vocabulary: bool = False  # reads row vocab_size, the out-of-vocabulary row


def id_extremes(spec: FeatureSpec) -> list[Extreme]:
    """The edges of what the codec sends for an id feature: ids 0 and vocab_size - 1, the out-of-vocabulary
    row `vocab_size` (every id >= vocab_size, up to the service's max_id, arrives as it), and for a sequence
    an empty one, one id, and a full one of in-vocabulary and of out-of-vocabulary ids."""
    v = spec.vocab_size
    if spec.kind is Kind.SPARSE_ID:
        return [Extreme("id 0", torch.tensor(0)), Extreme(f"id vocab_size - 1 ({v - 1})", torch.tensor(v - 1)),
                Extreme(f"an id >= vocab_size (row {v})", torch.tensor(v), out_of_vocabulary=True)]
    length, real = spec.max_len, max(v - 1, 1)
    one = torch.zeros(length, dtype=torch.int64)
    one[0] = real
    return [Extreme("an empty sequence (all padding)", torch.zeros(length, dtype=torch.int64)),
            Extreme(f"a sequence of one id ({real})", one),
            Extreme(f"a full sequence ({length} ids {real})", torch.full((length,), real)),
            Extreme(f"a full sequence of ids >= vocab_size (row {v})", torch.full((length,), v),
                    out_of_vocabulary=True)]


def check_calls(schema: FeatureSchema, example: Mapping[str, Tensor]) -> list[CheckCall]:
    """The example at every checked N, then the id extremes."""
    calls = [CheckCall(f"the example at N={n}", _rows(schema, example, n))
             for n in (CAPTURE_CANDIDATES, *CHECK_BATCHES)]
    return calls + extreme_calls(schema, example)


def extreme_calls(schema: FeatureSchema, example: Mapping[str, Tensor]) -> list[CheckCall]:
    """Calls in which every id feature takes each of its extremes: in call j user features take extreme j (one
    user per request, tiled as the service does) and candidate row i extreme i + j; dense features are the
    example's rows."""
    extremes = {spec.name: id_extremes(spec) for spec in schema.features if spec.kind is not Kind.DENSE}
    if not extremes:
        return []
    rows = max(len(options) for options in extremes.values())
    calls = []
    for j in range(rows):
        features = _rows(schema, example, rows)
        for spec in schema.features:
            options = extremes.get(spec.name)
            if options is not None:
                picks = [j] * rows if spec.is_user else [i + j for i in range(rows)]
                features[spec.name] = torch.stack([options[k % len(options)].value for k in picks])
        calls.append(CheckCall(f"the id extremes (call {j + 1} of {rows})", features, extremes=True))
    return calls


def eager_scores(head: TaskScores, calls: Sequence[CheckCall], schema: FeatureSchema,
                 example: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
    """The eager model's scores on every check call, each checked servable (runs, finite, a probability in
    [0, 1] unless scores='logit') before anything is written: a request the service accepts must never reach
    the model only to fail with a 500 or return a score that means nothing."""
    wants = []
    for call in calls:
        raw = _run_or_explain(head.raw_scores, "the model", call, head, schema, example)
        _check_range(raw, head.apply_sigmoid, call.label)
        wants.append(head.finish(raw))
    return wants


def check_program(program: Callable[[dict[str, Tensor]], dict[str, Tensor]], who: str,
                  calls: Sequence[CheckCall], wants: Sequence[dict[str, Tensor]], head: TaskScores,
                  schema: FeatureSchema, example: Mapping[str, Tensor]) -> None:
    """`program` runs every check call and scores as the eager model did (`wants`, from eager_scores)."""
    for call, want in zip(calls, wants, strict=True):
        got = _run_or_explain(program, who, call, head, schema, example)
        difference = max((want[t].double() - got[t].double()).abs().max().item() for t in want)
        if not difference <= CHECK_TOLERANCE:
            raise PackageError(f"{who} differs from the eager model by {difference:.3g} on {call.label}")


def _run_or_explain(call_fn: Callable[[dict[str, Tensor]], dict[str, Tensor]], who: str, call: CheckCall,
                    head: TaskScores, schema: FeatureSchema, example: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """call_fn's scores on the call; a failure or a NaN/inf score is refused with one message, naming the
    feature and extreme at fault when the call was an extremes call."""
    fault, scores = _fault(call_fn, call.features)
    if fault is None:
        return scores
    culprit = _culprit(call_fn, schema, example) if call.extremes else None
    if culprit is not None:
        raise PackageError(_extreme_message(*culprit, who, head))
    raise PackageError(f"on {call.label}, {who} {fault}; {_fix(fault)}")


def _fault(call_fn: Callable[[dict[str, Tensor]], dict[str, Tensor]],
           features: dict[str, Tensor]) -> tuple[str | None, dict[str, Tensor]]:
    """(None, scores) when call_fn serves these features, else (what went wrong, {})."""
    try:
        with torch.no_grad():
            scores = call_fn(features)
    except PackageError:
        raise
    except Exception as error:  # any failure means a valid request would be answered 500
        return f"fails with {type(error).__name__}: {_first_line(error)}", {}
    not_finite = [task for task, score in scores.items() if not torch.isfinite(score).all()]
    if not_finite:
        return f"scores NaN or infinite for tasks {not_finite}", {}
    return None, scores


def _culprit(call_fn: Callable[[dict[str, Tensor]], dict[str, Tensor]], schema: FeatureSchema,
             example: Mapping[str, Tensor]) -> tuple[FeatureSpec, Extreme, str] | None:
    """The first (feature, extreme) that alone makes call_fn fail, every other feature as in the example."""
    base = _rows(schema, example, 2)
    for spec in schema.features:
        if spec.kind is Kind.DENSE:
            continue
        for extreme in id_extremes(spec):
            fault, _ = _fault(call_fn, {**base, spec.name: torch.stack([extreme.value] * 2)})
            if fault is not None:
                return spec, extreme, fault
    return None


def _extreme_message(spec: FeatureSpec, extreme: Extreme, fault: str, who: str, head: TaskScores) -> str:
    v = spec.vocab_size
    if extreme.out_of_vocabulary and fault.startswith("fails"):  # row v - 1 worked: the table ends there
        tables = _tables_with_rows(head.model, v)
        where = f" ({', '.join(tables)})" if tables else ""
        return (f"feature {spec.name!r}: an id >= vocab_size ({v}) scores with row {v}, the out-of-vocabulary row, "
                f"but the model's table{where} has only {v} rows: build it as nn.Embedding(vocab_size + 1, dim) "
                f"({who} {fault})")
    return f"feature {spec.name!r}: on {extreme.what}, {who} {fault}; {_fix(fault)}"


def _fix(fault: str) -> str:
    if fault.startswith("fails"):
        return ID_RULE
    return ("a served score must be finite for every request the service accepts (e.g. a mean over a sequence's "
            "ids must allow none)")


ID_RULE = ("the service hands the model ids 0 .. vocab_size - 1 as they are and every id >= vocab_size as "
           "vocab_size, the out-of-vocabulary row, sequences right-padded with 0: each table needs vocab_size + 1 "
           "rows (nn.Embedding(vocab_size + 1, dim))")


def _tables_with_rows(model: nn.Module, rows: int) -> list[str]:
    """The model's embedding tables of exactly `rows` rows, by module name (at most three)."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.num_embeddings == rows]
    return names[:3]


def _check_range(raw: dict[str, Tensor], logits: bool, label: str) -> None:
    """Probabilities stay in [0, 1]: a model returning logits packaged without scores='logit' would serve
    'probabilities' like -0.05 with no error anywhere."""
    if logits:
        return
    for task, score in raw.items():
        low, high = score.min().item(), score.max().item()
        if low < 0.0 or high > 1.0:
            raise PackageError(f"task {task!r}: scores='probability' but the model returns values from {low:.4g} "
                               f"to {high:.4g} on {label}, outside [0, 1]: did you mean scores='logit' "
                               f"(--logits on the command line)?")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else "")[:300]

def _class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, Tensor):
        return value.tolist()
    return value


def builtin_source(architecture: str, hyper_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance of a model trained by `ranker train`."""
    return {"kind": BUILTIN, "architecture": architecture, "hyper_parameters": _json_ready(hyper_parameters)}
