#!/usr/bin/env bash
# Install what is missing, then run the test suite (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# the tests run under tcmalloc where installed, as the jobs do (darts_sg/allocator.py); results are the same bit for bit
tcmalloc="$(python3 -c "from darts_sg.allocator import find_tcmalloc; print(find_tcmalloc() or '')")"
if [ -n "$tcmalloc" ] && [ "${DARTS_SG_ALLOCATOR:-auto}" != system ]; then
  export LD_PRELOAD="$tcmalloc${LD_PRELOAD:+:$LD_PRELOAD}"
fi
python3 -m pytest "$@"
