"""Keep this process on the fleet config (model_store/<name>/serving.json, fleet_config.py).

At start-up the file wins over the RANKER_* settings when it exists. A background thread re-reads it every
`config_poll_s` seconds and applies a new generation: a new model version is built, verified and warmed
beside the old one before the swap, then routing and shadow switch with it. A version canary (several versions
with weights) is one generation: every version it names is built, verified and warmed before the swap, or the
whole generation is refused. A generation that cannot be
applied (broken JSON, unknown variant, missing version, corrupt artifact) is refused, logged in one line and
counted, and this process keeps serving the last good one; it looks again only when the file changes. An
admin call of this process writes the next generation and applies it here at once (`publish`).

Whatever stands at serving.json, the poll never blocks: the file is read (outside the apply lock) only when it
is a regular file of bounded size (fleet_config.py); a FIFO, device or symlink there is refused like a
broken generation. One generation is one version in every worker: a null version is resolved once for the
replica (fleet_state.py), and a worker started later that cannot apply the file falls back to the generation
its siblings last applied, or fails start-up (start_up).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.serving.errors import ConfigNotWritten, InvalidRequest, ModelRejected, ReloadInProgress
from service.serving.fleet_config import (
    LOCK_TIMEOUT_S,
    FleetConfig,
    FleetConfigBusy,
    FleetConfigError,
    FleetConfigFile,
    FleetConfigIOError,
    FleetConfigUnusable,
    generation_in,
    parse_fleet_config,
)
from service.serving.fleet_state import FleetState
from service.serving.memory import release_build_memory
from service.serving.metrics import ServiceMetrics
from service.serving.routing import VariantRouter, VersionRouter
from service.serving.runtime import ModelRuntime, ServingNow, VersionSplit
from service.serving.serving_model import ServingModel
from service.serving.settings import Settings
from service.serving.shadow import ShadowComparator

logger = logging.getLogger(__name__)

FROM_FILE = "file"
FROM_ENVIRONMENT = "environment"
REFUSED_INVALID = "invalid"  # the file does not parse or validate
REFUSED_MODEL = "model"  # its version cannot be found, loaded, built or verified
MAX_REASON_CHARS = 500  # of a refusal's reason in the log line and /v1/models


@dataclass(frozen=True)
class AppliedGeneration:
    config: FleetConfig
    source: str  # FROM_FILE or FROM_ENVIRONMENT
    applied_at: str


Snapshot = bytes | str | None  # the file's bytes, why it is unusable (a FIFO...), or None: no file


@dataclass(frozen=True)
class Refusal:
    generation: int | None  # None: the file could not be read as a config at all
    reason: str  # REFUSED_INVALID or REFUSED_MODEL
    message: str
    at: str


class ConfigWatcher:
    """Applies the fleet config to this process: at start-up, when the file changes, and after admin writes."""

    def __init__(
        self, settings: Settings, runtime: ModelRuntime, shadow: ShadowComparator, metrics: ServiceMetrics
    ) -> None:
        self.file = FleetConfigFile.for_settings(settings)
        self.poll_s = settings.config_poll_s
        self.runtime = runtime
        self.shadow = shadow
        self.metrics = metrics
        self._environment = FleetConfig.from_settings(settings)
        self._lock = threading.Lock()  # one apply at a time: the poll thread or an admin call
        # what the sibling workers of this replica applied to this model
        self.fleet = FleetState.from_environment().of_model(settings.model_name)
        self._seen: Snapshot = None  # the file content last looked at; unchanged content is not re-applied
        self._applied: AppliedGeneration | None = None
        self.last_refusal: Refusal | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def applied(self) -> AppliedGeneration:
        if self._applied is None:
            raise RuntimeError("start_up() has not applied a config yet")
        return self._applied

    def start_up(self) -> ServingModel:
        """Apply serving.json, or the RANKER_* settings when there is none; raises if it cannot serve.

        When that fails (the file is unusable, its version folder is gone or broken), a worker of a multi-worker
        server starts instead on the generation its siblings last applied (fleet_state.py), and the refusal is
        recorded as in a poll: it serves what they serve, under the same generation. When that cannot serve
        either (its version folder was deleted: they serve it from memory), start-up fails with one log line
        and the supervisor (service/api/supervisor.py) retries it later with backoff while the siblings keep
        serving. A single process has no siblings: it fails start-up, as it always did.
        """
        with self._lock:
            snapshot: Snapshot = None
            config: FleetConfig | None = None
            try:
                snapshot = self._snapshot()  # FleetConfigIOError (e.g. permissions): as unusable as broken JSON
                config, source = self._config_in(snapshot)
                self._apply(config, source)
            except (FleetConfigError, ModelRejected) as exc:
                self._start_from_fleet(snapshot, config, exc)
            self._seen = snapshot
        return self.runtime.serving

    def poll_once(self) -> bool:
        """Apply the file if its content changed since the last look; True when a new config now serves."""
        seen = self._seen
        snapshot = self._snapshot()  # outside the lock: an admin call never waits on this read
        if not self._lock.acquire(blocking=False):
            return False  # an admin call of this process is applying a config; look again next time
        try:
            if self._seen is not seen:
                return False  # an admin call applied a newer file since this read: read again next time
            action = decide(snapshot, seen, self.applied.config, lambda raw: self._resolved(self._config_in(raw)[0]))
            if snapshot is not None and snapshot != seen:
                self._seen = snapshot  # looked at: the same content is not looked at again
            return self._act(action)
        finally:
            self._lock.release()

    def _act(self, action: Action) -> bool:
        """Carry out a poll's decision; True when a new config now serves."""
        if isinstance(action, Keep):
            return False
        if isinstance(action, Refuse):
            self._refuse(action.generation, action.reason, action.message)
            return False
        try:
            models = self._models_for(action.config)
        except Exception as exc:  # whatever a new version does wrong, the last good generation keeps serving
            self._refuse(action.config.generation, REFUSED_MODEL, str(exc))
            return False
        if self._stop.is_set():
            return False  # shutting down while it built: this process's metrics are already marked dead
        self._activate(action.config, models, FROM_FILE)
        return True

    def publish(self, changes: dict[str, Any]) -> ServingNow:
        """Write the next generation of serving.json with `changes` and apply it here at once (admin calls).

        A model version that cannot be built and verified here is refused (ModelRejected) before anything is
        written, so the fleet never sees it. A broken file is replaced, starting from this process's config.
        """
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise ReloadInProgress("another fleet config change is still being applied")
        try:
            with self.file.locked():
                current = self.applied.config
                config = self.file.next_config(changes, absent=current, invalid=current)
                models = self._models_for(config)
                self._seen = self.file.write(config)
            return self._activate(config, models, FROM_FILE)
        except FleetConfigBusy as exc:
            raise ReloadInProgress(exc.message) from None
        except FleetConfigIOError as exc:
            raise ConfigNotWritten(exc.message) from None
        except FleetConfigError as exc:
            raise InvalidRequest(exc.message, field=exc.field, code="invalid_value") from None
        finally:
            self._lock.release()

    def latest_version(self) -> str:
        """The name of the latest version folder now (an admin reload without a version pins it)."""
        return self.runtime.version_path(None).name

    def start(self) -> None:
        """Poll in a background thread every poll_s seconds (not at all when poll_s is 0)."""
        if self.poll_s > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)  # a model build in progress may outlive it: a daemon thread
            self._thread = None

    def status(self) -> dict[str, Any]:
        """The applied generation and where it came from, for /v1/models."""
        applied = self.applied
        refusal = self.last_refusal
        return {
            "generation": applied.config.generation, "source": applied.source, "path": str(self.file.path),
            "applied_at": applied.applied_at, "poll_s": self.poll_s,
            "last_refusal": None if refusal is None else {
                "generation": refusal.generation, "reason": refusal.reason, "message": refusal.message,
                "at": refusal.at,
            },
        }

    def _run(self) -> None:
        last_error = ""
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
                last_error = ""
            except Exception as exc:  # e.g. the store is unreadable: log once per distinct error, keep serving
                if str(exc) != last_error:
                    logger.warning("fleet config not read: %s", _one_line(str(exc)))
                last_error = str(exc)

    def _snapshot(self) -> Snapshot:
        """The file's bytes, None without a file, or why it is not a usable file; never blocks."""
        try:
            return self.file.read_bytes()
        except FleetConfigUnusable as exc:
            return exc.message

    def _config_in(self, snapshot: Snapshot) -> tuple[FleetConfig, str]:
        return config_in(snapshot, self._environment, self.file.path)

    def _resolved(self, config: FleetConfig) -> FleetConfig:
        """`config` with a concrete version: a null one resolves to the folder every worker uses for its
        generation (the latest when the first of them applied it)."""
        if config.version is not None:
            return config
        return config.updated({"version": self.fleet.version_for(config.generation, self.latest_version)})

    def _start_from_fleet(self, snapshot: Snapshot, failed: FleetConfig | None, exc: Exception) -> None:
        """Start on the generation the siblings last applied, after `failed` (None: unreadable) could not."""
        reason = REFUSED_MODEL if isinstance(exc, ModelRejected) else REFUSED_INVALID
        generation = failed.generation if failed is not None else _generation_of(snapshot)
        fallback = self.fleet.last_applied()
        if fallback is None or (failed is not None and failed.generation == fallback.generation
                                and failed.version in (None, fallback.version)):
            logger.error("cannot start: fleet config %s refused (%s): %s", _generation_name(generation), reason,
                         _one_line(str(exc)))
            raise exc
        logger.warning("fleet config %s refused at start-up (%s); starting on generation %d (version %s), "
                       "the last one this server's workers applied", _generation_name(generation), reason,
                       fallback.generation, fallback.version)
        try:
            self._apply(fallback, FROM_FILE if fallback.generation else FROM_ENVIRONMENT)
        except ModelRejected as again:
            logger.error("cannot start: generation %d cannot serve here either: %s", fallback.generation,
                         _one_line(str(again)))
            raise
        self._refuse(generation, reason, str(exc))

    def _apply(self, config: FleetConfig, source: str) -> ServingNow:
        config = self._resolved(config)
        return self._activate(config, self._models_for(config), source)

    def _models_for(self, config: FleetConfig) -> dict[str, ServingModel]:
        """The serving model of every version the config serves (the primary first), each the one serving now
        or a new one built, verified and warmed; ModelRejected when any cannot serve: nothing is swapped."""
        current = self.runtime.active.serving_versions().values() if self.runtime.ready else ()
        built = {model.path.resolve(): model for model in current}
        models: dict[str, ServingModel] = {}
        for version in config.serving_versions():
            path = self.runtime.version_path(version).resolve()
            if path not in built:
                built[path] = self.runtime.build(path, config.routed_variants())  # ModelRejected: cannot serve
            models[version] = built[path]
        return models

    def _activate(self, config: FleetConfig, models: dict[str, ServingModel], source: str) -> ServingNow:
        previous = self.runtime.active if self.runtime.ready else None
        serving = models[config.serving_versions()[0]]
        split = None if len(models) == 1 else VersionSplit(
            models, VersionRouter(serving.version, {v: config.versions.get(v, 0.0) for v in models}),
            config.labels, config.compare)
        self.shadow.configure(config.shadow.variant, config.shadow.sample_rate)
        active = self.runtime.activate(serving, VariantRouter(config.variant, config.ab_split), config.generation,
                                       split)
        self._applied = AppliedGeneration(config, source, _now())
        self._remember(config)
        # after the swap: the gauge never runs ahead
        self.metrics.set_config_generation(self.runtime.settings.model_name, config.generation)
        self.metrics.set_model(
            None if previous is None else (previous.serving.name, previous.serving.version,
                                           previous.router.default.value),
            (serving.name, serving.version, config.variant.value),
        )
        swapped = previous is None or _ids(previous.serving_versions().values()) != _ids(models.values())
        if previous is not None and swapped:
            self.metrics.reloads.labels(model=self.runtime.settings.model_name, outcome="ok").inc()
        logger.info("fleet config generation %d applied (from %s): model %s/%s, versions %s, routing %s, "
                    "shadow %s at %g", config.generation, source, serving.name, serving.version,
                    "-" if split is None else split.router.shares, active.router.to_dict(),
                    config.shadow.variant.value if config.shadow.variant else None, config.shadow.sample_rate)
        if swapped:
            del previous  # the old models go with the last reference to them, then the capture's garbage
            release_build_memory()
        return active

    def _remember(self, config: FleetConfig) -> None:
        try:
            self.fleet.remember(config)
        except OSError as exc:  # the record only helps a later worker start; serving goes on without it
            logger.warning("fleet record not written: %s", _one_line(str(exc)))

    def _refuse(self, generation: int | None, reason: str, message: str) -> None:
        message = _one_line(message)
        self.last_refusal = Refusal(generation, reason, message, _now())
        self.metrics.config_rejections.labels(model=self.runtime.settings.model_name, reason=reason).inc()
        if reason == REFUSED_MODEL:
            self.metrics.reloads.labels(model=self.runtime.settings.model_name, outcome="refused").inc()
            release_build_memory()  # what the refused build left
        logger.warning("fleet config %s refused (%s), still serving generation %d: %s",
                       _generation_name(generation), reason, self.applied.config.generation, message)


