"""Request and response shapes of the HTTP API, as documented in OpenAPI.

POST /rank is validated at run time by the loaded model's own compiled schema (service.serving.codec), which
knows each feature's kind, width and vocabulary; the models below describe the two request forms for the
docs and for clients.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from service.engine import Variant
from service.serving.codec import REQUEST_ID_PATTERN, USER_ID_MAX_CHARS

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
    version: str | None = Field(None, description="Version folder to load; the latest when absent.")


class VariantSwitch(BaseModel):
    variant: Variant = Field(..., description="Default variant (serves everyone when ab_split is empty).")
    ab_split: dict[Variant, float] | None = Field(None, description="Weights per variant; empty or null: no A/B.")


class Status(BaseModel):
    status: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed JSON."),
        (413, "Body larger than max_body_bytes."),
        (422, "Invalid input; `field` names it."),
        (503, "Overloaded (with Retry-After) or not ready."),
    )
}


def rank_request_openapi() -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI requestBody for POST /rank (columnar or row-wise) and the component schemas it refers to."""
    _, top = models_json_schema(
        [(RankRequestColumnar, "validation"), (RankRequestRows, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/RankRequestColumnar"},
                        {"$ref": "#/components/schemas/RankRequestRows"},
                    ]
                }
            }
        },
    }
    return body, top.get("$defs", {})
