"""Models the engine cannot capture or transform still serve, as VanI, with the reason reported."""

import pytest
import torch
from torch import nn

from service.engine import EngineError, Variant, reparameterize


class DataDependentBranch(nn.Module):
    """Branches on a tensor *value*: no graph capture can represent this without the data."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 1)

    def forward(self, user: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        x = torch.cat([user, cand], dim=-1)
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, user: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([user, cand], dim=-1))


@pytest.mark.parametrize("variant", [Variant.UOI, Variant.MARI])
def test_uncapturable_model_runs_as_vani_with_the_reason(variant):
    model = DataDependentBranch().eval()
    user, cand = torch.randn(1, 2), torch.randn(6, 3)
    result = reparameterize(model, (user, cand), ["user"], variant)
    assert result.report.requested == variant
    assert result.report.variant == Variant.VANI
    assert "capture failed" in result.report.fallback_reason
    with torch.no_grad():
        torch.testing.assert_close(result.module(user, cand), model(user.expand(6, -1), cand))


def test_unknown_user_input_name_is_a_clear_error():
    with pytest.raises(EngineError, match="user_idz"):
        reparameterize(Concat(), (torch.randn(1, 2), torch.randn(4, 3)), ["user_idz"], Variant.MARI)


def test_user_input_with_more_than_one_row_is_refused():
    with pytest.raises(EngineError, match="batch size 1"):
        reparameterize(Concat(), (torch.randn(3, 2), torch.randn(4, 3)), ["user"], Variant.MARI)


def test_built_module_refuses_tiled_user_inputs_instead_of_returning_wrong_scores():
    result = reparameterize(Concat(), (torch.randn(1, 2), torch.randn(4, 3)), ["user"], Variant.MARI)
    with pytest.raises(EngineError, match="batch size 1"):
        result.module(torch.randn(4, 2), torch.randn(4, 3))


def test_kwargs_call_is_supported():
    model = Concat().eval()
    user, cand = torch.randn(1, 2), torch.randn(5, 3)
    result = reparameterize(model, (), ["user"], Variant.MARI, example_kwargs={"user": user, "cand": cand})
    assert result.report.variant == Variant.MARI
    with torch.no_grad():
        torch.testing.assert_close(result.module(user=user, cand=cand), model(user.expand(5, -1), cand))
