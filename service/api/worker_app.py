"""The app factory handed to `ranker serve --workers W`'s worker processes, with their settings inside.

uvicorn pickles its Config into every worker it spawns, and a worker answers its supervisor's health pings only
once the Config is unpickled. So what is pickled must be light to load: plain values and this module, which
imports nothing heavy at its top. The settings object itself would not do: unpickling it imports torch (a few
seconds, longer on a loaded machine), and a worker silent for longer than the health-check timeout is killed
as hung and started again, forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.serving.settings import Settings


class WorkerApp:
    """A picklable `factory=True` app: builds the worker's app from the settings' values, in the worker."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    @classmethod
    def of(cls, settings: Settings) -> WorkerApp:
        values = settings.model_dump(mode="json")
        values.update({name: value.get_secret_value() for name, value in settings if isinstance(value, SecretStr)})
        return cls(values)

    def __call__(self) -> FastAPI:
        from service.api.app import create_worker_app
        from service.serving.settings import Settings

        return create_worker_app(Settings(**self.values))
