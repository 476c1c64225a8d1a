"""The fleet config (`FleetConfig`): model_store/<name>/serving.json, the one file every worker of every replica
follows. Process settings (service/serving/settings.py) are the other kind of config, one per process.

    {"generation": 7, "version": "v2", "variant": "auto", "ab_split": {"mari": 0.9, "vani": 0.1},
     "shadow": {"variant": "vani", "sample_rate": 0.05}}

A version canary adds `versions` (weights per version folder; users hashed onto one, `version` is the primary,
what anonymous requests get and what the others are compared with), `labels` (e.g. stable, canary -> a version)
and `compare` (the sampled comparison of versions on live traffic, service/serving/version_compare.py):

    {..., "version": "v7", "versions": {"v7": 0.95, "v8": 0.05}, "labels": {"stable": "v7", "canary": "v8"},
     "compare": {"sample_rate": 0.01, "top_k": 10, "min_overlap": 0.5}}

`variant` is vani, uoi, mari or auto (service/serving/fastest.py); A/B arms and the shadow name real variants.

Writers (`POST /admin/*`, `ranker config set`) hold an exclusive lock on a sibling lock file, read the current
file, write the next generation to a temp file in the same folder, fsync it and `os.replace` it over the old
one, so a reader, which never locks, sees the old file or the new one, whole. docs/ARCHITECTURE.md section 4.

Writers never write `version` null: "the latest" is resolved when the generation is written, so every process
of every replica serves the same folder under it, even one started after a newer folder appeared. A null left
by hand (or by an older writer) is resolved once per generation for all workers of a replica (fleet_state.py).
Readers open only a regular file, without blocking and without following a symlink, and read a bounded size:
a FIFO or device in its place would otherwise hang the reader in open() or read().
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from service.engine import Variant
from service.serving.routing import DefaultVariant, check_ab_split, check_weights
from service.serving.settings import Settings
from service.serving.validation import problems
from service.store.manifest import ArtifactError
from service.store.versions import check_component, resolve_version

FLEET_CONFIG_FILE = "serving.json"
LOCK_FILE = ".serving.json.lock"  # hidden, and not a folder: never taken for a model version
LOCK_TIMEOUT_S = 300.0  # a writer may hold the lock while it builds and verifies a new model version
LOCK_RETRY_S = 0.05
MAX_ECHO_CHARS = 200  # of a bad value quoted in an error message (one log line)
MAX_COMPARE_TOP_K = 10_000  # the largest top-k a comparison ranks (a request holds at most max_candidates)
MAX_FILE_BYTES = 64 * 1024  # a real config is a few hundred bytes; more is refused, never read whole
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC  # a FIFO's open() must not wait


class FleetConfigError(ValueError):
    """serving.json (or a change to it) is unusable; the message names the file and the field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class FleetConfigIOError(FleetConfigError):
    """The file or its lock cannot be opened, read or written (a missing model folder, a read-only store)."""


class FleetConfigBusy(FleetConfigError):
    """Another writer held the lock for longer than LOCK_TIMEOUT_S."""


class FleetConfigUnusable(FleetConfigError):
    """Something other than a bounded regular file stands at serving.json (a FIFO, a device, a symlink, a
    huge file): refused like a broken generation, and replaced by the next write."""


class ShadowConfig(BaseModel):
    """Which variant re-scores a sample of requests, and how large a sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Variant | None
    sample_rate: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_variant(self) -> ShadowConfig:
        if self.sample_rate > 0 and self.variant is None:
            raise ValueError("shadow.sample_rate > 0 needs shadow.variant")
        return self


CANARY_FIELDS = ("versions", "labels", "compare")  # written only when not their defaults (FleetConfig.to_json)


class CompareConfig(BaseModel):
    """The sampled comparison of two model versions on live traffic: how far their top-k rankings agree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    top_k: StrictInt = Field(default=10, ge=1, le=MAX_COMPARE_TOP_K)
    min_overlap: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False,
                                      description="Below this top-k overlap share a comparison counts as a "
                                                  "disagreement (and is logged); null: never.")


