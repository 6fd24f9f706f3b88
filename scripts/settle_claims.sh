#!/usr/bin/env bash
# The experiments of issue 44, one after the other (phase 5 before 4), resumable across sessions (results committed as units finish):
#   1. pilots of the decisive protocol: the darts search of seed 0 at the medium protocol with the alphas given room
#      to move, in order of preference (scripts/decisive_pilot.py takes the first that ends below 85% of the maximum
#      entropy). A 4x alpha rate (0.012, results/compare-decisive) ended at 93.9%; 16x (0.048) at 88.7% and 32x
#      (0.096) at 87.1% (2026-12-05): the entropy saturates with the rate. Its plateau fits the alphas' weight decay
#      (1e-3, Adam's L2 term) balancing their gradient, so the next pilots drop it: 4x and 16x with weight decay 0.
#      RESULT (2026-12-06): 4x without decay ended at 86.6%, 16x without decay at 64.5%: the 16x rate without weight
#      decay (results/compare-decisive-alr0.048-awd0) is the decisive protocol.
#   2. retraining noise: DARTS_V2 retrained with seeds 1, 2, 3 beside the medium comparison's seed 0
#      (results/compare-medium, --reference-seeds 0,1,2,3);
#   3. decisive searches: 4 per space (darts, sgblock), searches only, in the folder of the deciding pilot, with its
#      options (its darts-s0 is the pilot itself); skipped while the pilots cannot decide yet;
#   4. the decisive searches' cells retrained under the medium protocol (the same folder, 8 units);
#   5. the parameter claim: 12 searches per space at the medium protocol, searches only (results/compare-params; the
#      medium comparison's 4 finished searches per space are copied in as seeds 0-3), with 12 random genotypes per space.
#
#   bash scripts/settle_claims.sh          # in the background: two units at once, one thread each (two streams)
#   bash scripts/settle_claims.sh --save   # before a session ends: commit the checkpoints of the runs in progress
#   bash scripts/settle_claims.sh --status # what has finished, and how far the runs in progress are
# Pause it with kill -STOP -- -PID (the PID it prints), resume with kill -CONT -- -PID, stop it with kill -TERM -- -PID
# (every run writes a checkpoint first).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
epochs=7  # the medium search's
# the pilots in order of preference, each with its alpha options
pilots=(results/compare-decisive-alr0.048 results/compare-decisive-alr0.096
        results/compare-decisive-alr0.012-awd0 results/compare-decisive-alr0.048-awd0)
declare -A pilot_opts=(
  [results/compare-decisive-alr0.048]="alpha_lr=0.048"
  [results/compare-decisive-alr0.096]="alpha_lr=0.096"
  [results/compare-decisive-alr0.012-awd0]="alpha_lr=0.012 alpha_weight_decay=0"
  [results/compare-decisive-alr0.048-awd0]="alpha_lr=0.048 alpha_weight_decay=0"
)
outs=("${pilots[@]}" results/compare-medium results/compare-params)

search_opts() {  # search_opts PILOT: the pilot's alpha options as compare arguments
  local opt
  for opt in ${pilot_opts[$1]}; do printf '%s\n' --search-opt "$opt"; done
}

