import pytest
import torch

from service.store.artifact import load_artifact
from service.training.train import TrainSettings, train_and_save, train_model
from tests.models.small_configs import SMALL_OVERRIDES

FAST = TrainSettings(batch_size=128, holdout_rows=4096, learning_rate=5e-3)


def test_two_runs_with_the_same_seed_give_identical_weights() -> None:
    first = train_model("mmoe", seed=3, steps=15, config_overrides=SMALL_OVERRIDES["mmoe"], settings=FAST)
    second = train_model("mmoe", seed=3, steps=15, config_overrides=SMALL_OVERRIDES["mmoe"], settings=FAST)
    other = train_model("mmoe", seed=4, steps=15, config_overrides=SMALL_OVERRIDES["mmoe"], settings=FAST)
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)
    assert first.metrics["holdout_auc"] == second.metrics["holdout_auc"]
    assert not torch.equal(first_state["mmoe.gates.click.weight"], other.model.state_dict()["mmoe.gates.click.weight"])


@pytest.mark.parametrize("architecture", ["mmoe", "dcn"])
def test_short_run_beats_chance_clearly_on_every_task(architecture: str) -> None:
    result = train_model(architecture, seed=0, steps=120, config_overrides=SMALL_OVERRIDES[architecture],
                         settings=FAST)
    assert not result.model.training
    for task, auc in result.metrics["holdout_auc"].items():
        assert auc > 0.65, (task, auc)
        assert auc <= result.metrics["oracle_holdout_auc"][task] + 0.02


def test_train_and_save_writes_the_next_version_with_metrics(tmp_path) -> None:
    kwargs = {"seed": 0, "steps": 2, "config_overrides": SMALL_OVERRIDES["dcn"]}
    first = train_and_save("dcn", tmp_path, "ranker", **kwargs)
    second = train_and_save("dcn", tmp_path, "ranker", **kwargs)
    named = train_and_save("dcn", tmp_path, "ranker", version="v10", **kwargs)
    assert (first.name, second.name, named.name) == ("v1", "v2", "v10")
    loaded = load_artifact(tmp_path / "ranker")
    assert loaded.path == named
    assert set(loaded.manifest.metrics["holdout_auc"]) == {"click", "like"}
