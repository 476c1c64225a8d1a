"""What the workers of one `ranker serve --workers N` agree on, kept where only they look: a folder that
`ranker serve` creates fresh for each run and names in FLEET_DIR_ENV (no folder: a single process, which
agrees with itself).

Two facts, each so that a worker started later (uvicorn respawns one after a crash) serves exactly what its
siblings serve:

- the version a generation with `version` null serves: resolved once, by the first worker to apply that
  generation, and read back by every other one (a newer folder published since changes nothing);
- the last generation a worker of this replica applied (its concrete version): what a worker falls back to
  when serving.json is unusable at its start-up (config_watch.py).

Each served model keeps its facts in a subfolder named after it (of_model). Writes are a temp file and a rename
or a hard link, so a reader sees a whole record or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from service.serving.fleet_config import FleetConfig, FleetConfigError, parse_fleet_config

logger = logging.getLogger(__name__)

FLEET_DIR_ENV = "RANKER_SERVE_FLEET_DIR"  # set by `ranker serve` for its workers, read here and nowhere else
LAST_APPLIED_FILE = "last_applied.json"
LOCK_FILE = ".lock"
NULL_VERSION_FILE = "generation-{generation}.version"  # the folder a null-version generation resolved to


class FleetState:
    """The replica's shared record; every method is a no-op answer (resolve here, remember nothing) without one."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @classmethod
    def from_environment(cls) -> FleetState:
        folder = os.environ.get(FLEET_DIR_ENV)
        return cls(Path(folder) if folder else None)

    def of_model(self, name: str) -> FleetState:
        """The record of model `name` alone: a server of several models (RANKER_MODELS) keeps one per model."""
        if self.folder is None:
            return self
        folder = self.folder / name
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:  # the folder is gone (a cleaned /tmp): as version_for, serve without the agreement
            logger.warning("fleet record folder not made: %s", exc)
        return FleetState(folder)

    def version_for(self, generation: int, resolve_latest: Callable[[], str]) -> str:
        """The version generation `generation` serves when its file says null: the first caller's answer."""
        if self.folder is None:
            return resolve_latest()
        target = self.folder / NULL_VERSION_FILE.format(generation=generation)
        recorded = _read_text(target)
        if recorded:
            return recorded
        version = resolve_latest()
        try:
            temp = self._temp_with(version.encode())
        except OSError as exc:  # the folder is gone (a cleaned /tmp): serve, without the agreement
            logger.warning("fleet record not written: %s", exc)
            return version
        try:
            os.link(temp, target)  # atomic and exclusive: a sibling that got there first wins
        except FileExistsError:
            version = _read_text(target) or version
        finally:
            temp.unlink(missing_ok=True)
        return version

    def remember(self, config: FleetConfig) -> None:
        """Record `config` (its version concrete) as the replica's last applied, unless a newer one is."""
        if self.folder is None or config.version is None:
            return
        with self._locked():
            last = self.last_applied()
            if last is not None and last.generation > config.generation:
                return
            os.replace(self._temp_with(config.to_json()), self.folder / LAST_APPLIED_FILE)

    def last_applied(self) -> FleetConfig | None:
        """The newest generation a worker of this replica applied, or None (none yet, or no shared folder)."""
        if self.folder is None:
            return None
        raw = _read_text(self.folder / LAST_APPLIED_FILE)
        if not raw:
            return None
        try:
            return parse_fleet_config(raw.encode(), self.folder / LAST_APPLIED_FILE)
        except FleetConfigError as exc:  # written by this code only: cannot happen short of a broken disk
            logger.warning("fleet record ignored: %s", exc.message)
            return None

    def _temp_with(self, data: bytes) -> Path:
        assert self.folder is not None
        descriptor, name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return Path(name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.folder is not None
        descriptor = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # held for a read and a rename: microseconds
            yield
        finally:
            os.close(descriptor)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def create_fleet_dir() -> Path:
    """A fresh, private shared folder for this run's workers, named in FLEET_DIR_ENV (which they inherit)."""
    folder = Path(tempfile.mkdtemp(prefix="ranker-fleet-"))
    os.environ[FLEET_DIR_ENV] = str(folder)
    return folder
