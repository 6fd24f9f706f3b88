import os
from pathlib import Path

import pytest
import torch

from darts_sg.data import FOLDER, DataError, load_cifar10

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _data_root() -> Path:
    """The CIFAR-10 folder the README's commands use (scripts/env.sh): $DARTS_SG_DATA, else
    ../shared/data when it holds CIFAR-10, else ./data of the checkout."""
    env = os.environ.get("DARTS_SG_DATA")
    if env:
        return Path(env)
    if (SHARED_DATA / FOLDER).is_dir():
        return SHARED_DATA
    return ROOT / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real CIFAR-10, downloaded by the package into ./data on first use when it is nowhere else."""
    root = _data_root()
    try:
        load_cifar10(root, train=False)  # downloads the data set once if it is absent (the test batch is the cheap read)
    except DataError as exc:
        pytest.fail(str(exc))
    return root


@pytest.fixture(autouse=True)
def _fixed_threads():
    torch.set_num_threads(2)
    yield
