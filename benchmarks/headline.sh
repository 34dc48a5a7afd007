#!/usr/bin/env bash
# The headline table (BENCHMARKS.md, README): CIFAR-10 (../shared/data/cifar10), the NIID-Bench simple
# CNN, 10 clients all taking part, 10 rounds x 1 local epoch (sized for a 2-core CPU), the offline
# teacher trained on the server's 10,000-sample split, which every row (baselines included) withholds
# from the clients. Rows run in priority order and a finished row is skipped, so the script can be
# stopped and started again. FedDifRC's table (issue 5) is the dir* x {fedavg, feddifrc, tdcl_only,
# ndcr_only} subset.
#   ./benchmarks/headline.sh [OUT] [TEACHER_MINUTES]
#   python benchmarks/headline_table.py [OUT]     # -> benchmarks/results/headline.json + Markdown
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out/headline}
teacher=benchmarks/out/teachers/cifar10
[ -f "$teacher/teacher.json" ] || semanticfl teacher train cifar10_cnn data.server_holdout=10000 --out "$teacher" --minutes "${2:-22}"
common=(data.server_holdout=10000 "teacher.path=$teacher" train.rounds=10 train.local_epochs=1 eval.every=2
        "algorithm.feddifrc.layer_dims=[128,128,64]" "algorithm.semanticfl.layer_dims=[32,128,128,64]"
        "experiment.output_dir=$out")

setting_overrides() {
  case $1 in
    dir*) echo "partition.scheme=dirichlet partition.alpha=${1#dir}" ;;
    c2) echo "partition.scheme=pathological partition.classes_per_client=2" ;;
  esac
}

local_variant() {  # local_variant KEY=VALUE...: SemanticFL local mode with these parameters
  echo "algorithm.name=semanticfl algorithm.semanticfl.mode=local $(printf 'algorithm.semanticfl.%s ' "$@")"
}

method_overrides() {
  case $1 in
    tdcl_only) echo "algorithm.name=feddifrc algorithm.feddifrc.lambda_ndcr=0" ;;
    ndcr_only) echo "algorithm.name=feddifrc algorithm.feddifrc.lambda_tdcl=0" ;;
    semanticfl_anchors | semanticfl_local | semanticfl_offload)
      echo "algorithm.name=semanticfl algorithm.semanticfl.mode=${1#semanticfl_}" ;;
    feddifrc_ndcr0.1 | feddifrc_ndcr0.01) echo "algorithm.name=feddifrc algorithm.feddifrc.lambda_ndcr=${1#feddifrc_ndcr}" ;;
    feddifrc_gap) echo "algorithm.name=feddifrc algorithm.feddifrc.reduction=gap" ;;
    semanticfl_anchors_public)
      echo "algorithm.name=semanticfl algorithm.semanticfl.mode=anchors algorithm.semanticfl.anchor_public_per_class=100" ;;
    semanticfl_no_latent) local_variant 'layers=["up-3","up-2","up-1"]' 'layer_dims=[128,128,64]' ;;
    semanticfl_no_unet) local_variant 'layers=["latent"]' 'layer_dims=[32]' ;;
    semanticfl_no_kd) local_variant lambda_kd=0 ;;
    semanticfl_no_con) local_variant lambda_con=0 ;;
    semanticfl_kd3) local_variant lambda_kd=3 ;;
    semanticfl_kd0.3) local_variant lambda_kd=0.3 ;;
    semanticfl_kdtemp0.2) local_variant kd_temperature=0.2 ;;
    semanticfl_con0.1) local_variant lambda_con=0.1 ;;
    semanticfl_kd3_no_con) local_variant lambda_kd=3 lambda_con=0 ;;
    *) echo "algorithm.name=$1" ;;
  esac
}