phase_args() {  # phase_args N: sets `args` to the compare options of phase N (p0-p3 the pilots, 2-5); none when it cannot run yet
  local decisive
  case "$1" in
    p*)
      local out=${pilots[${1#p}]}
      # a finished pilot's pass would only rewrite its report: the deciding pilot's folder holds the decisive
      # comparison, whose report would lose every unit but the pilot's search
      if search_finished "$out/search/darts-s0"; then args=() skip="its search is finished"; return 0; fi
      args=(--out "$out" --spaces darts --seeds 0 --random 0 --references "" --search-only)
      mapfile -t -O ${#args[@]} args < <(search_opts "$out") ;;
    2) args=(--out results/compare-medium --reference-seeds 0,1,2,3) ;;
    3 | 4)
      args=()
      decisive=$(python3 scripts/decisive_pilot.py "${pilots[@]}") || return 0
      args=(--out "$decisive" --spaces darts,sgblock --seeds 0,1,2,3 --random 0 --references "")
      mapfile -t -O ${#args[@]} args < <(search_opts "$decisive")
      if [ "$1" = 3 ]; then
        # once its searches are done, a search-only pass would only rewrite the report without the retrainings
        if all_searches_finished "$decisive" darts sgblock; then args=() skip="its searches are finished"; return 0; fi
        args+=(--search-only)
      fi ;;
    5) args=(--out results/compare-params --spaces darts,sgblock --seeds "$(seq -s, 0 11)" --random 12 --search-only) ;;
  esac
}

all_searches_finished() {  # all_searches_finished OUT SPACE...: the 4 seeds' searches of each space in OUT
  local space seed
  for space in "${@:2}"; do
    for seed in 0 1 2 3; do search_finished "$1/search/$space-s$seed" || return 1; done
  done
}
search_finished() { [ -f "$1/genotype.json" ] && [ -f "$1/metrics.jsonl" ] && [ "$(wc -l < "$1/metrics.jsonl")" -ge "$epochs" ]; }
run_finished() {  # a search with all its epochs, or a retraining with its summary
  case "$1" in */search/*) search_finished "$1" ;; *) [ -f "$1/summary.json" ] ;; esac
}
runs_of() {  # every run folder of the experiments
  local out
  for out in "${outs[@]}"; do
    for run in "$out"/search/* "$out"/augment/*; do [ -d "$run" ] && echo "$run"; done
  done
  return 0
}
finished_count() {
  local n=0 run
  for run in $(runs_of); do if run_finished "$run"; then n=$((n + 1)); fi; done
  echo "$n"
}

commit() {  # commit MESSAGE [--with-checkpoints]: the experiments' folders; checkpoints only of unfinished runs, only with --save
  git add "${outs[@]}"
  for run in $(runs_of); do
    [ -n "$(git ls-files -- "$run/checkpoint.pt")" ] || continue
    if run_finished "$run"; then git rm -q --cached "$run/checkpoint.pt"
    elif [ "${2:-}" != "--with-checkpoints" ]; then git reset -q -- "$run/checkpoint.pt"; fi
  done
  # the index, not `git commit -- PATH`; stage nothing else meanwhile
  git diff --cached --quiet -- "${outs[@]}" || git commit -q -m "$1"
}

stream() {  # stream K: the phases in order, one unit at a time on one thread
  export PYTHONUNBUFFERED=1  # its lines reach the log as they are written, through the pipe below
  for n in p0 p1 p2 p3 2 3 5 4; do  # the parameter claim (searches only) before the long decisive retrainings
    skip="the pilots cannot decide the protocol yet"
    phase_args "$n"  # phases 3-4 print the pilots' entropies (scripts/decisive_pilot.py)
    if [ ${#args[@]} = 0 ]; then echo "[stream $1] phase $n skipped: $skip"; continue; fi
    # a checkpoint every ~5 minutes of a unit (an epoch is ~20-40 minutes), so that a session ending without a
    # SIGTERM loses little
    python3 -m darts_sg compare --preset medium "${args[@]}" --search-opt threads=1 --augment-opt threads=1 \
      --search-opt checkpoint_every=40 --augment-opt checkpoint_every=200 --no-progress 2>&1 |
      sed -u "s/^/[stream $1] /"
  done
}

if [ "${1:-}" = "--phases" ]; then  # the experiments themselves (started below, in a process group of their own)
  # Two streams walk the same phases; each claims the next unit the other does not hold (compare's file locks), so
  # that a phase's last unit runs beside the next phase's first rather than beside an idle core. Two one-thread units
  # at once train 1.14-1.55x the images per second of one two-thread unit (benchmarks/bench_parallel_units.py).
  stream 1 &
  sleep 30  # the first stream claims its unit first: the units then pair up in running order
  stream 2 &
  wait
  exit 0
fi

if [ "${1:-}" = "--status" ]; then  # per experiment folder: finished runs, and the epochs of the runs in progress
  for out in "${outs[@]}"; do
    done_runs=0 partial=()
    for run in $(runs_of | grep "^$out/"); do
      if run_finished "$run"; then done_runs=$((done_runs + 1))
      else partial+=("${run#"$out"/} ($( [ -f "$run/metrics.jsonl" ] && wc -l < "$run/metrics.jsonl" || echo 0) epochs)"); fi
    done
    echo "$out: $done_runs finished${partial:+; in progress or stopped: ${partial[*]}}"
  done
  exit 0
fi

if [ "${1:-}" = "--save" ]; then
  for run in $(runs_of); do
    if [ -f "$run/checkpoint.pt" ] && ! run_finished "$run"; then git add -f "$run/checkpoint.pt"; fi
  done
  commit "settle-claims: $(finished_count) runs finished; checkpoints of the runs in progress" --with-checkpoints
  exit 0
fi

# a fresh folder for phase 3 starts with the medium comparison's finished searches (the same protocol)
for space in darts sgblock; do
  for seed in 0 1 2 3; do
    from=results/compare-medium/search/$space-s$seed to=results/compare-params/search/$space-s$seed
    if search_finished "$from" && [ ! -d "$to" ]; then mkdir -p "$(dirname "$to")" && cp -r "$from" "$to"; fi
  done
done

bash scripts/setup.sh  # a fresh machine: install what is missing first
mkdir -p runs
# setsid: a process group of its own, so that one signal pauses, resumes or stops the phases and both workers
setsid nohup bash scripts/settle_claims.sh --phases >> runs/settle-claims.log 2>&1 &
pid=$!
echo "settle-claims running as PID $pid (log: runs/settle-claims.log); pause: kill -STOP -- -$pid; resume: kill -CONT -- -$pid"
(
  last=$(finished_count)
  while kill -0 "$pid" 2>/dev/null; do
    sleep 60
    now=$(finished_count)
    if [ "$now" != "$last" ]; then commit "settle-claims: $now runs finished" && last=$now; fi
  done
  commit "settle-claims: $(finished_count) runs finished"
) >> runs/settle-claims-commits.log 2>&1 &
