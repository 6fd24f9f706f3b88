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

untrack_finished() {
  for run in "$out"/search/* "$out"/augment/*; do
    if [ -f "$run/genotype.json" ] || [ -f "$run/summary.json" ]; then
      git rm -q --cached --ignore-unmatch "$run/checkpoint.pt" >/dev/null
    fi
  done
}

commit() {
  untrack_finished
  git add "$out"
  # the index, not `git commit -- PATH` (which would commit a dropped checkpoint's file again); stage nothing else meanwhile
  git diff --cached --quiet -- "$out" || git commit -q -m "$1"
}

status_line() {
  local finished searches
  finished=$(ls "$out"/augment/*/summary.json 2>/dev/null | wc -l)
  searches=$(ls "$out"/search/*/genotype.json 2>/dev/null | xargs -r -n1 dirname | xargs -r -n1 basename | tr '\n' ' ')
  echo "compare-medium: $finished of 22 units finished; searches finished: $searches"
}

if [ "${1:-}" = "--save" ]; then
  for checkpoint in "$out"/search/*/checkpoint.pt "$out"/augment/*/checkpoint.pt; do
    [ -f "$checkpoint" ] && git add -f "$checkpoint"
  done
  commit "$(status_line); checkpoint of the unit in progress"
  exit 0
fi

bash scripts/setup.sh  # a fresh machine: install what is missing first
mkdir -p runs
nohup python3 -m darts_sg.cli compare --preset medium --out "$out" --no-progress >> runs/compare-medium.log 2>&1 &
pid=$!
echo "compare running as PID $pid (log: runs/compare-medium.log); pause it with kill -STOP $pid, resume with kill -CONT $pid"
(
  last=""
  while kill -0 "$pid" 2>/dev/null; do
    sleep 60
    state="$(ls "$out"/augment/*/summary.json "$out"/search/*/genotype.json 2>/dev/null | tr '\n' ' ')"
    if [ "$state" != "$last" ]; then
      commit "$(status_line)" && last="$state"
    fi
  done
) >> runs/compare-medium-commits.log 2>&1 &
