"""The search-space comparison: its plan, its runner (parallel, Slurm) and its report."""