def config_in(snapshot: Snapshot, environment: FleetConfig, path: Path) -> tuple[FleetConfig, str]:
    """Which config wins, the one rule: serving.json when there is one, else the RANKER_* settings (`environment`,
    generation 0); with where it came from. FleetConfigError when a file is there but cannot be used."""
    if snapshot is None:
        return environment, FROM_ENVIRONMENT
    if isinstance(snapshot, str):
        raise FleetConfigUnusable(snapshot)
    return parse_fleet_config(snapshot, path), FROM_FILE


def starting_config(settings: Settings) -> tuple[FleetConfig, str]:
    """The config a process with `settings` starts on now (`config_in` on the file as it stands)."""
    file = FleetConfigFile.for_settings(settings)
    return config_in(file.read_bytes(), FleetConfig.from_settings(settings), file.path)


@dataclass(frozen=True)
class Keep:
    """Nothing to do: the last applied config keeps serving."""

    why: str


@dataclass(frozen=True)
class Refuse:
    """The file holds a generation that cannot be applied: count it, log it, keep serving the last good one."""

    generation: int | None
    reason: str  # REFUSED_INVALID or REFUSED_MODEL
    message: str


@dataclass(frozen=True)
class Apply:
    """A new config to build (its version, when new) and switch to."""

    config: FleetConfig


