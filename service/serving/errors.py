"""The kinds of error the service answers on purpose, as plain exceptions with no knowledge of HTTP.

Each has a stable `code` and names the input at fault in `field`; service/api/errors.py maps each kind to
an HTTP status, in one place.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service answers on purpose; `code` is stable, `field` names the input at fault."""

    code = "service_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class MalformedRequest(ServiceError):
    """The body is not JSON (or not an object)."""

    code = "malformed_json"


class InvalidRequest(ServiceError):
    """The body is JSON but breaks the feature schema or a limit; `code` says which rule."""

    code = "invalid_request"


class PayloadTooLarge(ServiceError):
    """The body exceeds max_body_bytes."""

    code = "body_too_large"


class UnsupportedMediaType(ServiceError):
    """A body that is not declared as JSON: refused before it is read, so a cross-site form or text/plain
    POST from a browser page cannot make the service score anything."""

    code = "unsupported_media_type"


class BodyReadTimeout(ServiceError):
    """The client did not send the whole body within body_read_timeout_s (a stalled or trickled upload)."""

    code = "body_read_timeout"


class ClientDisconnected(ServiceError):
    """The client closed the connection before its body arrived: nobody is left to answer (499, not a 5xx)."""

    code = "client_disconnected"


class Overloaded(ServiceError):
    """Every inference slot is busy and the wait would exceed the budget."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(ServiceError):
    """No model is loaded yet, or the server is shutting down."""

    code = "not_ready"


class Unauthorized(ServiceError):
    """Admin call without the right bearer token."""

    code = "unauthorized"


class AdminDisabled(ServiceError):
    """Admin call while no admin token is configured."""

    code = "admin_disabled"


class ModelRejected(ServiceError):
    """A reload target is corrupted, missing or does not match; the old model keeps serving."""

    code = "model_rejected"


class ReloadInProgress(ServiceError):
    """Another reload or fleet config change is still being applied."""

    code = "reload_in_progress"


class ConfigNotWritten(ServiceError):
    """serving.json could not be locked, read or written (e.g. a read-only store); nothing changed."""

    code = "config_not_written"


class ModelNotFound(ServiceError):
    """A request names a model or version this server does not serve (the Open Inference Protocol's paths)."""

    code = "model_not_found"


class UnknownModel(ModelNotFound):
    """A request names a model this server does not serve (POST /rank/{model}, an admin body's `model`)."""

    code = "unknown_model"
