import pickle

import numpy as np
import pytest
import torch

from darts_sg.train.data import DataAugmentation, BatchLoader, DataError, crop, cutout, load_cifar10, read_batch


@pytest.fixture(scope="module")
def train(data_root):
    return load_cifar10(data_root, train=True)


def test_real_cifar_layout(train, data_root):
    test = load_cifar10(data_root, train=False)
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert len(test) == 10000
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # documented in the data README
    assert torch.bincount(train.labels).tolist() == [5000] * 10


def test_loader_batches_are_normalised_and_resumable(train):
    loader = BatchLoader(train.slice(0, 512), 64, DataAugmentation(cutout=16), seed=3)
    batches = list(loader.iterate(epoch=2))
    assert len(batches) == 8
    x, y = batches[0]
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (64,)
    assert abs(float(torch.cat([b[0] for b in batches]).mean())) < 0.3
    again = list(loader.iterate(epoch=2, start_step=5))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, batches[5:]))
    other = next(loader.iterate(epoch=3))
    assert not torch.equal(other[0], x)


def test_crop_and_cutout_are_exact():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    out = crop(padded, torch.tensor([1, 0]), torch.tensor([[1, 1], [0, 2]]), size=6)
    assert torch.equal(out[0], images[1])
    assert torch.equal(out[1], padded[0, :, 0:6, 2:8])
    cut = cutout(torch.ones(1, 1, 8, 8), torch.tensor([[0, 0]]), 4)
    assert cut[0, 0, :2, :2].sum() == 0 and cut.sum() == 64 - 4


def test_sharded_loader_splits_each_global_batch(train):
    data = train.slice(0, 128)
    whole = list(BatchLoader(data, 64, seed=1).iterate(0))
    parts = [list(BatchLoader(data, 64, seed=1, rank=r, world_size=2).iterate(0)) for r in range(2)]
    for k, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][k][1], parts[1][k][1]]), y)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        read_batch(path)


def test_truncated_and_malformed_batches(tmp_path, data_root):
    source = (data_root / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    (tmp_path / "trunc").write_bytes(source[: len(source) // 2])
    with pytest.raises(DataError, match="corrupt"):
        read_batch(tmp_path / "trunc")
    (tmp_path / "shape").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="N x 3072"):
        read_batch(tmp_path / "shape")
    (tmp_path / "labels").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}))
    with pytest.raises(DataError, match="outside 0..9"):
        read_batch(tmp_path / "labels")


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DataError, match="not in"):
        load_cifar10(tmp_path, download=False)
