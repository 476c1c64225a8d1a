import torch

from service.features.schema import FeatureSchema, Kind
from service.models import ARCHITECTURES
from service.training.auc import roc_auc
from service.training.synthetic import SyntheticWorld, make_dataset
from tests.models.small_configs import small_config


def _small(name: str) -> tuple[FeatureSchema, list[str]]:
    config = small_config(name)
    return config.schema(), list(config.tasks)


def test_same_seed_gives_identical_rows_and_another_seed_does_not() -> None:
    schema, tasks = _small("mmoe")
    first, _ = make_dataset(schema, tasks, 300, 10, seed=4)
    second, _ = make_dataset(schema, tasks, 300, 10, seed=4)
    third, _ = make_dataset(schema, tasks, 300, 10, seed=5)
    assert all(torch.equal(first.features[n], second.features[n]) for n in schema.names)
    assert all(torch.equal(first.labels[t], second.labels[t]) for t in tasks)
    assert not torch.equal(first.features["user_id"], third.features["user_id"])


def test_rows_follow_the_schema_at_full_batch() -> None:
    for name in ARCHITECTURES:
        schema, tasks = _small(name)
        rows = SyntheticWorld(schema, tasks, seed=0).sample(200)
        assert len(rows) == 200 and sorted(rows.labels) == sorted(tasks)
        for spec in schema.features:
            value = rows.features[spec.name]
            assert value.shape[0] == 200, spec.name
            if spec.kind is Kind.DENSE:
                assert value.shape == (200, spec.dim) and value.dtype == torch.float32
            else:
                assert value.dtype == torch.int64 and 0 <= value.min() and value.max() < spec.vocab_size, spec.name
        for labels in rows.labels.values():
            assert set(labels.unique().tolist()) == {0.0, 1.0}


def test_labels_are_predictable_from_the_planted_probabilities_and_tasks_differ() -> None:
    schema, tasks = _small("mmoe")
    rows = SyntheticWorld(schema, tasks, seed=0).sample(8000)
    for task in tasks:
        assert roc_auc(rows.labels[task], rows.probabilities[task]) > 0.75, task
    assert not torch.allclose(rows.probabilities["click"], rows.probabilities["like"])


def test_candidates_matching_the_history_category_are_more_often_positive() -> None:
    schema, tasks = _small("mmoe")
    world = SyntheticWorld(schema, tasks, seed=0)
    rows = world.sample(8000)
    history_categories = world.item_category[rows.features["user_seq"]]  # padding maps to category of item 0
    valid = rows.features["user_seq"] != 0
    candidate_category = rows.features["item_category"].unsqueeze(1)
    share = ((history_categories == candidate_category) & valid).sum(1) / valid.sum(1)
    matched = share > share.median()
    for task in tasks:
        assert rows.labels[task][matched].mean() > rows.labels[task][~matched].mean() + 0.05, task


def test_cross_statistics_carry_label_signal() -> None:
    schema, tasks = _small("mmoe")
    rows = SyntheticWorld(schema, tasks, seed=0).sample(8000)
    cross = rows.features["cross_dense"]
    fit = torch.linalg.lstsq(cross, rows.labels["click"].unsqueeze(1) - 0.5).solution
    assert roc_auc(rows.labels["click"], (cross @ fit).squeeze(1)) > 0.65
