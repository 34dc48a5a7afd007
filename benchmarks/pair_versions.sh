#!/usr/bin/env bash
# Alternate an older commit and this checkout on one run, so both are timed on the same VM minutes apart
# (this VM's speed drifts by more than the differences measured): before, after, before, after.
#
#   benchmarks/pair_versions.sh b682049 2 cifar10_cnn partition.alpha=0.5 train.rounds=2 train.local_epochs=10
#
# Arguments: COMMIT PAIRS then the `semanticfl run` arguments. The older code runs from a git worktree in
# $TMPDIR through PYTHONPATH (the installed dependencies are shared); each run writes to its own folder under
# benchmarks/out/pair_versions/, and the mean round time of each is printed. Run it alone on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$1 pairs=$2
shift 2
root=$PWD
before=${TMPDIR:-/tmp}/semanticfl-before-$commit
[ -d "$before" ] || git worktree add -f --detach "$before" "$commit" >/dev/null
export SEMANTICFL_DATA=${SEMANTICFL_DATA:-$root/../shared/data}
out=$root/benchmarks/out/pair_versions
for pair in $(seq "$pairs"); do
  for which in before after; do
    src=$root/src
    [ "$which" = before ] && src=$before/src
    dir=$out/$which-$pair
    rm -rf "$dir" && mkdir -p "$dir"
    if (cd "$dir" && PYTHONPATH=$src python -m semanticfl.cli.main run "$@" > log.txt 2>&1); then
      echo "$which-$pair: $(grep -h 'mean round time' "$dir/log.txt" | tr -s ' │' ' ')"
    else
      echo "$which-$pair failed: $(tail -n 1 "$dir/log.txt")" >&2
      exit 1
    fi
  done
done
