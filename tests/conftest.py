"""Shared test configuration: deterministic torch, a CI-sized hypothesis profile, a private cache."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("VALFUSION_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("ci")

# The suite runs under pytest-xdist (one worker per core); more intra-op threads than
# cores makes the many tiny ops here orders of magnitude slower, not faster.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_image_cache(tmp_path_factory: pytest.TempPathFactory):
    """Image verification caches go to a temporary folder, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VALFUSION_CACHE_DIR", str(tmp_path_factory.mktemp("valfusion-cache")))
        yield
