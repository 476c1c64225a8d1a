"""config_watch.decide: every rule of the serving-config watch, on plain values (no files, threads or models)."""

from __future__ import annotations

import json

import pytest

from service.serving.config_watch import REFUSED_INVALID, REFUSED_MODEL, Apply, Keep, Refuse, decide
from service.serving.errors import ModelRejected
from service.serving.fleet_config import (
    FleetConfig,
    FleetConfigError,
    FleetConfigUnusable,
    parse_fleet_config,
)


def fields(generation: int, version: str | None, variant: str) -> dict[str, object]:
    return {"generation": generation, "version": version, "variant": variant, "ab_split": {},
            "shadow": {"variant": None, "sample_rate": 0.0}}


def config(generation: int, version: str = "v1", variant: str = "mari") -> FleetConfig:
    return FleetConfig.model_validate(fields(generation, version, variant))


def raw(generation: int, version: str | None = "v1", variant: str = "mari") -> bytes:
    return json.dumps(fields(generation, version, variant)).encode()


def read(snapshot: bytes | str) -> FleetConfig:
    """What the watcher's reader does, with a null version resolved to v9 and a version 'gone' missing."""
    if isinstance(snapshot, str):
        raise FleetConfigUnusable(snapshot)
    parsed = parse_fleet_config(snapshot, "serving.json")
    if parsed.version == "gone":
        raise ModelRejected("no version folder gone")
    return parsed if parsed.version is not None else parsed.updated({"version": "v9"})


APPLIED = config(3)


def test_no_file_or_the_same_content_keeps_serving() -> None:
    assert isinstance(decide(None, raw(3), APPLIED, read), Keep)
    assert isinstance(decide(raw(4), raw(4), APPLIED, read), Keep)  # looked at already (refused or applied)


def test_a_new_generation_is_applied_with_its_version_resolved() -> None:
    assert decide(raw(4, variant="uoi"), raw(3), APPLIED, read) == Apply(config(4, variant="uoi"))
    assert decide(raw(4, version=None), raw(3), APPLIED, read) == Apply(config(4, version="v9"))


def test_what_already_serves_is_kept_not_rebuilt() -> None:
    """An admin call of this process wrote and applied it: the poll finds the file it wrote."""
    assert isinstance(decide(raw(3), None, APPLIED, read), Keep)


@pytest.mark.parametrize("snapshot, generation", [
    (b'{"generation": 5, "version": ', 0),  # broken JSON: the generation cannot be read
    (raw(6, variant="nope"), 6),  # a field that does not validate: the generation the file states
    ("a FIFO, not a regular file", None),  # not a file to read at all
])
def test_an_unreadable_or_invalid_file_is_refused_as_invalid(snapshot: bytes | str, generation: int | None) -> None:
    action = decide(snapshot, raw(3), APPLIED, read)
    assert isinstance(action, Refuse) and (action.generation, action.reason) == (generation, REFUSED_INVALID)
    assert action.message


def test_a_version_that_cannot_be_found_is_refused_as_a_model_problem() -> None:
    action = decide(raw(7, version="gone"), raw(3), APPLIED, read)
    assert action == Refuse(7, REFUSED_MODEL, "no version folder gone")


def test_the_file_wins_over_the_settings_when_there_is_one(tmp_path) -> None:
    from service.serving.config_watch import FROM_ENVIRONMENT, FROM_FILE, starting_config
    from service.serving.settings import Settings

    settings = Settings(model_store=tmp_path, model_name="m", model_version="v1", variant="uoi")
    (tmp_path / "m").mkdir()
    started, source = starting_config(settings)
    assert (source, started.generation, started.version, started.variant.value) == (FROM_ENVIRONMENT, 0, "v1", "uoi")
    (tmp_path / "m" / "serving.json").write_bytes(raw(2, version="v3", variant="vani"))
    started, source = starting_config(settings)
    assert (source, started.generation, started.version, started.variant.value) == (FROM_FILE, 2, "v3", "vani")
    (tmp_path / "m" / "serving.json").write_bytes(b"{broken")
    with pytest.raises(FleetConfigError):
        starting_config(settings)
