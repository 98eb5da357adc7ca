from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/rawdata.py


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Fresh random data in every test, reproducible from the test's name (printed on failure)."""
    seed = (
        abs(hash(request.node.nodeid)) % 2**32
        if os.environ.get("FASTMLIC_TEST_SEED") is None
        else int(os.environ["FASTMLIC_TEST_SEED"])
    )
    print(f"seed={seed}")
    return np.random.default_rng(seed)