class FleetConfig(BaseModel):
    """One generation of the fleet config: model version, variant, A/B split and shadow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generation: StrictInt = Field(ge=0, description="Bumped by every write; 0 is a process's RANKER_* settings.")
    version: str | None = Field(description="Version folder; null: the latest when a process applies it.")
    variant: DefaultVariant = Field(description="Serves every request when ab_split is empty (auto: the form "
                                    "measured fastest at the request's size).")
    ab_split: dict[Variant, float] = Field(description="Weights per variant; users bucketed by user id.")
    shadow: ShadowConfig
    versions: dict[str, float] = Field(default_factory=dict, description="Weights per version folder (a canary); "
                                       "users bucketed by user id. Empty: `version` serves every request.")
    labels: dict[str, str] = Field(default_factory=dict, description="Names for versions that serve, e.g. "
                                   "{\"stable\": \"v7\", \"canary\": \"v8\"}.")
    compare: CompareConfig = Field(default_factory=CompareConfig)

    @field_validator("version")
    @classmethod
    def _check_version(cls, version: str | None) -> str | None:
        return None if version is None else check_component("version", version)

    @field_validator("versions")
    @classmethod
    def _check_versions(cls, versions: dict[str, float]) -> dict[str, float]:
        for name in versions:
            check_component("versions", name)
        return check_weights(versions, "versions")

    @model_validator(mode="after")
    def _check_split(self) -> FleetConfig:
        if self.versions and self.version not in self.versions:
            raise ValueError(f"versions must name the primary version {self.version!r} (what anonymous requests "
                             f"get and the others are compared with), got {sorted(self.versions)}; to serve it "
                             f"alone, empty versions (ranker config set --promote {self.version})")
        serving = self.serving_versions()
        for label, version in self.labels.items():
            check_component("labels", label)
            if self.version is not None and version not in serving:  # a null version: checked once resolved
                raise ValueError(f"labels: {label!r} names {version!r}, which does not serve (serving: "
                                 f"{sorted(serving)})")
        return self

    def serving_versions(self) -> tuple[str, ...]:
        """The versions that serve: the primary first, then each other version of positive weight (sorted);
        empty while the version is null (not resolved yet)."""
        if self.version is None:
            return ()
        others = sorted(v for v, weight in self.versions.items() if weight > 0 and v != self.version)
        return (self.version, *others)

    @field_validator("ab_split")
    @classmethod
    def _check_ab_split(cls, split: dict[Variant, float]) -> dict[Variant, float]:
        return check_ab_split(split)

    @classmethod
    def from_settings(cls, settings: Settings) -> FleetConfig:
        """Generation 0: what a process serves from its RANKER_* settings while there is no serving.json."""
        return validated({
            "generation": 0, "version": settings.model_version, "variant": settings.variant,
            "ab_split": dict(settings.ab_split),
            "shadow": {"variant": settings.shadow_variant, "sample_rate": settings.shadow_sample_rate},
        }, "settings")

    def routed_variants(self) -> frozenset[DefaultVariant]:
        """What scores requests under this config: the default (maybe `auto`), the A/B arms, the shadow."""
        routed: set[DefaultVariant] = {self.variant, *(v for v, weight in self.ab_split.items() if weight > 0)}
        if self.shadow.variant is not None and self.shadow.sample_rate > 0:
            routed.add(self.shadow.variant)
        return frozenset(routed)

    def updated(self, changes: Mapping[str, Any]) -> FleetConfig:
        """A copy with `changes` (top-level fields; `shadow` and `compare` may name only some of their own),
        validated whole."""
        current = self.model_dump()
        for part in ("shadow", "compare"):
            partial = changes.get(part)
            if isinstance(partial, Mapping):
                changes = {**changes, part: {**current[part], **partial}}
        return validated({**current, **changes}, "the change")

    def to_json(self) -> bytes:
        """The file's bytes; the canary fields only when set, so a config without a canary reads as before."""
        data = self.model_dump(mode="json")
        for name in CANARY_FIELDS:
            if getattr(self, name) == FleetConfig.model_fields[name].get_default(call_default_factory=True):
                del data[name]
        return (json.dumps(data, indent=2) + "\n").encode()


def validated(data: Any, source: str) -> FleetConfig:
    """FleetConfig from plain data; FleetConfigError naming the first field at fault."""
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from None


def parse_fleet_config(raw: bytes, source: Path | str) -> FleetConfig:
    """FleetConfig from the bytes of serving.json; FleetConfigError for broken JSON or a bad field."""
    try:
        return FleetConfig.model_validate_json(raw)
    except ValidationError as exc:
        raise _config_error(exc, str(source)) from None


def _config_error(exc: ValidationError, source: str) -> FleetConfigError:
    first = problems(exc, echo_chars=MAX_ECHO_CHARS)[0]  # the operator's own file: what it holds is shown
    if first.is_json_error:
        return FleetConfigError(f"{source}: not valid JSON ({first.message})")
    got = "" if first.kind == "value_error" else f" (got {first.given})"
    return FleetConfigError(f"{source}: field {first.field or '(the object)'}: {first.message}{got}",
                              field=str(first.loc[0]) if first.loc else None)


