"""Named genotypes (JSON) shipped with darts-sg; installed inside the package as `darts_sg.zoo`."""
