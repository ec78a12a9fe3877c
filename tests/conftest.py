"""Shared test set-up: few threads (the CI box has 2 shared cores), a private pixel cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _quiet_machine(tmp_path_factory):
    # torch's intra-op threads slow ~100x when another process holds the cores: use one.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    cache = tmp_path_factory.mktemp("pixel-cache")
    old = os.environ.get("VAEKIT_CACHE_DIR")
    os.environ["VAEKIT_CACHE_DIR"] = str(cache)
    yield
    if old is None:
        os.environ.pop("VAEKIT_CACHE_DIR", None)
    else:
        os.environ["VAEKIT_CACHE_DIR"] = old
