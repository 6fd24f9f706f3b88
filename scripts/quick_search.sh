#!/usr/bin/env bash
# Install what is missing, then run a quick sandglass search on CIFAR-10 (about 15 minutes on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
python3 search.py --ops sgblock --preset quick "$@"
