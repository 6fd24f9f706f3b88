#!/usr/bin/env bash
# Install darts-sg and what it needs (idempotent): the package with its test extra, and Graphviz's dot.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "warning: could not install graphviz; cell diagrams will be written as .gv only" >&2
  else
    echo "note: Graphviz 'dot' is missing; install it (e.g. apt-get install graphviz) for cell diagrams" >&2
  fi
fi
if ! python3 -c "import darts_sg, pytest, torch, torchvision, graphviz, tensorboard, click, matplotlib, scipy" 2>/dev/null; then
  python3 -m pip install -q -e ".[test]"
fi
