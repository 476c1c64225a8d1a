"""Open Inference Protocol (KServe V2) infer requests -> model input tensors, and scores -> infer responses.

A request body is a JSON header, followed (binary tensor data extension) by the raw little-endian bytes of each
input that declares `parameters.binary_data_size`, in input order; `Inference-Header-Content-Length` gives the
header's length (absent: the whole body is JSON). Inputs are the features, read and validated whole by
service/serving/v2_tensors.py and encoded by the /rank codec's own rules.

`parameters.user_id` (a string) picks the A/B arm as /rank's user_id does; a request without one is served by
the default variant (it has no user to keep in one arm). `id` is echoed. The response holds the requested
`outputs` (all when none are named), each in JSON or binary as its `binary_data` parameter, or else the
request's `binary_data_output`, says.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

import pydantic_core
import torch
from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from service.engine import Variant
from service.serving.codec import REQUEST_ID_PATTERN, USER_ID_MAX_CHARS
from service.serving.errors import InvalidRequest
from service.serving.scorer import Decoded, ResponseBody
from service.serving.serving_model import Scored, ServingModel
from service.serving.v2_metadata import check_model, output_names
from service.serving.v2_tensors import (
    V2Tensor,
    encode_inputs,
    invalid_input,
    parameter,
    read_inputs,
    refuse_unsupported,
)
from service.serving.validation import request_error

_SAFE_ID = TypeAdapter(Annotated[str, Field(pattern=REQUEST_ID_PATTERN)])


class _Output(TypedDict):
    name: Annotated[str, Field(strict=True)]
    parameters: NotRequired[dict[str, Any]]


class _InferRequest(TypedDict):
    id: NotRequired[Annotated[str, Field(strict=True)]]
    parameters: NotRequired[dict[str, Any]]
    inputs: list[V2Tensor]
    outputs: NotRequired[list[_Output]]


_REQUEST = TypeAdapter(_InferRequest)
_USER_ID = TypeAdapter(Annotated[str, Field(strict=True, min_length=1, max_length=USER_ID_MAX_CHARS)])
_FLAG = TypeAdapter(Annotated[bool, Field(strict=True)])


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class V2Reply:
    """What the response needs from the request: the `id` to echo (any string) and the outputs asked for."""

    id: str | None
    outputs: tuple[RequestedOutput, ...]


class V2Door:
    """One infer request on /v2/models/{model_name}[/versions/{version}]/infer (a Door of the scorer)."""

    def __init__(self, model_name: str, version: str | None, header_length: str | None) -> None:
        self.model_name = model_name
        self.version = version
        self.header_length = header_length

    def decode(self, serving: ServingModel, body: bytes) -> Decoded[V2Reply]:
        check_model(serving, self.model_name, self.version)
        t0 = time.perf_counter()
        header, binary = split_body(body, self.header_length)
        request = parse_header(header)
        arrays, n_candidates = read_inputs(request["inputs"], binary, serving.codec)
        parameters = request.get("parameters", {})
        user_id = parameter(_USER_ID, parameters, "user_id", "parameters")
        reply = V2Reply(request.get("id"), requested_outputs(request, serving))
        t1 = time.perf_counter()
        features = encode_inputs(arrays, serving.codec)
        t2 = time.perf_counter()
        return Decoded(features, n_candidates, user_id, _safe_request_id(reply.id), reply, t1 - t0, t2 - t1)

    def respond(self, serving: ServingModel, variant: Variant, request_id: str, scored: Scored,
                reply: V2Reply) -> ResponseBody:
        return encode_response(serving, variant, scored, reply)


# --- request -------------------------------------------------------------------------------------------------

def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, the binary tensor data after it); the header length must be a whole number within the body."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= len(body):
        raise InvalidRequest(f"Inference-Header-Content-Length must be the JSON header's length in bytes, between 1 "
                             f"and the body's {len(body)}, got {header_length[:40]!r}",
                             field="Inference-Header-Content-Length", code="invalid_header_length")
    length = int(text)
    return body[:length], memoryview(body)[length:]


def parse_header(header: bytes) -> _InferRequest:
    """The JSON header as an infer request; MalformedRequest for broken JSON, InvalidRequest naming the field."""
    try:
        return _REQUEST.validate_json(header)
    except ValidationError as exc:
        raise request_error(exc, what="the JSON header") from None


def requested_outputs(request: _InferRequest, serving: ServingModel) -> tuple[RequestedOutput, ...]:
    """The outputs asked for (every one when none is named), each binary or JSON."""
    binary_default = parameter(_FLAG, request.get("parameters", {}), "binary_data_output", "parameters") or False
    available = output_names(serving)
    asked = request.get("outputs") or [{"name": name} for name in available]
    outputs: list[RequestedOutput] = []
    for output in asked:
        name, parameters = output["name"], output.get("parameters", {})
        if name not in available:
            raise invalid_input(name, f"unknown output {name[:100]!r}; this model's outputs are {list(available)}",
                                "unknown_output")
        if any(o.name == name for o in outputs):
            raise invalid_input(name, f"output {name!r} is requested twice", "duplicate_output")
        refuse_unsupported(parameters, f"output {name!r}")
        binary = parameter(_FLAG, parameters, "binary_data", f"outputs.{name}.parameters")
        outputs.append(RequestedOutput(name, binary_default if binary is None else binary))
    return tuple(outputs)


def _safe_request_id(request_id: str | None) -> str | None:
    """The request's `id` when it is safe to log and put in X-Request-Id, else None (it is still echoed)."""
    if request_id is None:
        return None
    try:
        return _SAFE_ID.validate_python(request_id)
    except ValidationError:
        return None


# --- response ------------------------------------------------------------------------------------------------

def encode_response(serving: ServingModel, variant: Variant, scored: Scored, reply: V2Reply) -> ResponseBody:
    """The infer response: a JSON header, then the binary outputs' little-endian FP32 bytes in output order."""
    scores, final = scored.scores, scored.final
    outputs: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for requested in reply.outputs:
        tensor = scores[requested.name] if requested.name in serving.tasks else final
        values = tensor.detach().to(torch.float32).numpy()  # [N]
        output: dict[str, Any] = {"name": requested.name, "datatype": "FP32", "shape": [int(values.shape[0])]}
        if requested.binary:
            binary.append(values.astype("<f4").tobytes())
            output["parameters"] = {"binary_data_size": len(binary[-1])}
        else:
            output["data"] = values.tolist()
        outputs.append(output)
    response: dict[str, Any] = {"model_name": serving.name, "model_version": serving.version}
    if reply.id is not None:
        response["id"] = reply.id
    response |= {"parameters": {"variant": variant.value}, "outputs": outputs}
    header = pydantic_core.to_json(response)
    if not binary:
        return ResponseBody(header)
    return ResponseBody(header + b"".join(binary), json_length=len(header))
