"""The three ways to run one trained ranker, the engine's errors, and the size of the call it captures (torch-free:
the settings name a variant without importing torch)."""

from enum import Enum

# Candidate rows of the example call a model is captured with (torch.export, the engine). Any N >= 2 gives
# the same program: export treats sizes 0 and 1 as constants.
CAPTURE_CANDIDATES = 8


class Variant(str, Enum):  # noqa: UP042 (a StrEnum would change str(variant) and f"{variant}")
    """VanI tiles user inputs to N rows; UOI runs user-only sub-graphs once; MaRI also splits concat matmuls."""

    VANI = "vani"
    UOI = "uoi"
    MARI = "mari"


class EngineError(ValueError):
    """The engine was called wrongly (e.g. a user-input name that matches no input)."""


class CaptureError(EngineError):
    """The model itself cannot be captured as a batch-polymorphic graph (e.g. it specializes on N)."""


def first_line(exc: BaseException) -> str:
    """An exception as one short line for a report's reason: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