Action = Keep | Refuse | Apply


def decide(
    snapshot: Snapshot, seen: Snapshot, applied: FleetConfig, read: Callable[[bytes | str], FleetConfig],
) -> Action:
    """What a poll does with what it found at serving.json, given what it saw last time and what serves now.

    `read` turns the file's content into a config with a concrete version (FleetConfigError when it does not
    parse or validate, ModelRejected when a null version finds no version folder). Deciding does nothing
    else, so every rule of the watch is here and testable without files, threads or models."""
    if snapshot is None:
        return Keep("no file: a deleted file changes nothing")
    if snapshot == seen:
        return Keep("unchanged since the last look")
    try:
        config = read(snapshot)
    except FleetConfigError as exc:
        return Refuse(_generation_of(snapshot), REFUSED_INVALID, exc.message)
    except ModelRejected as exc:
        return Refuse(_generation_of(snapshot), REFUSED_MODEL, str(exc))
    if config == applied:
        return Keep("already serving it (written and applied by an admin call of this process)")
    return Apply(config)


def _generation_of(snapshot: Snapshot) -> int | None:
    """The generation a broken file still states (0 when none); None when it could not be read at all."""
    return generation_in(snapshot) if isinstance(snapshot, bytes) else None


def _ids(models: Iterable[ServingModel]) -> set[int]:
    return {id(model) for model in models}


def _generation_name(generation: int | None) -> str:
    return f"generation {generation}" if generation is not None else "file"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON_CHARS]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
