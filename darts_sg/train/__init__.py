"""Training: the loop, the architecture step, the search objective's cost, data, run directories, process set-up."""
