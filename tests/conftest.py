import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from darts_sg.train.data import FOLDER, TEST_FILES, TRAIN_FILES, DataError, load_cifar10

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Under pytest-xdist (scripts/test.sh: one worker per core) every test process, and every command a test
# starts, runs torch on one thread: a two-thread process beside a busy core waits at every OpenMP barrier
# for its thread on that core (3.6x slower, benchmarks/bench_busy_core.py). Alone, a test process takes 2 threads.
# Module-scoped fixtures run before the per-test fixture below, so the count is set here too.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(THREADS)


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


@pytest.fixture(scope="session")
def planted_data_root(tmp_path_factory) -> Path:
    """A learnable data set in CIFAR-10's format: 64 images per file (320 to train, 64 to test) of
    two classes, 0 with a red cast and 1 with a blue cast over uniform noise (chance: 50%)."""
    root = tmp_path_factory.mktemp("planted")
    (root / FOLDER).mkdir()
    rng = np.random.default_rng(0)
    for name in TRAIN_FILES + TEST_FILES:
        labels = rng.integers(0, 2, 64)
        images = rng.integers(0, 128, (64, 3, 32, 32)).astype(np.uint8)
        images[labels == 0, 0] += 127
        images[labels == 1, 2] += 127
        with open(root / FOLDER / name, "wb") as handle:
            pickle.dump({b"data": images.reshape(64, -1), b"labels": labels.tolist()}, handle)
    return root


def _hparams_session(tensorboard_dir: Path):
    """The (settings, metric tags) recorded in a run's TensorBoard HPARAMS data."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    settings = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return settings, {m.name.tag for m in experiment.metric_infos}, events


@pytest.fixture(scope="session")
def planted_training_run(tmp_path_factory, planted_data_root) -> tuple[Path, dict]:
    """(run directory, summary) of a smoke retraining of DARTS_V2 for one epoch on the planted data."""
    from darts_sg.train.config import AUGMENT_PRESETS, AugmentConfig
    from darts_sg.jobs.augment import run_augment

    out = tmp_path_factory.mktemp("planted-run") / "run"
    config = AugmentConfig(**{**AUGMENT_PRESETS["smoke"], "genotype": "darts_v2", "data_root": str(planted_data_root),
                            "train_subset": 0, "test_subset": 0})  # fmt: skip
    torch.set_num_threads(THREADS)
    return out, run_augment(config, out, progress=False)


@pytest.fixture
def read_hparams():
    """A function: a run's TensorBoard folder -> (settings, metric tags, the event accumulator) of its HPARAMS data."""
    return _hparams_session


@pytest.fixture(autouse=True)
def _fixed_threads():
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture(scope="session")
def load_script():
    """A function: the name of a file in scripts/ -> that script imported as a module (its main() not run)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / name
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
