"""package() proves a model servable before writing it: every id the service can hand it (the extremes of each
id feature, the out-of-vocabulary row included) runs, and its scores are finite and, for scores="probability",
in [0, 1]. A model that breaks either is refused with one message naming the feature or task and the fix,
both from package() and from `ranker package`; a model that keeps them is served 200 for every allowed id."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.serving.settings import Settings
from service.store import PackageError, package
from tests.store.faulty_rankers import HISTORY_VOCAB, ITEM_VOCAB, SCHEMA, USER_VOCAB, Ranker, example

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_ID = 2**53  # the service's default max_id: the largest id a valid request may carry
TOLERANCE = 1e-5


def _package(model: torch.nn.Module, store: Path, **options):
    return package(model.eval(), example(), SCHEMA, tasks=["click"], store=store, name="m", **options)


def _nothing_written(store: Path) -> bool:
    return not store.exists() or not any(store.rglob("*"))


def test_an_item_table_of_vocab_size_rows_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(PackageError) as refused:
        _package(Ranker(item_rows=ITEM_VOCAB), store, scores="logit")
    assert str(refused.value).startswith(
        "feature 'item_id': an id >= vocab_size (400) scores with row 400, the out-of-vocabulary row, but the "
        "model's table (item_table) has only 400 rows: build it as nn.Embedding(vocab_size + 1, dim)")
    assert "\n" not in str(refused.value)
    assert _nothing_written(store)


def test_a_sequence_table_of_vocab_size_rows_is_refused_naming_the_sequence_feature(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=re.escape(
            "feature 'history': an id >= vocab_size (20) scores with row 20, the out-of-vocabulary row, but the "
            "model's table (history_table) has only 20 rows: build it as nn.Embedding(vocab_size + 1, dim)")):
        _package(Ranker(history_rows=HISTORY_VOCAB), tmp_path, scores="logit")


def test_a_mean_over_an_empty_history_is_refused_naming_the_feature_and_the_empty_sequence(tmp_path: Path) -> None:
    """The example never holds an empty sequence (schema examples fill at least one id); a request may."""
    store = tmp_path / "store"
    for scores in ("logit", "probability"):
        with pytest.raises(PackageError, match=re.escape(
                "feature 'history': on an empty sequence (all padding), the model scores NaN or infinite")):
            _package(Ranker(mean_history=True, probability=scores == "probability"), store, scores=scores)
    assert _nothing_written(store)


def test_logits_declared_as_probabilities_are_refused_with_the_logit_hint(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=re.escape(
            "outside [0, 1]: did you mean scores='logit' (--logits on the command line)?")) as refused:
        _package(Ranker(), tmp_path / "store")
    assert str(refused.value).startswith("task 'click': scores='probability' but the model returns values from ")
    assert _nothing_written(tmp_path / "store")
    assert _package(Ranker(probability=True), tmp_path / "ok").manifest.outputs["scores"] == "probability"


@pytest.mark.parametrize("scores", ["logit", "probability"])
def test_infinite_scores_are_refused_for_either_kind(tmp_path: Path, scores: str) -> None:
    with pytest.raises(PackageError, match=re.escape(
            "on the example at N=8, the model scores NaN or infinite for tasks ['click']; a served score must be "
            "finite")):
        _package(Ranker(overflow=True), tmp_path / "store", scores=scores)
    assert _nothing_written(tmp_path / "store")


def _ranker_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "service.cli", "package", *args, "--n", "10"], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_ranker_package_refuses_logits_without_logits_and_accepts_them_with_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    refused = _ranker_cli("tests/store/faulty_rankers.py:logits_without_scores", "--name", "m", "--store", str(store))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "did you mean scores='logit' (--logits on the command line)?" in refused.stderr
    assert _nothing_written(store)
    accepted = _ranker_cli("tests/store/faulty_rankers.py:logits_without_scores", "--name", "m", "--store",
                           str(store), "--logits")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert f"wrote {store / 'm' / 'v1'}" in accepted.stdout


def test_ranker_package_refuses_infinite_scores_even_with_logits(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = _ranker_cli("tests/store/faulty_rankers.py:infinite_logits", "--name", "m", "--store", str(store),
                       "--logits")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "the model scores NaN or infinite for tasks ['click']" in done.stderr
    assert _nothing_written(store)


def _eager(model: Ranker, user_id: int, history: list[int], item_ids: list[int], dense: list[list[float]]):
    """The user's model on what the codec hands it: ids >= vocab_size read row vocab_size."""
    def row(vocab: int, ids: list[int]) -> list[int]:
        return [min(i, vocab) for i in ids]
    n = len(item_ids)
    features = {"user_id": torch.tensor(row(USER_VOCAB, [user_id]) * n),
                "history": torch.tensor([row(HISTORY_VOCAB, history + [0] * (5 - len(history)))] * n),
                "item_id": torch.tensor(row(ITEM_VOCAB, item_ids)), "item_dense": torch.tensor(dense)}
    with torch.no_grad():
        return torch.sigmoid(model(features))


def test_a_correctly_sized_model_is_served_200_for_every_allowed_id(tmp_path: Path) -> None:
    """Ids 0, vocab_size - 1, vocab_size and far past it up to max_id, in every id feature: each 200, scored
    with the out-of-vocabulary row exactly as the user's own model scores row vocab_size."""
    torch.manual_seed(4)
    model = Ranker().eval()
    _package(model, tmp_path, scores="logit")
    settings = Settings(model_store=tmp_path, model_name="m", warmup_candidates=(1, 16), analysis_candidates=100,
                        torch_threads=1, compile="off", max_id=MAX_ID)
    item_ids = [0, ITEM_VOCAB - 1, ITEM_VOCAB, 10**12, MAX_ID]
    dense = [[0.5, -1.0, 2.0]] * len(item_ids)
    users = [(0, []), (USER_VOCAB - 1, [HISTORY_VOCAB - 1] * 5), (USER_VOCAB, [1]), (MAX_ID, [MAX_ID] * 5)]
    with TestClient(create_app(settings)) as client:
        for user_id, history in users:
            body = {"user_id": "u", "user": {"user_id": user_id, "history": history},
                    "candidates": {"item_id": item_ids, "item_dense": dense}}
            response = client.post("/rank", json=body)
            assert response.status_code == 200, response.text
            served = torch.tensor(response.json()["scores"]["click"])
            want = _eager(model, user_id, history, item_ids, dense)
            assert (served - want).abs().max().item() <= TOLERANCE, (user_id, history)
