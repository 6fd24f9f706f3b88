"""`python -m darts_sg`: the `darts-sg` command."""

from .entry import main

if __name__ == "__main__":  # not when multiprocessing's spawn imports this module again in a worker
    main()
