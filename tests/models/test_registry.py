import pytest

from service.models import ARCHITECTURES, DEFAULT_ARCHITECTURE, get_architecture


def test_mmoe_is_the_default_and_dcn_is_registered() -> None:
    assert DEFAULT_ARCHITECTURE == "mmoe"
    assert {"mmoe", "dcn"} <= set(ARCHITECTURES)


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="mmoe"):
        get_architecture("transformer")
