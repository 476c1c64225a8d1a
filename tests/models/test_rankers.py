"""Behaviour shared by every registered ranker (run for each architecture)."""

import torch

from tests.models.conftest import small_model, tiled_batch


def test_ranker_returns_one_probability_per_candidate_for_every_task(architecture_name: str) -> None:
    arch, config, model, schema = small_model(architecture_name)
    with torch.no_grad():
        scores = model(tiled_batch(schema, 7))
    assert sorted(scores) == sorted(config.tasks)
    for task, value in scores.items():
        assert value.shape == (7,), task
        assert value.dtype == torch.float32
        assert torch.all((value > 0) & (value < 1)), task


def test_default_ranker_runs_on_its_own_example_batch(architecture_name: str) -> None:
    arch = small_model(architecture_name)[0]
    config = arch.default_config()
    schema = config.schema()
    with torch.no_grad():
        scores = arch.build(config).eval()(tiled_batch(schema, 3))
    assert {task: value.shape for task, value in scores.items()} == {task: (3,) for task in config.tasks}


def test_candidate_scored_in_a_batch_equals_it_scored_alone(architecture_name: str) -> None:
    _, _, model, schema = small_model(architecture_name)
    batch = tiled_batch(schema, 16, seed=1)
    with torch.no_grad():
        together = model(batch)
        alone = model({name: value[5:6] for name, value in batch.items()})
    for task in together:
        torch.testing.assert_close(together[task][5:6], alone[task], rtol=0, atol=1e-6)


def test_out_of_vocabulary_ids_all_read_the_oov_row(architecture_name: str) -> None:
    _, _, model, schema = small_model(architecture_name)
    batch = tiled_batch(schema, 4)
    vocab = schema.get("item_id").vocab_size
    with torch.no_grad():
        first = model({**batch, "item_id": torch.full((4,), vocab)})
        second = model({**batch, "item_id": torch.tensor([vocab + 1, vocab * 5, -3, 10**9])})
        in_vocab = model({**batch, "item_id": torch.full((4,), 1)})
    for task in first:
        torch.testing.assert_close(first[task], second[task], rtol=0, atol=0)
        assert not torch.equal(first[task], in_vocab[task])


def test_ranker_runs_in_float64_and_agrees_with_float32(architecture_name: str) -> None:
    _, _, model, schema = small_model(architecture_name)
    batch = tiled_batch(schema, 5)
    with torch.no_grad():
        single = model(batch)
        model64 = model.double()
        double = model64({k: v.double() if v.is_floating_point() else v for k, v in batch.items()})
    for task in single:
        assert double[task].dtype == torch.float64
        torch.testing.assert_close(double[task].float(), single[task], rtol=0, atol=1e-5)
