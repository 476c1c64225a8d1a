"""Shared by every test folder."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_intra_op_thread() -> Iterator[None]:
    """Tiny test models gain nothing from intra-op threads, and on a busy 2-core box OpenMP spinning
    makes them tens of times slower; restore the process setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
