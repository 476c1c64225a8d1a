"""/openapi.json tells the truth (issue 12): every status each endpoint can answer, and POST /rank's request as the
loaded model's codec validates it (its features, kinds, widths and limits), generated at run time."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.features.schema import FeatureSchema, Kind
from tests.api.conftest import MODEL_NAME, make_settings, rank_body

DOCUMENTED = {
    ("post", "/rank"): {"200", "400", "408", "413", "415", "422", "503"},
    ("post", "/rank/{model}"): {"200", "400", "404", "408", "413", "415", "422", "503"},  # 404: a model not served
    ("post", "/admin/reload"): {"200", "400", "401", "403", "404", "408", "409", "413", "415", "422", "503"},
    ("post", "/admin/variant"): {"200", "400", "401", "403", "404", "408", "409", "413", "415", "422", "503"},
    ("get", "/readyz"): {"200", "503"},
    ("get", "/v1/models"): {"200", "503"},
    ("get", "/healthz"): {"200"},
    ("get", "/metrics"): {"200"},
}


def rank_validator(document: dict) -> jsonschema.Draft202012Validator:
    root = {"$ref": "#/components/schemas/RankRequest", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def test_openapi_documents_every_status_each_endpoint_can_answer(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    found = {(method, path): set(operation["responses"])
             for path, operations in document["paths"].items() for method, operation in operations.items()}
    assert found == DOCUMENTED
    for (method, path), statuses in DOCUMENTED.items():
        for status in statuses - {"200"}:
            error = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]  # no FastAPI-shaped 422 is answered


def test_openapi_names_the_served_models_as_the_values_of_rank_model(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/rank/{model}"]["post"]
    (model,) = [parameter for parameter in operation["parameters"] if parameter["name"] == "model"]
    assert model["in"] == "path" and model["schema"]["enum"] == [MODEL_NAME]


def test_openapi_admin_operations_need_the_bearer_scheme_and_describe_their_bodies(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["adminBearer"]["scheme"] == "bearer"
    for path, required in (("/admin/reload", False), ("/admin/variant", True)):
        operation = document["paths"][path]["post"]
        assert operation["security"] == [{"adminBearer": []}]
        assert operation["requestBody"]["required"] is required
    reload_body = document["components"]["schemas"]["ReloadRequest"]
    assert reload_body["additionalProperties"] is False
    assert "pattern" in reload_body["properties"]["version"]["anyOf"][0]


def test_openapi_rank_request_is_the_loaded_models_own_schema(client: TestClient, schema: FeatureSchema) -> None:
    document = client.get("/openapi.json").json()
    components = document["components"]["schemas"]
    limits = client.get("/v1/models").json()["limits"]
    user, row = components["UserFeatures"], components["CandidateRow"]
    assert set(user["properties"]) == set(user["required"]) == {spec.name for spec in schema.user_features}
    assert set(row["properties"]) == set(row["required"]) == {spec.name for spec in schema.candidate_features}
    assert user["additionalProperties"] is False and row["additionalProperties"] is False
    for spec in schema.features:
        prop = (user if spec.is_user else row)["properties"][spec.name]
        assert spec.kind.value in prop["description"]
        if spec.kind is Kind.SPARSE_ID:
            assert (prop["type"], prop["minimum"], prop["maximum"]) == ("integer", 0, limits["max_id"])
        elif spec.kind is Kind.DENSE:
            assert prop["minItems"] == prop["maxItems"] == spec.dim
        else:
            assert prop["maxItems"] == spec.max_len
    candidates = components["RankRequest"]["properties"]["candidates"]["anyOf"]
    assert {form.get("maxItems") for form in candidates} == {None, limits["max_candidates"]}
    assert all(column["maxItems"] == limits["max_candidates"]
               for column in components["CandidateColumns"]["properties"].values())


def test_openapi_rank_request_accepts_what_the_service_accepts_and_refuses_a_wrong_width(
    client: TestClient, schema: FeatureSchema
) -> None:
    validator = rank_validator(client.get("/openapi.json").json())
    for columnar in (True, False):
        body = rank_body(schema, n=4, columnar=columnar)
        assert not list(validator.iter_errors(body))
        assert client.post("/rank", json=body).status_code == 200
    wrong = rank_body(schema, n=4)
    dense = next(spec for spec in schema.user_features if spec.kind is Kind.DENSE)
    wrong["user"][dense.name] = wrong["user"][dense.name][:-1]
    assert list(validator.iter_errors(wrong))
    assert client.post("/rank", json=wrong).status_code == 422


def test_openapi_follows_the_limits_the_service_runs_with(store: Path) -> None:
    with TestClient(create_app(make_settings(store, model_version="v1", max_candidates=7, max_id=1000))) as small:
        components = small.get("/openapi.json").json()["components"]["schemas"]
    assert components["CandidateColumns"]["properties"]["item_id"]["maxItems"] == 7
    assert components["UserFeatures"]["properties"]["user_id"]["maximum"] == 1000


def test_openapi_without_a_loaded_model_documents_both_generic_forms(store: Path) -> None:
    not_started = TestClient(create_app(make_settings(store, model_version="v1")))  # no lifespan: nothing loaded
    document = not_started.get("/openapi.json").json()
    request = document["components"]["schemas"]["RankRequest"]
    assert json.dumps(request["oneOf"]).count("RankRequest") == 2
