#!/usr/bin/env bash
# Install what is missing, then run the test suite (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
python3 -m pytest "$@"