row() {  # row SETTING SEED METHOD
  local name="$1-$3-s$2"
  if grep -qs '"complete": true' "$out/$name"-2*/summary.json; then return; fi
  rm -rf "${out:?}/$name"-2*
  # shellcheck disable=SC2046  # the override lists are meant to split into words
  semanticfl run cifar10_cnn "${common[@]}" experiment.seed="$2" experiment.name="$name" \
    $(setting_overrides "$1") $(method_overrides "$3")
}

feddifrc_rows=(fedavg feddifrc tdcl_only ndcr_only)
semanticfl_rows=(semanticfl_anchors semanticfl_local)
baseline_rows=(fedprox moon scaffold fednh)
semanticfl_candidates=(semanticfl_kd3 semanticfl_kd0.3 semanticfl_kdtemp0.2 semanticfl_con0.1 semanticfl_no_con
                       semanticfl_kd3_no_con)
seeds() {  # seeds METHOD...: seeds 1 and 2 at dir0.1 (the teacher's features do not depend on
  for seed in 1 2; do    # experiment.seed, see teacher.seed: no re-extraction)
    for method in "$@"; do row dir0.1 "$seed" "$method"; done
  done
}
# Validation rows (dir0.1, seed 0): the candidates whose accuracy on the server's validation split
# (val_mean; never the test set) chose the FedDifRC and SemanticFL variants of the other rows.
for method in "${feddifrc_rows[@]}" feddifrc_ndcr0.1 feddifrc_ndcr0.01 feddifrc_gap \
              semanticfl_anchors semanticfl_anchors_public semanticfl_local "${semanticfl_candidates[@]}"; do
  row dir0.1 0 "$method"
done
[ "${HEADLINE_ROWS:-all}" = validation ] && exit 0
best_by_val() {  # best_by_val METHOD...: the one whose dir0.1 seed-0 run has the best validation accuracy
  python - "$out" "$@" <<'PY'
import json, pathlib, sys
out, candidates = pathlib.Path(sys.argv[1]), sys.argv[2:]
def val(method):
    runs = [json.loads(p.read_text()) for p in out.glob(f"dir0.1-{method}-s0-2*/summary.json")]
    return max([r["final_val_accuracy"] for r in runs if r.get("complete")] or [float("-inf")])
print(max(candidates, key=val))
PY
}
feddifrc_val=$(best_by_val feddifrc feddifrc_ndcr0.1 feddifrc_ndcr0.01 feddifrc_gap)
semanticfl_val=$(best_by_val semanticfl_local "${semanticfl_candidates[@]}")
echo "Variants chosen on the validation split: $feddifrc_val, $semanticfl_val"
main_rows=(fedavg feddifrc "${semanticfl_rows[@]}")
[ "$feddifrc_val" = feddifrc ] || main_rows+=("$feddifrc_val")
[ "$semanticfl_val" = semanticfl_local ] || main_rows+=("$semanticfl_val")
seeds fedavg "$feddifrc_val" "${semanticfl_rows[@]}" "$semanticfl_val"
for setting in dir0.05 dir0.5; do
  for method in "${main_rows[@]}"; do row "$setting" 0 "$method"; done
done
row dir0.1 0 semanticfl_offload
for method in "${main_rows[@]}"; do row c2 0 "$method"; done
for method in "${baseline_rows[@]}"; do row dir0.1 0 "$method"; done
for setting in dir0.05 dir0.5; do
  for method in tdcl_only ndcr_only; do row "$setting" 0 "$method"; done
done
for method in semanticfl_no_latent semanticfl_no_unet semanticfl_no_kd semanticfl_no_con; do row dir0.1 0 "$method"; done
seeds "${baseline_rows[@]}"
for setting in dir0.05 dir0.5 c2; do
  for method in "${baseline_rows[@]}"; do row "$setting" 0 "$method"; done
done
for setting in dir0.05 dir0.5 c2; do row "$setting" 0 semanticfl_offload; done
seeds feddifrc semanticfl_offload
python benchmarks/headline_table.py "$out"
