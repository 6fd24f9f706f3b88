"""Write random CIFAR-10-shaped data in the official python-pickle layout, for timing where the real set is absent.

    python scripts/fake_cifar.py DIR [--images-per-file N]

DIR/cifar-10-batches-py/data_batch_1..5 and test_batch: uniform random pixels and labels. Only for
speed measurements: nothing learnable is in it.
"""

import argparse
import pickle
from pathlib import Path

import numpy as np

from darts_sg.train.data import FOLDER, IMAGE_BYTES, TEST_FILES, TRAIN_FILES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--images-per-file", type=int, default=10_000)
    args = parser.parse_args()
    folder = args.root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = args.images_per_file
    for name in TRAIN_FILES + TEST_FILES:
        batch = {b"data": rng.integers(0, 256, (n, IMAGE_BYTES), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=4)
    print(f"wrote {len(TRAIN_FILES) * n} training and {n} test images of random CIFAR-10-shaped data to {folder}")


if __name__ == "__main__":
    main()
