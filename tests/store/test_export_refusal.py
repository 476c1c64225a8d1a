"""A model torch.export cannot capture with a dynamic batch is refused naming the user's file:line and the fix."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from service.features.schema import FeatureSchema, FeatureSpec
from service.store import PackageError, package
from service.store.export_diagnosis import batch_constant

SCHEMA = FeatureSchema((FeatureSpec("user_dense", "user", "dense", dim=4),
                        FeatureSpec("item_dense", "item", "dense", dim=4)))


class BatchWrittenAsConstant(nn.Module):
    """Trained with batches of 8 and reshaped with the 8 written out: fine in training, one N in serving."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = torch.cat([features["user_dense"], features["item_dense"]], 1)
        return torch.sigmoid(self.linear(x.reshape(8, 8)))  # the fault


class BranchOnValues(nn.Module):
    """A Python `if` on tensor values: one branch is traced, the other would be served for every request."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = torch.cat([features["user_dense"], features["item_dense"]], 1)
        if x.mean() > 0:  # the fault
            x = x * 2
        return torch.sigmoid(self.linear(x))


def _fault_line(model: type[nn.Module]) -> str:
    lines, first = inspect.getsourcelines(model.forward)
    offset = next(i for i, line in enumerate(lines) if "# the fault" in line)
    return f"{Path(__file__)}:{first + offset}"


@pytest.mark.parametrize(("model", "cause", "fix"), [
    (BatchWrittenAsConstant, "the candidate batch is written as a constant (8)", "x.size(0)"),
    (BranchOnValues, "control flow on tensor values", "torch.where"),
])
def test_an_export_refusal_names_the_users_line_and_the_likely_fix(model, cause, fix, tmp_path: Path) -> None:
    with pytest.raises(PackageError) as refused:
        package(model().eval(), SCHEMA.example_batch(8), SCHEMA, tasks=["click"], store=tmp_path, name="m")
    message = str(refused.value)
    assert "\n" not in message
    assert f"{cause} at {_fault_line(model)}" in message, message
    assert fix in message
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(("guard", "constant"), [("Eq(s35, 8)", 8), ("Eq(8*s35, 64)", 8), ("Eq(s35, s66)", None),
                                                 ("Eq(u0, 1)", None), ("s35 >= 2", None), ("Eq(s35 + 1, 3)", 2)])
def test_a_guard_that_ties_one_input_size_to_a_number_is_a_constant_batch(guard: str, constant: int | None) -> None:
    assert batch_constant(guard) == constant
