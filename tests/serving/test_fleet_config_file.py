"""The fleet config: the file (validation, atomic writes, generations, the writers' lock) and the
watcher that applies it to one process (polled by hand here; over HTTP in tests/api/test_fleet.py)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from service.engine import Variant
from service.serving.config_watch import ConfigWatcher
from service.serving.errors import InvalidRequest, ModelRejected
from service.serving.fleet_config import (
    FleetConfig,
    FleetConfigError,
    FleetConfigFile,
    parse_fleet_config,
)
from service.serving.metrics import ServiceMetrics
from service.serving.runtime import ModelRuntime
from service.serving.settings import Settings
from service.serving.shadow import ShadowComparator
from tests.conftest import SMALL_MODEL_NAME as NAME

GOOD = {"generation": 3, "version": "v1", "variant": "uoi", "ab_split": {"mari": 0.9, "vani": 0.1},
        "shadow": {"variant": "vani", "sample_rate": 0.05}}


def as_bytes(change: dict, drop: str | None = None) -> bytes:
    data = {key: value for key, value in {**GOOD, **change}.items() if key != drop}
    return json.dumps(data).encode()


def test_a_good_file_parses_and_round_trips() -> None:
    config = parse_fleet_config(as_bytes({}), "serving.json")
    assert config.generation == 3 and config.version == "v1" and config.variant is Variant.UOI
    assert config.ab_split == {Variant.MARI: 0.9, Variant.VANI: 0.1} and config.shadow.variant is Variant.VANI
    assert parse_fleet_config(config.to_json(), "again") == config


BAD_FILES = [
    ("broken json", as_bytes({})[:-5], None),
    ("not an object", b"[1, 2]", None),
    ("NaN weight", as_bytes({}).replace(b"0.9", b"NaN"), "ab_split"),
    ("infinite weight", as_bytes({}).replace(b"0.9", b"Infinity"), "ab_split"),
    ("negative weight", as_bytes({"ab_split": {"mari": -0.5, "vani": 1}}), "ab_split"),
    ("weights summing to 0", as_bytes({"ab_split": {"mari": 0}}), "ab_split"),
    ("unknown variant", as_bytes({"variant": "turbo"}), "variant"),
    ("unknown arm", as_bytes({"ab_split": {"turbo": 1}}), "ab_split"),
    ("unknown shadow variant", as_bytes({"shadow": {"variant": "turbo", "sample_rate": 0.1}}), "shadow"),
    ("sample rate above 1", as_bytes({"shadow": {"variant": "vani", "sample_rate": 1.5}}), "shadow"),
    ("sampling with no shadow", as_bytes({"shadow": {"variant": None, "sample_rate": 0.1}}), "shadow"),
    ("path traversal", as_bytes({"version": "../v1"}), "version"),
    ("empty version", as_bytes({"version": ""}), "version"),
    ("negative generation", as_bytes({"generation": -1}), "generation"),
    ("generation as a string", as_bytes({"generation": "4"}), "generation"),
    ("generation as a float", as_bytes({"generation": 4.0}), "generation"),
    ("missing variant", as_bytes({}, drop="variant"), "variant"),
    ("unknown field", as_bytes({"varient": "mari"}), "varient"),
]


@pytest.mark.parametrize("raw, field", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_refused_naming_the_field(raw: bytes, field: str | None) -> None:
    with pytest.raises(FleetConfigError) as refused:
        parse_fleet_config(raw, "model_store/default/serving.json")
    assert refused.value.field == field
    assert "model_store/default/serving.json" in str(refused.value) and "\n" not in str(refused.value)


def test_every_write_bumps_the_generation_and_the_first_starts_from_the_settings(tmp_path: Path) -> None:
    config_file = FleetConfigFile(tmp_path)
    settings = Settings(model_store=tmp_path.parent, model_name=tmp_path.name, variant="uoi", model_version="v1")
    from_settings = FleetConfig.from_settings(settings)
    assert from_settings.generation == 0 and from_settings.variant is Variant.UOI and from_settings.version == "v1"
    with config_file.locked():
        first = config_file.next_config({"ab_split": {"mari": 1, "vani": 1}}, absent=from_settings, invalid=None)
        config_file.write(first)
    with config_file.locked():
        second = config_file.next_config({"shadow": {"variant": "vani"}}, absent=from_settings, invalid=None)
        config_file.write(second)
    assert (first.generation, second.generation) == (1, 2)
    assert config_file.read() == second and second.variant is Variant.UOI and second.shadow.sample_rate == 0.0
    assert second.ab_split == {Variant.MARI: 1.0, Variant.VANI: 1.0}
    assert sorted(path.name for path in tmp_path.iterdir()) == [".serving.json.lock", "serving.json"]  # no temp files


def test_a_broken_file_is_refused_as_a_base_or_replaced_past_its_generation(tmp_path: Path) -> None:
    config_file = FleetConfigFile(tmp_path)
    config_file.path.write_text('{"generation": 41, "variant": "turbo"}')
    last_good = parse_fleet_config(as_bytes({}), "x")
    with config_file.locked(), pytest.raises(FleetConfigError, match="fix or delete"):
        config_file.next_config({}, absent=last_good, invalid=None)
    with config_file.locked():
        repaired = config_file.next_config({"variant": "mari"}, absent=last_good, invalid=last_good)
    assert repaired.generation == 42 and repaired.variant is Variant.MARI and repaired.version == "v1"


def test_a_reader_never_sees_a_partial_file_while_a_writer_replaces_it(tmp_path: Path) -> None:
    config_file = FleetConfigFile(tmp_path)
    config = parse_fleet_config(as_bytes({"generation": 0}), "x")
    config_file.write(config)
    done = threading.Event()
    reads: list[int] = []

    def read_until_done() -> None:
        while not done.is_set() and len(reads) < 100_000:
            current = config_file.read()  # raises on a partial file
            assert current is not None
            reads.append(current.generation)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for generation in range(1, 101):
            config_file.write(config.updated({"generation": generation}))
    finally:
        done.set()
        reader.join(30)
    assert reads and reads == sorted(reads)  # whole files only, never an older one after a newer one
    assert config_file.read() == config.updated({"generation": 100})


def test_concurrent_writers_hold_the_lock_and_lose_no_generation(tmp_path: Path) -> None:
    config_file = FleetConfigFile(tmp_path)
    base = parse_fleet_config(as_bytes({"generation": 0}), "x")
    errors: list[BaseException] = []

    def write_many(variant: str) -> None:
        try:
            for _ in range(20):
                with config_file.locked(timeout_s=30):
                    config_file.write(config_file.next_config({"variant": variant}, absent=base, invalid=None))
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    writers = [threading.Thread(target=write_many, args=(variant,)) for variant in ("vani", "mari", "uoi")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    current = config_file.read()
    assert not errors and current is not None and current.generation == 60


# --- the watcher, on a copy of the small-model store --------------------------------------------------------


@pytest.fixture()
def model_dir(store: Path, tmp_path: Path) -> Path:
    """default/v1 and default/v2 of the session store, copied: these tests write serving.json."""
    target = tmp_path / "store" / NAME
    for version in ("v1", "v2"):
        shutil.copytree(store / NAME / version, target / version)
    return target


def make_watcher(model_dir: Path, **settings: object) -> tuple[ConfigWatcher, ServiceMetrics]:
    values: dict = {"model_store": model_dir.parent, "model_name": NAME, "model_version": "v1",
                    "warmup_candidates": (1, 16), "analysis_candidates": 100, "torch_threads": 1, **settings}
    resolved = Settings(**values)
    metrics = ServiceMetrics()
    runtime = ModelRuntime(resolved)
    shadow = ShadowComparator(resolved.shadow_variant, resolved.shadow_sample_rate, 4, resolved.tolerance, metrics,
                              model=NAME)
    return ConfigWatcher(resolved, runtime, shadow, metrics), metrics


def write_config(model_dir: Path, **fields: object) -> FleetConfig:
    config = FleetConfig.model_validate({**GOOD, "ab_split": {}, "shadow": {"variant": None, "sample_rate": 0},
                                           **fields})
    FleetConfigFile(model_dir).write(config)
    return config


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    assert metrics.registry is not None
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_without_a_file_the_settings_serve_and_a_file_at_start_up_wins(model_dir: Path) -> None:
    from_env, _ = make_watcher(model_dir, variant="vani")
    assert from_env.start_up().version == "v1"
    assert from_env.status()["generation"] == 0 and from_env.status()["source"] == "environment"
    assert from_env.runtime.router.default is Variant.VANI
    write_config(model_dir, generation=5, version="v2", variant="uoi", shadow={"variant": "vani", "sample_rate": 0.5})
    from_file, metrics = make_watcher(model_dir, variant="vani")  # RANKER_MODEL_VERSION=v1, VARIANT=vani lose
    assert from_file.start_up().version == "v2"
    assert from_file.status()["generation"] == 5 and from_file.status()["source"] == "file"
    assert from_file.runtime.router.default is Variant.UOI and from_file.runtime.active.generation == 5
    assert from_file.shadow.variant is Variant.VANI and from_file.shadow.sample_rate == 0.5
    assert sample(metrics, "ranker_config_generation", model=model_dir.name, pid=str(os.getpid())) == 5


def test_a_new_generation_is_applied_once_and_a_new_version_is_built_before_the_swap(model_dir: Path) -> None:
    watcher, metrics = make_watcher(model_dir)
    v1 = watcher.start_up()
    assert watcher.poll_once() is False  # no file: nothing to apply
    write_config(model_dir, generation=1, version="v1", variant="vani")
    assert watcher.poll_once() is True and watcher.poll_once() is False  # unchanged content: not re-applied
    assert watcher.runtime.serving is v1 and watcher.runtime.router.default is Variant.VANI  # no rebuild
    write_config(model_dir, generation=2, version="v2", variant="vani", ab_split={"mari": 1, "uoi": 1})
    assert watcher.poll_once() is True
    active = watcher.runtime.active
    assert active.serving.version == "v2" and active.generation == 2 and set(active.router.split) == {
        Variant.MARI, Variant.UOI}
    assert sample(metrics, "ranker_reloads_total", model=NAME, outcome="ok") == 1
    (model_dir / "serving.json").unlink()
    assert watcher.poll_once() is False and watcher.runtime.active is active  # a deleted file changes nothing


def test_bad_generations_are_refused_counted_once_and_the_last_good_keeps_serving(model_dir: Path) -> None:
    watcher, metrics = make_watcher(model_dir)
    watcher.start_up()
    good = write_config(model_dir, generation=1, variant="uoi")
    assert watcher.poll_once()
    shutil.copytree(model_dir / "v2", model_dir / "v2-corrupted")
    weights = model_dir / "v2-corrupted" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    bad_files = [
        (b'{"generation": 2, "variant": ', "invalid"),
        (as_bytes({"generation": 3, "variant": "turbo"}), "invalid"),
        (as_bytes({"generation": 4, "version": "v9"}), "model"),
        (as_bytes({"generation": 5, "version": "v2-corrupted"}), "model"),
    ]
    for count, (raw, reason) in enumerate(bad_files, start=1):
        (model_dir / "serving.json").write_bytes(raw)
        for _ in range(3):  # the same bad generation is looked at once, not retried on every poll
            assert watcher.poll_once() is False
        refused_so_far = sum(1 for _, earlier in bad_files[:count] if earlier == reason)
        assert sample(metrics, "ranker_config_rejections_total", model=NAME, reason=reason) == refused_so_far
        assert watcher.runtime.active.generation == good.generation and watcher.runtime.serving.version == "v1"
        assert watcher.status()["last_refusal"]["reason"] == reason
    assert "sha256" in watcher.status()["last_refusal"]["message"]
    write_config(model_dir, generation=6, version="v1", variant="mari")  # the next good generation applies
    assert watcher.poll_once() and watcher.runtime.active.generation == 6


def test_publish_writes_and_applies_at_once_and_never_publishes_a_version_that_cannot_serve(model_dir: Path) -> None:
    watcher, _ = make_watcher(model_dir)
    watcher.start_up()
    active = watcher.publish({"variant": Variant.UOI, "ab_split": {}})
    assert active.generation == 1 and watcher.runtime.router.default is Variant.UOI
    assert FleetConfigFile(model_dir).read() == watcher.applied.config
    before = (model_dir / "serving.json").read_bytes()
    with pytest.raises(ModelRejected):
        watcher.publish({"version": "v9"})
    with pytest.raises(InvalidRequest) as refused:
        watcher.publish({"ab_split": {Variant.MARI: -1.0}})
    assert refused.value.field == "ab_split"
    assert (model_dir / "serving.json").read_bytes() == before and watcher.runtime.active.generation == 1
    assert watcher.poll_once() is False  # its own write: already applied


def test_the_watcher_thread_applies_a_new_generation_within_two_poll_intervals(model_dir: Path) -> None:
    poll_s = 0.2
    watcher, _ = make_watcher(model_dir, config_poll_s=poll_s)
    watcher.start_up()
    watcher.start()
    try:
        written = write_config(model_dir, generation=7, version="v1", variant="vani")
        started = time.monotonic()
        while watcher.runtime.active.generation != written.generation and time.monotonic() - started < 10:
            time.sleep(0.01)
        waited = time.monotonic() - started
    finally:
        watcher.stop()
    assert watcher.runtime.active.generation == 7 and watcher.runtime.router.default is Variant.VANI
    assert waited <= 2 * poll_s, waited


def test_polling_is_off_at_zero(model_dir: Path) -> None:
    watcher, _ = make_watcher(model_dir, config_poll_s=0)
    watcher.start()
    assert watcher._thread is None
    with pytest.raises(ValueError):
        Settings(config_poll_s=float("inf"))


# --- `ranker config show|set` ---------------------------------------------------------------------------------


def ranker_config(*args: str) -> None:
    from service.cli import main

    main(["config", *args])


def test_ranker_config_set_writes_the_next_generation_and_show_prints_it(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--store", str(model_dir.parent), "--name", NAME]
    ranker_config("show", *where)
    assert "every process serves its RANKER_* settings" in capsys.readouterr().err
    ranker_config("set", *where, "--version", "v2", "--ab-split", '{"mari": 0.5, "vani": 0.5}')
    ranker_config("set", *where, "--shadow-variant", "vani", "--shadow-sample-rate", "0.05", "--variant", "uoi")
    ranker_config("set", *where, "--version", "latest", "--shadow-variant", "none")
    capsys.readouterr()
    ranker_config("show", *where)
    shown = json.loads(capsys.readouterr().out)
    # "latest" is resolved when the generation is written: every process serves v2 under it, whatever comes later
    assert shown == {"generation": 3, "version": "v2", "variant": "uoi", "ab_split": {"mari": 0.5, "vani": 0.5},
                     "shadow": {"variant": None, "sample_rate": 0.0}}


@pytest.mark.parametrize("args, message", [
    (["--version", "v9"], "no such model or version folder"),
    (["--version", "v2-corrupted"], "sha256"),
    (["--ab-split", '{"mari": -1}'], "ab_split"),
    (["--ab-split", "{not json"], "not JSON"),
    (["--shadow-sample-rate", "0.5"], "needs shadow.variant"),
])
def test_ranker_config_set_refuses_what_cannot_serve_and_writes_nothing(
    model_dir: Path, args: list[str], message: str
) -> None:
    corrupted = model_dir / "v2-corrupted"
    shutil.copytree(model_dir / "v2", corrupted)
    (corrupted / "weights.safetensors").write_bytes((corrupted / "weights.safetensors").read_bytes()[:-1] + b"\x00")
    with pytest.raises(SystemExit, match=message):
        ranker_config("set", "--store", str(model_dir.parent), "--name", NAME, *args)
    assert not (model_dir / "serving.json").exists()


def test_ranker_config_set_refuses_to_build_on_a_broken_file(model_dir: Path) -> None:
    (model_dir / "serving.json").write_text('{"generation": 4, "variant": "turbo"}')
    with pytest.raises(SystemExit, match="fix or delete the file first"):
        ranker_config("set", "--store", str(model_dir.parent), "--name", NAME, "--variant", "mari")
