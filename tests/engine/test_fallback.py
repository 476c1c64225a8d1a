"""Models the engine cannot capture or transform still serve, as VanI, with the reason reported."""

import pytest
import torch
from torch import nn

from service.engine import EngineError, Variant, graph_tools, pipeline, reparameterize, reparameterize_all


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


class EvolvedHistory(nn.Module):
    """A GRU over the user's history: torch's C++ GRU kernel reads sizes as plain ints under fake tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 3, batch_first=True)
        self.fc = nn.Linear(4 * 3 + 3, 1)

    def forward(self, history: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        evolved = self.gru(history)[0].reshape(cand.size(0), -1)  # [B, 4 * 3]: a size read after the GRU
        return self.fc(torch.cat([evolved, cand], dim=-1))


def _fake_run_without_python_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the passes did before: the GRU's C++ kernel fixes the batch symbol to the trace batch."""

    def fake_run(fake_mode, target, args, kwargs):  # type: ignore[no-untyped-def]
        with fake_mode:
            return target(*graph_tools.meta_value(args), **graph_tools.meta_value(kwargs))

    monkeypatch.setattr(graph_tools, "fake_run", fake_run)


def _assert_serves_eagerly_like_the_model(model: nn.Module, built: dict, reason: str) -> None:
    for variant in Variant:
        assert built[variant].report.variant == Variant.VANI
        assert reason in built[variant].report.fallback_reason
        for n in (1, 7):
            history, cand = torch.randn(1, 4, 3), torch.randn(n, 3)
            with torch.no_grad():
                torch.testing.assert_close(built[variant].module(history, cand), model(history.expand(n, -1, -1), cand))


def test_a_build_that_fixes_the_candidate_batch_serves_eagerly_with_the_reason(monkeypatch):
    _fake_run_without_python_dispatcher(monkeypatch)
    model = EvolvedHistory().eval()
    built = reparameterize_all(model, (torch.randn(1, 4, 3), torch.randn(8, 3)), ["history"])
    _assert_serves_eagerly_like_the_model(model, built, "fixed the candidate batch")


def test_a_vani_graph_that_fails_at_another_batch_is_never_returned(monkeypatch):
    _fake_run_without_python_dispatcher(monkeypatch)
    monkeypatch.setattr(pipeline, "_check_batch_kept", lambda captured, variant: None)
    model = EvolvedHistory().eval()
    built = reparameterize_all(model, (torch.randn(1, 4, 3), torch.randn(8, 3)), ["history"])
    _assert_serves_eagerly_like_the_model(model, built, "VanI graph not usable")
