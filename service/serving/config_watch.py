"""Keep this process on the fleet's serving config (model_store/<name>/serving.json, serving_config.py).

At start-up the file wins over the RANKER_* settings when it exists. A background thread re-reads it every
`config_poll_s` seconds and applies a new generation: a new model version is built, verified and warmed
beside the old one before the swap, then routing and shadow switch with it. A generation that cannot be
applied (broken JSON, unknown variant, missing version, corrupt artifact) is refused, logged in one line and
counted, and this process keeps serving the last good one; it looks again only when the file changes. An
admin call of this process writes the next generation and applies it here at once (`publish`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.serving.errors import ConfigNotWritten, InvalidRequest, ReloadInProgress
from service.serving.metrics import ServiceMetrics
from service.serving.routing import VariantRouter
from service.serving.runtime import ActiveConfig, ModelRuntime, ServingModel, release_build_memory
from service.serving.serving_config import (
    LOCK_TIMEOUT_S,
    ServingConfig,
    ServingConfigBusy,
    ServingConfigError,
    ServingConfigFile,
    ServingConfigIOError,
    generation_in,
    parse_serving_config,
)
from service.serving.settings import Settings
from service.serving.shadow import ShadowComparator

logger = logging.getLogger(__name__)

FROM_FILE = "file"
FROM_ENVIRONMENT = "environment"
REFUSED_INVALID = "invalid"  # the file does not parse or validate
REFUSED_MODEL = "model"  # its version cannot be found, loaded, built or verified
MAX_REASON_CHARS = 500  # of a refusal's reason in the log line and /v1/models


@dataclass(frozen=True)
class AppliedConfig:
    config: ServingConfig
    source: str  # FROM_FILE or FROM_ENVIRONMENT
    applied_at: str


@dataclass(frozen=True)
class Refusal:
    generation: int
    reason: str  # REFUSED_INVALID or REFUSED_MODEL
    message: str
    at: str


class ConfigWatcher:
    """Applies the serving config to this process: at start-up, when the file changes, and after admin writes."""

    def __init__(
        self, settings: Settings, runtime: ModelRuntime, shadow: ShadowComparator, metrics: ServiceMetrics
    ) -> None:
        self.file = ServingConfigFile.for_settings(settings)
        self.poll_s = settings.config_poll_s
        self.runtime = runtime
        self.shadow = shadow
        self.metrics = metrics
        self._environment = ServingConfig.from_settings(settings)
        self._lock = threading.Lock()  # one apply at a time: the poll thread or an admin call
        self._seen: bytes | None = None  # the file content last looked at; unchanged content is not re-applied
        self._applied: AppliedConfig | None = None
        self.last_refusal: Refusal | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def applied(self) -> AppliedConfig:
        if self._applied is None:
            raise RuntimeError("start_up() has not applied a config yet")
        return self._applied

    def start_up(self) -> ServingModel:
        """Apply serving.json, or the RANKER_* settings when there is none; raises if it cannot serve."""
        with self._lock:
            raw = self.file.read_bytes()
            if raw is None:
                self._apply(self._environment, FROM_ENVIRONMENT)
            else:
                self._apply(parse_serving_config(raw, self.file.path), FROM_FILE)
            self._seen = raw
        return self.runtime.serving

    def poll_once(self) -> bool:
        """Apply the file if its content changed since the last look; True when a new config now serves."""
        if not self._lock.acquire(blocking=False):
            return False  # an admin call of this process is applying a config; look again next time
        try:
            raw = self.file.read_bytes()
            if raw is None or raw == self._seen:
                return False  # a deleted file changes nothing: the last applied config keeps serving
            self._seen = raw
            try:
                config = parse_serving_config(raw, self.file.path)
            except ServingConfigError as exc:
                self._refuse(generation_in(raw), REFUSED_INVALID, exc.message)
                return False
            if config == self.applied.config:
                return False  # written and applied by an admin call of this process
            try:
                serving = self._model_for(config)
            except Exception as exc:  # whatever the new version does wrong, the last good one keeps serving
                self._refuse(config.generation, REFUSED_MODEL, str(exc))
                return False
            if self._stop.is_set():
                return False  # shutting down while it built: this process's metrics are already marked dead
            self._activate(config, serving, FROM_FILE)
            return True
        finally:
            self._lock.release()

    def publish(self, changes: dict[str, Any]) -> ActiveConfig:
        """Write the next generation of serving.json with `changes` and apply it here at once (admin calls).

        A model version that cannot be built and verified here is refused (ModelRejected) before anything is
        written, so the fleet never sees it. A broken file is replaced, starting from this process's config.
        """
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise ReloadInProgress("another serving config change is still being applied")
        try:
            with self.file.locked():
                current = self.applied.config
                config = self.file.next_config(changes, absent=current, invalid=current)
                serving = self._model_for(config)
                self._seen = self.file.write(config)
            return self._activate(config, serving, FROM_FILE)
        except ServingConfigBusy as exc:
            raise ReloadInProgress(exc.message) from None
        except ServingConfigIOError as exc:
            raise ConfigNotWritten(exc.message) from None
        except ServingConfigError as exc:
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
                    logger.warning("serving config not read: %s", _one_line(str(exc)))
                last_error = str(exc)

    def _apply(self, config: ServingConfig, source: str) -> ActiveConfig:
        return self._activate(config, self._model_for(config), source)

    def _model_for(self, config: ServingConfig) -> ServingModel:
        """The serving model for the config's version: the current one, or a new one built and verified."""
        path = self.runtime.version_path(config.version)
        current = self.runtime.active.serving if self.runtime.ready else None
        if current is not None and current.path.resolve() == path.resolve():
            return current
        return self.runtime.build(path)  # ModelRejected when it cannot serve

    def _activate(self, config: ServingConfig, serving: ServingModel, source: str) -> ActiveConfig:
        previous = self.runtime.active if self.runtime.ready else None
        self.shadow.configure(config.shadow.variant, config.shadow.sample_rate)
        active = self.runtime.activate(serving, VariantRouter(config.variant, config.ab_split), config.generation)
        self._applied = AppliedConfig(config, source, _now())
        self.metrics.set_config_generation(config.generation)  # after the swap: the gauge never runs ahead
        self.metrics.set_model(
            None if previous is None else (previous.serving.name, previous.serving.version,
                                           previous.router.default.value),
            (serving.name, serving.version, config.variant.value),
        )
        swapped = previous is None or previous.serving is not serving
        if previous is not None and swapped:
            self.metrics.reloads.labels(outcome="ok").inc()
        logger.info("serving config generation %d applied (from %s): model %s/%s, routing %s, shadow %s at %g",
                    config.generation, source, serving.name, serving.version, active.router.to_dict(),
                    config.shadow.variant.value if config.shadow.variant else None, config.shadow.sample_rate)
        if swapped:
            del previous  # the old model goes with the last reference to it, then the capture's garbage
            release_build_memory()
        return active

    def _refuse(self, generation: int, reason: str, message: str) -> None:
        message = _one_line(message)
        self.last_refusal = Refusal(generation, reason, message, _now())
        self.metrics.config_rejections.labels(reason=reason).inc()
        if reason == REFUSED_MODEL:
            self.metrics.reloads.labels(outcome="refused").inc()
            release_build_memory()  # what the refused build left
        logger.warning("serving config generation %d refused (%s), still serving generation %d: %s",
                       generation, reason, self.applied.config.generation, message)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON_CHARS]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
