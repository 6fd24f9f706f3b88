"""Retrain a genotype on CIFAR-10: `python augment.py --genotype darts_v2 --preset quick` (see --help)."""

from darts_sg.entry import augment_main

if __name__ == "__main__":
    augment_main()
