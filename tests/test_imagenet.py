"""The DARTS ImageNet network: reference structure and counts, and a retraining from an image folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from darts_sg.model.imagenet import ImageNetStem, build_imagenet_network
from darts_sg.model.network import AuxiliaryHead, build_network, count_params
from darts_sg.model.measure import flops_per_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def darts_v2_imagenet():
    return build_imagenet_network("darts_v2", C=48, layers=14, num_classes=1000, auxiliary=True)


def test_darts_v2_parameter_count_is_the_reference_one(darts_v2_imagenet):
    net = darts_v2_imagenet
    # quark0/darts NetworkImageNet(48, 1000, 14, auxiliary, DARTS_V2): 4,718,752 parameters without the
    # auxiliary head (DARTS reports 4.7M), and AuxiliaryHeadImageNet(C_aux=768, 1000) on top.
    assert count_params(net) - count_params(net.aux_head) == 4_718_752
    assert count_params(net.aux_head) == 1_260_776
    assert isinstance(net.stem, ImageNetStem) and isinstance(net.aux_head, AuxiliaryHead)
    assert net.aux_head.features[1].stride == 2 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.aux_head.modules()) == 1
    assert net.cells[0].preprocess0.__class__.__name__ == "FactorizedReduce"  # stem1 halved the resolution
    assert [i for i, cell in enumerate(net.cells) if cell.reduction] == [4, 9]
    # the same cells in the CIFAR skeleton still give the reference CIFAR count
    assert count_params(build_network("darts_v2", 36, 20, 10)) == 3_349_342


def test_resolutions_and_multiply_adds_at_224(darts_v2_imagenet):
    net = darts_v2_imagenet.eval()
    sizes = {}

    def record(index):
        def hook(module, inputs, output):
            sizes[index] = output.shape[-1]

        return hook

    hooks = [net.cells[i].register_forward_hook(record(i)) for i in (0, 4, 9, 13)]
    hooks.append(net.stem.stem0.register_forward_hook(record("stem0")))
    hooks.append(net.stem.stem1.register_forward_hook(record("stem1")))
    mult_adds = flops_per_image(net, torch.device("cpu"), 224) // 2
    for hook in hooks:
        hook.remove()
    assert sizes == {"stem0": 56, "stem1": 28, 0: 28, 4: 14, 9: 7, 13: 7}  # the auxiliary head and the pooling see 7x7
    assert 520e6 < mult_adds < 540e6  # measured 529.9M (convolutions and the classifier); DARTS reports 574M


def test_auxiliary_head_trains_at_224():
    net = build_imagenet_network("darts_v1", C=8, layers=3, num_classes=5, auxiliary=True).train()
    logits, aux = net.forward_with_aux(torch.randn(2, 3, 224, 224))
    assert logits.shape == aux.shape == (2, 5)


def write_image_folder(root: Path, classes=3, per_class=4, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (rng.integers(20, 48), rng.integers(20, 48), 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{k}.{'jpg' if k % 2 else 'png'}")
    return root


def test_folder_batches_are_reproducible_from_any_step(tmp_path):
    from darts_sg.train.folder_data import FolderLoader, image_folder

    folder = image_folder(write_image_folder(tmp_path / "imagenet", classes=2, per_class=4), "train")
    loader = FolderLoader(folder, 2, train=True, image_size=32, seed=1)
    batches = list(loader.iterate(epoch=3))
    assert len(batches) == 4 and batches[0][0].shape == (2, 3, 32, 32)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0] * 4 + [1] * 4
    again = list(FolderLoader(folder, 2, train=True, image_size=32, seed=1, workers=2).iterate(epoch=3, start_step=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, batches[2:]))
    assert not torch.equal(next(loader.iterate(epoch=4))[0], batches[0][0])


def run_augment(*args):
    return subprocess.run([sys.executable, str(ROOT / "augment.py"), *args], capture_output=True, text=True, timeout=300)


def test_retraining_from_an_image_folder(tmp_path):
    data = write_image_folder(tmp_path / "imagenet")
    out = tmp_path / "run"
    # 64x64 crops keep the test fast; the auxiliary head needs 224 (tested above), so it is off here
    result = run_augment("--dataset", "imagenet", "--preset", "smoke", "--genotype", "darts_v2", "--data-root", str(data),
                         "--batch-size", "4", "--train-subset", "0", "--test-subset", "0", "--image-size", "64",
                         "--auxiliary-weight", "0", "--out", str(out), "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    # the ImageNet settings of DARTS under the smoke preset's sizes
    assert (config["lr"], config["lr_decay"], config["weight_decay"], config["label_smoothing"]) == (0.1, 0.97, 3e-5, 0.1)
    assert (config["layers"], config["init_channels"], config["image_size"]) == (3, 4, 64)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "imagenet" and summary["image_size"] == 64
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and 0 <= metrics[0]["test_acc"] <= 1 and metrics[0]["train_loss"] > 0
    state = torch.load(out / "model.pt", weights_only=True)
    assert state["classifier.weight"].shape[0] == 3 and "stem.stem1.1.weight" in state
    assert summary["params"] == count_params(build_imagenet_network("darts_v2", C=4, layers=3, num_classes=3))
    assert summary["multiply_adds"] == summary["flops"] // 2 > 0


def test_image_folder_errors_are_one_line(tmp_path):
    result = run_augment("--dataset", "imagenet", "--preset", "smoke", "--genotype", "darts_v2",
                         "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"))  # fmt: skip
    assert result.returncode == 2 and "train" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    data = write_image_folder(tmp_path / "imagenet", classes=2, per_class=2)
    result = run_augment("--dataset", "imagenet", "--preset", "smoke", "--genotype", "darts_v2", "--image-size", "64",
                         "--data-root", str(data), "--out", str(tmp_path / "r2"))  # fmt: skip
    assert result.returncode == 2 and "--image-size" in result.stderr and len(result.stderr.strip().splitlines()) == 1