def generation_in(raw: bytes) -> int:
    """The generation a broken file still states, or 0: the next write must move past it."""
    try:
        value = json.loads(raw).get("generation")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested deeper than json's limit
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _check_regular(path: Path, status: os.stat_result) -> None:
    if stat.S_ISLNK(status.st_mode):
        raise FleetConfigUnusable(f"{path}: a symbolic link; expected a regular file (writers replace it by rename)")
    if not stat.S_ISREG(status.st_mode):
        raise FleetConfigUnusable(f"{path}: not a regular file (mode {stat.filemode(status.st_mode)}); "
                                    "expected a regular file (writers replace it by rename)")
    if status.st_size > MAX_FILE_BYTES:
        raise FleetConfigUnusable(f"{path}: {status.st_size} bytes; expected at most {MAX_FILE_BYTES}")


def _read_bounded(path: Path, descriptor: int) -> bytes:
    """At most MAX_FILE_BYTES (a file still growing past its fstat size is refused, not read on)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(descriptor, MAX_FILE_BYTES + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise FleetConfigUnusable(f"{path}: over {MAX_FILE_BYTES} bytes; expected at most {MAX_FILE_BYTES}")
    return b"".join(chunks)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class FleetConfigFile:
    """model_store/<name>/serving.json: read without locking; read-modify-write under an exclusive lock."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.path = model_dir / FLEET_CONFIG_FILE
        self._lock_path = model_dir / LOCK_FILE

    @classmethod
    def for_settings(cls, settings: Settings) -> FleetConfigFile:
        return cls(settings.model_store / settings.model_name)

    def read_bytes(self) -> bytes | None:
        """The file's content; None when there is no file. Never blocks: FleetConfigUnusable for anything but
        a regular file of at most MAX_FILE_BYTES, FleetConfigIOError when it cannot be opened or read."""
        try:
            _check_regular(self.path, os.lstat(self.path))  # a device is refused before open() could touch it
            descriptor = os.open(self.path, READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink between lstat and open
                raise FleetConfigUnusable(f"{self.path}: a symbolic link; expected a regular file") from None
            raise FleetConfigIOError(f"{self.path}: cannot read the file ({exc})") from exc
        try:
            _check_regular(self.path, os.fstat(descriptor))  # what was opened, whatever was swapped in since
            return _read_bounded(self.path, descriptor)
        except OSError as exc:
            raise FleetConfigIOError(f"{self.path}: cannot read the file ({exc})") from exc
        finally:
            os.close(descriptor)

    def read(self) -> FleetConfig | None:
        raw = self.read_bytes()
        return None if raw is None else parse_fleet_config(raw, self.path)

    @contextlib.contextmanager
    def locked(self, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the writers' lock (flock on a sibling file; every writer on this file system respects it)."""
        try:
            descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FleetConfigIOError(f"{self._lock_path}: cannot open the writers' lock ({exc})") from exc
        try:
            deadline = time.monotonic() + timeout_s
            while not _try_lock(descriptor):
                if time.monotonic() > deadline:
                    raise FleetConfigBusy(f"{self.path}: another writer held the lock over {timeout_s:g} s")
                time.sleep(LOCK_RETRY_S)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def next_config(
        self, changes: Mapping[str, Any], *, absent: FleetConfig, invalid: FleetConfig | None
    ) -> FleetConfig:
        """The current file with `changes` and the next generation; call it holding `locked()`.

        `absent` is the base when there is no file; `invalid` the base when the file is unusable (None: refuse).
        """
        raw: bytes | None = None
        try:
            raw = self.read_bytes()
            base = absent if raw is None else parse_fleet_config(raw, self.path)
        except FleetConfigIOError:
            raise
        except FleetConfigError as exc:  # broken, or not a regular file (then raw stays None)
            if invalid is None:
                raise FleetConfigError(f"{exc.message}; fix or delete the file first", exc.field) from None
            base = invalid.updated({"generation": max(invalid.generation, generation_in(raw or b""))})
        config = base.updated({**changes, "generation": base.generation + 1})
        return config if config.version is not None else config.updated({"version": self.latest_version()})

    def latest_version(self) -> str:
        """The latest version folder now: what a null version ("the latest") means when a generation is written."""
        try:
            return resolve_version(self.model_dir).name
        except ArtifactError as exc:
            raise FleetConfigError(f"{self.path}: field version: null means the latest, and there is none "
                                     f"({exc})", field="version") from None

    def write(self, config: FleetConfig) -> bytes:
        """Replace the file atomically with `config` (temp file, fsync, rename, fsync of the folder)."""
        data = config.to_json()
        try:
            descriptor, temp = tempfile.mkstemp(prefix=f".{FLEET_CONFIG_FILE}.", suffix=".tmp", dir=self.model_dir)
        except OSError as exc:
            raise FleetConfigIOError(f"{self.model_dir}: cannot write {FLEET_CONFIG_FILE} ({exc})") from exc
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)  # mkstemp's 0600 would hide it from workers running as another user
            os.replace(temp, self.path)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            raise FleetConfigIOError(f"{self.path}: cannot write the file ({exc})") from exc
        folder = os.open(self.model_dir, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)
        return data
