"""The papers' models: the ops (DARTS primitives, sandglass, inverted residual), cells, networks, genotypes, and what they cost."""
