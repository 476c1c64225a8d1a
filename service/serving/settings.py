"""Every setting of the ranking service, in one typed place.

Values come from (highest priority first): keyword arguments, environment variables prefixed `RANKER_`,
an optional TOML or JSON file named by `RANKER_CONFIG_FILE`, then the defaults below. Structured values
(`RANKER_AB_SPLIT`, `RANKER_WARMUP_CANDIDATES`) are JSON in the environment. Unsafe values are refused at
start-up with a message naming the setting. The fleet config (service/serving/fleet_config.py,
model_store/<name>/serving.json) overrides model_version, variant, ab_split and shadow_* when it exists.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from service.engine import Variant
from service.engine.variants import CAPTURE_CANDIDATES
from service.serving.routing import Auto, DefaultVariant, check_ab_split
from service.store import ArtifactError
from service.store.versions import check_component

ENV_PREFIX = "RANKER_"
CONFIG_FILE_ENV = "RANKER_CONFIG_FILE"
# RANKER_* variables that are not settings: the config file's name, `ranker serve`'s own (the image's start
# command and docker-compose read them too) and the fleet directory `ranker serve` hands to its workers.
NOT_SETTINGS = frozenset({CONFIG_FILE_ENV, "RANKER_HOST", "RANKER_PORT", "RANKER_WORKERS", "RANKER_CPUS",
                          "RANKER_SERVE_FLEET_DIR"})
MAX_INT64 = 2**63 - 1
MIN_ADMIN_TOKEN_CHARS = 16
BODY_BUDGET_BODIES = 4  # default max_buffered_body_bytes, in largest bodies
EVERY_MODEL = "*"  # `models`: every model folder of the store


class Settings(BaseSettings):
    """Configuration of `ranker serve`; host, port and worker count are command-line arguments instead."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, protected_namespaces=())

    # --- model store ---
    model_store: Path = Field(default=Path("model_store"), description="Root of the artifact store.")
    model_name: str = Field(
        default="default", min_length=1,
        description="Model directory under the store; the default model (POST /rank) when several are served.",
    )
    model_version: str | None = Field(
        default=None, description="Version of model_name to load; the latest (natural sort) when unset (the other "
        "models of RANKER_MODELS serve their latest)."
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Models served by this server, each at POST /rank/{model}: names ("a,b" or a JSON list), or * '
        "for every model folder of the store; empty: model_name only. Must include model_name.",
    )
    max_models: int = Field(
        default=4, ge=1,
        description="Most models one server loads (each holds its variants in memory); start-up is refused beyond.",
    )

    # --- variants, A/B and shadow ---
    variant: DefaultVariant = Field(
        default=Auto.AUTO, description="Variant serving every request when ab_split is empty: vani, uoi, mari, or auto "
        "(per request, the form measured fastest at the nearest warm-up size at start-up; scores equal VanI's).")
    ab_split: dict[Variant, float] = Field(
        default_factory=dict, description='Weights per variant, e.g. {"mari": 0.9, "vani": 0.1}; bucketed by user id.'
    )
    shadow_variant: Variant | None = Field(default=None, description="Variant that re-scores a sample of requests.")
    shadow_sample_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Fraction of requests copied to the shadow."
    )
    shadow_queue_size: int = Field(
        default=64, ge=1, description="Pending shadow comparisons; beyond it they are dropped."
    )
    tolerance: float = Field(
        default=1e-5, gt=0.0, description="Largest |shadow - primary| score difference that matches."
    )

    # --- request limits ---
    max_candidates: int = Field(default=5000, ge=1, description="Candidates per request; more is a 422.")
    max_body_bytes: int = Field(default=16 * 2**20, ge=1024, description="Request body size; more is a 413.")
    body_read_timeout_s: float = Field(
        default=10.0, gt=0.0, allow_inf_nan=False,
        description="Longest time reading one request body may take (s); a stalled upload is then a 408.",
    )
    max_id: int = Field(
        default=2**53, ge=1, le=MAX_INT64, description="Largest id accepted; ids >= vocab_size go to OOV."
    )
    sequence_overflow: Literal["reject", "truncate"] = Field(
        default="reject", description="Sequences longer than max_len: 422 (reject) or keep the first max_len ids."
    )

    # --- HTTP connections, per process (service/api/http_limits.py; nginx / Envoy edge defaults) ---
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 2**20,
        description="Request line and header fields of one request (bytes); more is a 431, refused as it arrives.",
    )
    max_headers: int = Field(
        default=100, ge=8, le=10_000, description="Header fields of one request (trailers included); more is a 431."
    )
    header_read_timeout_s: float = Field(
        default=10.0, gt=0.0, le=3600.0, allow_inf_nan=False,
        description="A connection sends a complete request head within this long of opening or of its last "
        "response (s), or it is closed (with a 408 when part of a head came).",
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, allow_inf_nan=False,
        description="An idle keep-alive connection is closed this long after its last response (s).",
    )
    max_connections: int = Field(
        default=1000, ge=1,
        description="Open connections; a new one beyond it gets a 503 and is closed at once. Capped below "
        "RLIMIT_NOFILE at start-up, so that file descriptors never run out.",
    )
    max_buffered_body_bytes: int | None = Field(
        default=None, ge=1024,
        description="Request body bytes held at once, all requests together; a body that would pass it is a 503 "
        "with Retry-After before it is read. Unset: 4 x max_body_bytes.",
    )

    # --- inference execution ---
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch.set_num_threads; torch's default when unset."
    )
    inference_concurrency: int = Field(
        default=1, ge=1, description="Requests scored at the same time (thread pool slots)."
    )
    max_queued_requests: int = Field(
        default=32, ge=0, description="Requests waiting for a slot; beyond it a 503 at once."
    )
    max_queued_candidates: int = Field(
        default=20000, ge=1, description="Candidates of the requests waiting for a slot; beyond it a 503 at once."
    )
    queue_timeout_s: float = Field(default=2.0, gt=0.0, description="Longest wait for a slot before a 503.")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After header value on a 503.")
    warmup_candidates: tuple[int, ...] = Field(
        default=(1, 100, 1000), description="Batch sizes each variant runs once before readiness turns true."
    )
    trace_candidates: int = Field(
        default=CAPTURE_CANDIDATES, ge=2, description="Candidate batch used to trace the model into variants."
    )
    analysis_candidates: int = Field(default=1000, ge=1, description="N at which /v1/models reports FLOPs.")

    # --- micro-batching and compilation (docs/capacity.md) ---
    batching: bool = Field(
        default=False, description="Score requests that wait for the same slot as one call (user side kept split)."
    )
    batch_window_ms: float = Field(
        default=0.0, ge=0.0, le=100.0, allow_inf_nan=False,
        description="Extra wait for more requests once a slot is free (ms); 0: take only those already waiting.",
    )
    batch_max_requests: int = Field(default=32, ge=1, description="Requests scored in one batched call at most.")
    batch_max_candidates: int = Field(
        default=4096, ge=1, description="Candidates scored in one batched call at most (a larger request runs alone)."
    )
    compile: Literal["off", "auto", "inductor"] = Field(
        default="auto",
        description="torch.compile at start-up: auto = the routed variants, each kept only when equivalent and faster "
                    "at the warm-up sizes; inductor = every variant, kept when equivalent; off = none.",
    )
    compile_cache_dir: Path | None = Field(
        default=None,
        description="inductor's on-disk compile cache (TORCHINDUCTOR_CACHE_DIR), so a restart skips most of the "
                    "compile; unset: torch's default (/tmp/torchinductor_<user>). Mount a volume here in a container.",
    )

    # --- operations ---
    config_poll_s: float = Field(
        default=2.0, ge=0.0, allow_inf_nan=False,
        description="How often every worker re-reads model_store/<name>/serving.json (seconds); 0: never.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for /admin/*; admin is off when unset."
    )
    graceful_shutdown_s: float = Field(
        default=30.0, gt=0.0, description="How long shutdown waits for in-flight requests."
    )
    drain_delay_s: float = Field(
        default=5.0, ge=0.0, le=300.0, allow_inf_nan=False,
        description="After SIGTERM: /readyz answers 503 and requests are still served this long (seconds) "
        "before the server stops accepting; a second SIGTERM stops at once.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    access_log: bool = Field(default=False, description="uvicorn's per-request access log line.")

    @field_validator("ab_split")
    @classmethod
    def _check_ab_split(cls, split: dict[Variant, float]) -> dict[Variant, float]:
        return check_ab_split(split)

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        """RANKER_MODELS as `a,b`, `*` or a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [name for part in text.split(",")
                                                                  if (name := part.strip())]
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, names: list[str]) -> list[str]:
        if EVERY_MODEL in names:
            if names != [EVERY_MODEL]:
                raise ValueError(f"models: {EVERY_MODEL!r} (every model of the store) stands alone, got {names}")
            return names
        try:
            for name in names:
                check_component("models: model name", name)
        except ArtifactError as exc:
            raise ValueError(str(exc)) from None
        if len(set(names)) != len(names):
            raise ValueError(f"models: each model is listed once, got {names}")
        return names

    @model_validator(mode="after")
    def _check_served(self) -> Settings:
        if self.models and self.models != [EVERY_MODEL]:
            if self.model_name not in self.models:
                raise ValueError(f"model_name {self.model_name!r} (the default model, POST /rank) must be one of "
                                 f"RANKER_MODELS {self.models}")
            check_model_count(len(self.models), self.max_models)
        return self

    @field_validator("warmup_candidates")
    @classmethod
    def _check_warmup(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < 1 for size in sizes):
            raise ValueError(f"warmup_candidates must all be >= 1, got {sizes}")
        return sizes

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"admin_token must have at least {MIN_ADMIN_TOKEN_CHARS} characters")
        return token

    @model_validator(mode="after")
    def _check_body_budget(self) -> Settings:
        if self.max_buffered_body_bytes is not None and self.max_buffered_body_bytes < self.max_body_bytes:
            raise ValueError(f"max_buffered_body_bytes ({self.max_buffered_body_bytes}) must be at least "
                             f"max_body_bytes ({self.max_body_bytes}), or the largest body could never be read")
        return self

    @model_validator(mode="after")
    def _check_shadow(self) -> Settings:
        if self.shadow_sample_rate > 0 and self.shadow_variant is None:
            raise ValueError("shadow_sample_rate > 0 needs shadow_variant")
        return self

    @property
    def body_budget_bytes(self) -> int:
        """Bytes of request bodies held at once: max_buffered_body_bytes, else room for 4 of the largest."""
        return self.max_buffered_body_bytes or BODY_BUDGET_BODIES * self.max_body_bytes

    def for_model(self, name: str) -> Settings:
        """These settings for serving model `name` alone (each served model's own runtime, pool and watcher);
        model_version pins the default model only: another model serves its latest, or its serving.json's."""
        pinned = {} if name == self.model_name else {"model_version": None}
        return self.model_copy(update={"model_name": name, "models": [], **pinned})

    @property
    def model_path(self) -> Path:
        """model_store/<name>[/<version>] as the artifact loader expects it."""
        path = self.model_store / self.model_name
        return path / self.model_version if self.model_version else path

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, UnknownVariables(settings_cls), env_settings, ConfigFileSource(settings_cls))


def check_model_count(count: int, max_models: int) -> None:
    """Refuse to serve more models than max_models: each one holds its built variants in memory."""
    if count > max_models:
        raise ValueError(f"{count} models would be served, more than RANKER_MAX_MODELS={max_models}: list fewer in "
                         "RANKER_MODELS or raise RANKER_MAX_MODELS (each model holds its variants in memory)")


def model_location(model: Path) -> dict[str, str]:
    """The RANKER_MODEL_* settings that serve the artifact at `model`: a model folder (its latest version) or one
    version folder (the one holding model.json). ValueError when it is neither."""
    model = model.resolve()
    if (model / "model.json").is_file():
        return {f"{ENV_PREFIX}MODEL_STORE": str(model.parent.parent), f"{ENV_PREFIX}MODEL_NAME": model.parent.name,
                f"{ENV_PREFIX}MODEL_VERSION": model.name}
    if model.is_dir() and any((child / "model.json").is_file() for child in model.iterdir()):
        return {f"{ENV_PREFIX}MODEL_STORE": str(model.parent), f"{ENV_PREFIX}MODEL_NAME": model.name}
    raise ValueError(f"{model} is neither a model folder (<store>/<name>, holding version folders) nor a version "
                     "folder (holding model.json)")


def describe_settings() -> list[tuple[str, str, str]]:
    """(variable, default, description) of every setting, in declaration order: what `ranker serve --help` lists."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None:
            shown = "(unset)"
        elif isinstance(default, bool | tuple | list | dict):
            shown = json.dumps(default)  # as the variable is written: JSON for these (true, [1, 100], {})
        else:
            shown = str(default.value if isinstance(default, Variant | Auto) else default)
        rows.append((ENV_PREFIX + name.upper(), shown, field.description or ""))
    return rows


class UnknownVariables(PydanticBaseSettingsSource):
    """Refuses a RANKER_* variable that is no setting (a typo such as RANKER_MAX_CANDIDATE would otherwise be
    ignored, and the server would start with the default the user meant to change). Adds no values."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        known = {ENV_PREFIX + name.upper() for name in self.settings_cls.model_fields} | NOT_SETTINGS
        unknown = sorted(name for name in os.environ
                         if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)
        if unknown:
            suffixes = sorted(name.removeprefix(ENV_PREFIX) for name in known)  # the prefix would match anything
            hints = [f"{name} (did you mean {ENV_PREFIX}{close[0]}?)" if (close := difflib.get_close_matches(
                name.upper().removeprefix(ENV_PREFIX), suffixes, n=1)) else name for name in unknown]
            raise ValueError(f"unknown setting variable(s): {', '.join(hints)}; the RANKER_* settings are listed "
                             "in README.md (Configuration)")
        return {}


class ConfigFileSource(PydanticBaseSettingsSource):
    """Settings from the TOML or JSON file named by RANKER_CONFIG_FILE (keys are the field names)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get(CONFIG_FILE_ENV)
        self._values = read_config_file(Path(path)) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML (.toml) or JSON (anything else) settings file into a dict."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{CONFIG_FILE_ENV}={path}: cannot read the file ({exc})") from exc
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{CONFIG_FILE_ENV}={path}: not valid {path.suffix.lstrip('.') or 'json'} ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{CONFIG_FILE_ENV}={path}: the file must hold one object of settings")
    return values
