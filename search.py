"""Architecture search on CIFAR-10: `python search.py --ops sgblock --preset quick` (see --help)."""

from darts_sg.entry import search_main

if __name__ == "__main__":
    search_main()
