#!/usr/bin/env bash
# Install darts-sg and what it needs (idempotent): the package with its test extra, Graphviz's dot and tcmalloc.
set -euo pipefail
cd "$(dirname "$0")/.."

# System libraries from Debian: Graphviz's dot (cell diagrams) and tcmalloc (faster CPU steps, darts_sg/utils/allocator.py).
missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
python3 -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('tcmalloc_minimal'))" || missing+=(libtcmalloc-minimal4)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "warning: could not install ${missing[*]}; cell diagrams are then written as .gv only, and CPU jobs use glibc's allocator" >&2
  else
    echo "note: missing ${missing[*]} (e.g. apt-get install ${missing[*]}): dot draws the cell diagrams, tcmalloc speeds up CPU jobs" >&2
  fi
fi
if ! python3 -c "import darts_sg, pytest, xdist, torch, torchvision, graphviz, tensorboard, click, matplotlib, scipy, statsmodels, submitit" 2>/dev/null; then
  python3 -m pip install -q -e ".[test]"
fi
