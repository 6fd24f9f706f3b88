#!/usr/bin/env bash
# The medium search-space comparison (issue 16) across sessions, on this checkout:
#   bash scripts/compare_medium.sh          # run it in the background, committing results/compare-medium whenever a unit finishes
#   bash scripts/compare_medium.sh --save   # before a session ends: commit the checkpoint of the unit in progress,
#                                           # so that a fresh machine resumes it instead of starting it over
# Checkpoints are otherwise not committed (.gitignore); a unit's is dropped from git once the unit has finished.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out=results/compare-medium

# a search has finished once its retraining has started (genotype.json is rewritten every search epoch)
finished_searches() {
  for run in "$out"/search/*; do
    if [ -d "$out/augment/$(basename "$run")" ]; then basename "$run"; fi
  done
}

untrack_finished() {
  for name in $(finished_searches); do
    git rm -q --cached --ignore-unmatch "$out/search/$name/checkpoint.pt" >/dev/null
  done
  for run in "$out"/augment/*; do
    if [ -f "$run/summary.json" ]; then git rm -q --cached --ignore-unmatch "$run/checkpoint.pt" >/dev/null; fi
  done
}

commit() {  # commit MESSAGE [--with-checkpoints]
  git add "$out"
  if [ "${2:-}" != "--with-checkpoints" ]; then
    # a unit in progress has its checkpoint (~10 MB) committed by --save alone, not at every finished unit
    git ls-files -z -- "$out" | grep -z 'checkpoint\.pt$' | xargs -0 -r git reset -q --
  fi
  untrack_finished
  # the index, not `git commit -- PATH` (which would commit a dropped checkpoint's file again); stage nothing else meanwhile
  git diff --cached --quiet -- "$out" || git commit -q -m "$1"
}

status_line() {
  local finished searches
  finished=$(ls "$out"/augment/*/summary.json 2>/dev/null | wc -l)
  searches=$(finished_searches | tr '\n' ' ')
  echo "compare-medium: $finished of 22 units finished; searches finished: $searches"
}

if [ "${1:-}" = "--save" ]; then
  for checkpoint in "$out"/search/*/checkpoint.pt "$out"/augment/*/checkpoint.pt; do
    [ -f "$checkpoint" ] && git add -f "$checkpoint"
  done
  commit "$(status_line); checkpoints of the units in progress" --with-checkpoints
  exit 0
fi

bash scripts/setup.sh  # a fresh machine: install what is missing first
mkdir -p runs
# two units at once, one thread each: 1.14x (retraining) to 1.44-1.55x (searches) the images per second of one
# two-thread process on 2 cores (benchmarks/bench_parallel_units.py); setsid: its own process group, so that one
# signal to the group pauses, resumes or stops the main process and both workers
setsid nohup python3 -m darts_sg compare --preset medium --out "$out" --no-progress --jobs 2 >> runs/compare-medium.log 2>&1 &
pid=$!
echo "compare running as PID $pid (log: runs/compare-medium.log); pause it with kill -STOP -- -$pid, resume with kill -CONT -- -$pid, stop it with kill -TERM $pid"
(
  last=""
  while kill -0 "$pid" 2>/dev/null; do
    sleep 60
    state="$(ls -d "$out"/augment/*/ "$out"/augment/*/summary.json 2>/dev/null | tr '\n' ' ')"
    if [ "$state" != "$last" ]; then
      commit "$(status_line)" && last="$state"
    fi
  done
) >> runs/compare-medium-commits.log 2>&1 &
