import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _data_root() -> Path:
    env = os.environ.get("DARTS_SG_DATA")
    return Path(env) if env else SHARED_DATA


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real CIFAR-10 (../shared/data, or $DARTS_SG_DATA)."""
    root = _data_root()
    if not (root / "cifar-10-batches-py" / "data_batch_1").exists():
        pytest.fail(f"CIFAR-10 not found under {root}; set DARTS_SG_DATA to the folder holding cifar-10-batches-py")
    return root


@pytest.fixture(autouse=True)
def _fixed_threads():
    torch.set_num_threads(2)
    yield
