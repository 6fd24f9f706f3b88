#!/usr/bin/env bash
# The search-under-a-budget demonstration (issue 45): quick-preset searches in the sgblock and darts spaces, seed 0,
# without a cost and with --cost params at targets of 2.5 and 3.0 M parameters (the default weight 0.1), then 2.5 M
# with weight 1.0; resumable across sessions, results committed as each pair of runs finishes.
#   bash scripts/cost_quick.sh           # in the background: two searches at once, one thread each
#   bash scripts/cost_quick.sh --save    # before a session ends: commit the checkpoints of the runs in progress
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out=results/cost-quick
epochs=6  # the quick preset's
# space, target in millions of parameters (none: no cost term), cost weight
runs=("sgblock 2.5 0.1" "darts 2.5 0.1" "sgblock none -" "darts none -" "sgblock 3.0 0.1" "darts 3.0 0.1" "sgblock 2.5 1.0" "darts 2.5 1.0")

run_name() {  # SPACE TARGET WEIGHT: sgblock-t2.5-s0 (the default weight), sgblock-t2.5-w1.0-s0, sgblock-free-s0
  if [ "$2" = none ]; then echo "$1-free-s0"
  elif [ "$3" = 0.1 ]; then echo "$1-t$2-s0"
  else echo "$1-t$2-w$3-s0"; fi
}
finished() { [ -f "$1/metrics.jsonl" ] && [ "$(wc -l < "$1/metrics.jsonl")" -ge "$epochs" ] && [ -f "$1/genotype.json" ]; }

search() {  # search SPACE TARGET WEIGHT
  local dir="$out/$(run_name "$1" "$2" "$3")" cost=(--cost params --cost-target "$2" --cost-weight "$3")
  finished "$dir" && return 0
  [ "$2" = none ] && cost=()
  if [ -f "$dir/config.json" ]; then
    python3 search.py --resume "$dir" --threads 1 --no-progress
  else
    python3 search.py --ops "$1" --preset quick --seed 0 "${cost[@]}" --no-figures --threads 1 --no-progress --out "$dir"
  fi
}

commit() {
  git add "$out"
  { git ls-files -z -- "$out" | grep -z 'checkpoint\.pt$' || true; } | xargs -0 -r git reset -q --
  for dir in "$out"/*/; do finished "$dir" && git rm -q --cached --ignore-unmatch "$dir/checkpoint.pt" >/dev/null; done
  git diff --cached --quiet -- "$out" || git commit -q -m "$1"
}

if [ "${1:-}" = "--save" ]; then
  for checkpoint in "$out"/*/checkpoint.pt; do
    [ -f "$checkpoint" ] && ! finished "$(dirname "$checkpoint")" && git add -f "$checkpoint"
  done
  git diff --cached --quiet -- "$out" || git commit -q -m "cost-quick: checkpoints of the runs in progress"
  exit 0
fi

bash scripts/setup.sh
mkdir -p "$out" runs
(
  for ((i = 0; i < ${#runs[@]}; i += 2)); do
    search ${runs[i]} > "runs/cost-quick-$i.log" 2>&1 &
    search ${runs[i + 1]} > "runs/cost-quick-$((i + 1)).log" 2>&1 &
    wait
    commit "cost-quick: $(for d in "$out"/*/; do if finished "$d"; then basename "$d"; fi; done | tr '\n' ' ')finished"
  done
) >> runs/cost-quick.log 2>&1 &
echo "cost-quick running as PID $! (logs: runs/cost-quick*.log)"
