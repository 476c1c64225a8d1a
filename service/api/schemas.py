"""Request and response shapes of the HTTP API, as documented in OpenAPI.

POST /rank is validated at run time by the loaded model's own compiled schema (service.serving.codec), which
knows each feature's kind, width and vocabulary; `rank_request_components` documents exactly that schema
for the loaded model. The generic models below describe the two request forms while no model is loaded.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.json_schema import models_json_schema

from service.engine import Variant
from service.features.schema import FeatureSchema, FeatureSpec, Kind
from service.serving.codec import REQUEST_ID_PATTERN, USER_ID_MAX_CHARS, RequestCodec
from service.serving.routing import MAX_AB_WEIGHT, DefaultVariant, check_ab_split
from service.store.manifest import COMPONENT  # the store's own rule for a version folder name

COMPONENTS = "#/components/schemas/{model}"
RANK_REQUEST = "RankRequest"

FeatureValue = int | float | list[int] | list[float]

_FEATURE_RULES = (
    "Every feature of the model's schema is required (see GET /v1/models). sparse_id: an integer id in "
    "[0, max_id], ids >= vocab_size score with the out-of-vocabulary row; dense: exactly `dim` finite numbers; "
    "id_sequence: at most `max_len` ids (0 is padding), right-padded with 0."
)


class _RankRequestBase(BaseModel):
    user_id: str = Field(
        ..., min_length=1, max_length=USER_ID_MAX_CHARS, description="Stable user id; picks the A/B arm."
    )
    user: dict[str, FeatureValue] = Field(..., description="User features by name. " + _FEATURE_RULES)
    top_k: int | None = Field(None, ge=1, description="Length of `ranking` (default: every candidate).")
    request_id: str | None = Field(
        None, pattern=REQUEST_ID_PATTERN, description="Echoed and logged; generated when absent."
    )


class RankRequestColumnar(_RankRequestBase):
    """The fast form: one array per candidate feature, every array one value per candidate."""

    candidates: dict[str, list[FeatureValue]] = Field(
        ..., description="Candidate (item and cross) features by name, each a list of N values."
    )


class RankRequestRows(_RankRequestBase):
    """The convenient form: one object per candidate."""

    candidates: list[dict[str, FeatureValue]] = Field(
        ..., min_length=1, description="One object of candidate (item and cross) features per candidate."
    )


class ModelRef(BaseModel):
    name: str
    version: str


class RankResponse(BaseModel):
    """Scores of every candidate in request order, and the candidates' order by final score."""

    request_id: str
    model: ModelRef
    variant: Variant = Field(..., description="The variant that served this request (also header X-Variant).")
    n_candidates: int
    tasks: list[str]
    scores: dict[str, list[float]] = Field(..., description="Per task, one score per candidate in request order.")
    final_scores: list[float] = Field(..., description="Task-weighted sum (weights from the model config).")
    ranking: list[int] = Field(..., description="Candidate indices by descending final score, top_k of them.")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="Stable machine-readable reason, e.g. wrong_width, too_many_candidates.")
    message: str
    field: str | None = Field(None, description="The request field at fault, e.g. candidates.item_dense[17].")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ReloadRequest(BaseModel):
    """POST /admin/reload; an empty body means the latest version."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, pattern=COMPONENT.pattern, description="Model to change (a key of GET /v1/models' `models`); the default "
        "model when absent."
    )
    version: str | None = Field(
        None, pattern=COMPONENT.pattern, description="Version folder to load; the latest when absent."
    )


# What check_ab_split accepts, as JSON Schema: weights in [0, MAX_AB_WEIGHT], not all 0 unless there are none.
_AB_SPLIT_SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "propertyNames": {"enum": [variant.value for variant in Variant]},
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": MAX_AB_WEIGHT},
            "not": {"minProperties": 1, "additionalProperties": {"const": 0}},
        },
        {"type": "null"},
    ],
}


class VariantSwitch(BaseModel):
    """POST /admin/variant."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, pattern=COMPONENT.pattern, description="Model to change (a key of GET /v1/models' `models`); the default "
        "model when absent."
    )
    variant: DefaultVariant = Field(..., description="Default variant (serves everyone when ab_split is empty); auto: "
                                    "per request, the form measured fastest at its size.")
    ab_split: Annotated[dict[Variant, float] | None, WithJsonSchema(_AB_SPLIT_SCHEMA)] = Field(
        None, description=f"Weights per variant in [0, {MAX_AB_WEIGHT:g}], relative; empty or null: no A/B."
    )

    @field_validator("ab_split")
    @classmethod
    def _check_ab_split(cls, split: dict[Variant, float] | None) -> dict[Variant, float] | None:
        return None if split is None else check_ab_split(split)


