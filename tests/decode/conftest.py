"""The decoding tests run their small tensors on one thread.

At these sizes threads buy nothing, and on a shared machine (more runnable processes than
cores) OpenMP's barriers between the many small ops of the references turn a 10 s folder
into minutes (a decoding step of a small model: ~40x slower on two threads). Scoped to each test here and restored afterwards, so other folders keep
their settings."""

from __future__ import annotations

import pytest

try:
    import torch
except ImportError:        # the test modules skip themselves, with the reason
    torch = None


@pytest.fixture(autouse=True)
def _one_thread():
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
