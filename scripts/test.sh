#!/usr/bin/env bash
# Install what is missing, then run the test suite (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# the tests run under tcmalloc where installed, as the jobs do (darts_sg/utils/allocator.py); results are the same bit for bit
tcmalloc="$(python3 -c "from darts_sg.utils.allocator import find_tcmalloc; print(find_tcmalloc() or '')")"
if [ -n "$tcmalloc" ] && [ "${DARTS_SG_ALLOCATOR:-auto}" != system ]; then
  export LD_PRELOAD="$tcmalloc${LD_PRELOAD:+:$LD_PRELOAD}"
fi
# one pytest-xdist worker per core, each on one torch thread (tests/conftest.py); `-n 0` runs them in this process.
# --dist loadgroup keeps the tests that share a module-scoped run (xdist_group) on one worker, which makes that run once.
python3 -m pytest -n auto --dist loadgroup "$@"
