"""Model zoo: ranker architectures that map a feature dict to per-task scores."""

from service.models.registry import ARCHITECTURES, DEFAULT_ARCHITECTURE, Architecture, get_architecture

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "Architecture", "get_architecture"]
