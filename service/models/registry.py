"""Registry of the built-in ranker architectures: name -> (config class, module class).

Everything else an architecture needs (its feature schema, tasks, task weights, hyper-parameters as JSON)
is a method of its config; see service.models.contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from service.models.autoint import AutoIntConfig, AutoIntRanker
from service.models.contract import RankerConfig
from service.models.dcn import DCNConfig, DCNRanker, DCNv2Config
from service.models.deepfm import DeepFMConfig, DeepFMRanker
from service.models.mmoe import MMoEConfig, MMoERanker
from service.models.rdcn import RDCNConfig, RDCNRanker

DEFAULT_ARCHITECTURE = "mmoe"


@dataclass(frozen=True)
class Architecture:
    """A config class and the module class it configures (`module_cls(config)`)."""

    config_cls: type[RankerConfig]
    module_cls: type[nn.Module]

    def default_config(self) -> RankerConfig:
        return self.config_cls()

    def build(self, config: RankerConfig) -> nn.Module:
        if not isinstance(config, self.config_cls):
            raise TypeError(
                f"{self.module_cls.__name__} takes a {self.config_cls.__name__}, got a {type(config).__name__}"
            )
        return self.module_cls(config)


ARCHITECTURES: dict[str, Architecture] = {
    "mmoe": Architecture(MMoEConfig, MMoERanker),
    "dcn": Architecture(DCNConfig, DCNRanker),
    "dcnv2": Architecture(DCNv2Config, DCNRanker),
    "deepfm": Architecture(DeepFMConfig, DeepFMRanker),
    "autoint": Architecture(AutoIntConfig, AutoIntRanker),
    "rdcn": Architecture(RDCNConfig, RDCNRanker),
}


def get_architecture(name: str) -> Architecture:
    """The registered architecture called `name`; KeyError naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None