class Status(BaseModel):
    status: str


STATUS_TEXT: dict[int, str] = {
    400: "Malformed JSON, or a body that is not a JSON object.",
    401: "Missing or wrong `Authorization: Bearer <admin_token>`.",
    403: "Admin endpoints are off: no admin_token is configured.",
    404: "The model named (path or `model` field) is not served here; the message lists the served ones.",
    408: "The body did not arrive within body_read_timeout_s.",
    409: "The version cannot serve (missing, corrupt or mismatching artifact), or another change is in progress.",
    413: "Body larger than max_body_bytes.",
    415: "Content-Type is not application/json.",
    422: "Invalid input; `field` names it.",
    503: "Overloaded (with Retry-After), not ready, or serving.json could not be written.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the one error body."""
    return {status: {"model": ErrorBody, "description": STATUS_TEXT[status]} for status in statuses}


ERROR_RESPONSES = error_responses(*STATUS_TEXT)
RANK_ERRORS = error_responses(400, 408, 413, 415, 422, 503)
RANK_MODEL_ERRORS = error_responses(400, 404, 408, 413, 415, 422, 503)
ADMIN_ERRORS = error_responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 503)


def json_request_body(component: str, *, required: bool = True) -> dict[str, Any]:
    """An OpenAPI requestBody: JSON of the named component schema."""
    return {"required": required,
            "content": {"application/json": {"schema": {"$ref": COMPONENTS.format(model=component)}}}}


RANK_REQUEST_BODY = json_request_body(RANK_REQUEST)


def model_components(*models: type[BaseModel]) -> dict[str, Any]:
    """Component schemas of these request models (and of the models they refer to)."""
    _, top = models_json_schema([(model, "validation") for model in models], ref_template=COMPONENTS)
    return dict(top.get("$defs", {}))


def rank_request_components(codec: RequestCodec | None) -> dict[str, Any]:
    """Component schemas of POST /rank's body: exactly what the loaded model's codec accepts (its features,
    kinds, widths, id and candidate limits), or both generic forms while no model is loaded."""
    if codec is None:
        generic = model_components(RankRequestColumnar, RankRequestRows)
        forms = [{"$ref": COMPONENTS.format(model=name)} for name in ("RankRequestColumnar", "RankRequestRows")]
        return {**generic, RANK_REQUEST: {"oneOf": forms, "description": "Every feature of the loaded model."}}
    top = codec.json_schema(COMPONENTS)
    components = top.pop("$defs", {})
    for name, container in components.items():
        _describe_features(container, codec.schema, per_candidate=name == "CandidateColumns")
    top["description"] = (
        f"{_FEATURE_RULES} Candidates: columnar (an object of one list per candidate feature, every list of the "
        "same length N) or row-wise (a list of N objects)."
    )
    return {**components, RANK_REQUEST: top}


def _describe_features(container: dict[str, Any], schema: FeatureSchema, *, per_candidate: bool) -> None:
    for name, prop in container.get("properties", {}).items():
        if name in schema:
            prop["description"] = ("One value per candidate: " if per_candidate else "") + _feature_text(
                schema.get(name))


def _feature_text(spec: FeatureSpec) -> str:
    if spec.kind is Kind.DENSE:
        return f"{spec.side.value} feature, dense: exactly {spec.dim} finite numbers."
    rows = f"ids >= {spec.vocab_size} (vocab_size) score with the out-of-vocabulary row"
    if spec.kind is Kind.SPARSE_ID:
        return f"{spec.side.value} feature, sparse_id: one id; {rows}."
    return f"{spec.side.value} feature, id_sequence: at most {spec.max_len} ids, 0 is padding; {rows}."
