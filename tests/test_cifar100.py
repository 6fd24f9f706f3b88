"""CIFAR-100: the official python layout read through the restricted unpickler, for search and retraining."""

import json
import pickle

import numpy as np
import pytest
import torch

from darts_sg.train.data import DataError, load_cifar
from test_search_cli import run_cli


def write_fake_cifar100(root, n_train=128, n_test=64, seed=0):
    """A tiny `cifar-100-python` folder in the official layout (dicts with bytes keys, fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(v) for v in rng.integers(0, 100, n)]
        fine[0] = 99
        batch = {
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return root


@pytest.fixture
def cifar100_root(tmp_path):
    return write_fake_cifar100(tmp_path / "data")


def test_reads_fine_labels_and_its_own_normalisation(cifar100_root):
    train = load_cifar("cifar100", cifar100_root, train=True)
    test = load_cifar("cifar100", cifar100_root, train=False)
    assert train.images.shape == (128, 3, 32, 32) and len(test) == 64
    assert train.labels[0] == 99 and train.labels.max() <= 99
    raw = pickle.load(open(cifar100_root / "cifar-100-python" / "train", "rb"))
    assert torch.equal(train.images.view(128, -1), torch.from_numpy(raw[b"data"]))
    assert train.mean != load_cifar.__globals__["CIFAR_MEAN"] and train.slice(0, 4).mean == train.mean


def test_unsafe_or_malformed_files_are_refused(cifar100_root):
    path = cifar100_root / "cifar-100-python" / "test"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_cifar("cifar100", cifar100_root, train=False)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}))
    with pytest.raises(DataError, match=r"labels outside 0\.\.99"):
        load_cifar("cifar100", cifar100_root, train=False)


def test_search_and_retraining_on_cifar100(tmp_path, cifar100_root):
    search = tmp_path / "search"
    result = run_cli("search.py", "--preset", "smoke", "--dataset", "cifar100", "--data-root", str(cifar100_root),
                     "--out", str(search), "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((search / "config.json").read_text())["dataset"] == "cifar100"
    model = torch.load(search / "checkpoint.pt", weights_only=True)["job"]["model"]
    assert model["classifier.weight"].shape[0] == 100
    train = tmp_path / "augment"
    result = run_cli("augment.py", "--preset", "smoke", "--dataset", "cifar100", "--genotype", str(search / "genotype.json"),
                     "--data-root", str(cifar100_root), "--out", str(train), "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    state = torch.load(train / "model.pt", weights_only=True)
    assert state["classifier.weight"].shape[0] == 100 and state["aux_head.classifier.weight"].shape[0] == 100
    assert json.loads((train / "summary.json").read_text())["dataset"] == "cifar100"


def test_imagenet_is_not_a_search_dataset(tmp_path, cifar100_root):
    result = run_cli("search.py", "--preset", "smoke", "--dataset", "imagenet", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "--dataset" in result.stderr and len(result.stderr.strip().splitlines()) == 1
