"""Model zoo: ranker architectures that map a feature dict to per-task scores, each a config and a module."""

from service.models.contract import RankerConfig
from service.models.registry import ARCHITECTURES, DEFAULT_ARCHITECTURE, Architecture, get_architecture

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "Architecture", "RankerConfig", "get_architecture"]
