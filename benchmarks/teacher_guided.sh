#!/usr/bin/env bash
# FedDifRC (and its TDCL-only / NDCR-only ablations) against FedAvg on CIFAR-10 (../shared/data/cifar10),
# the NIID-Bench simple CNN, 10 clients all taking part, seed 0, 10 rounds x 1 local epoch (as the
# baseline table), Dirichlet alpha in {0.05, 0.1, 0.5}. The offline teacher is trained first on the
# server's 10,000-sample split, which every row (FedAvg included) withholds from the clients.
#   ./benchmarks/teacher_guided.sh [OUT] [TEACHER_MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out/teacher_guided}
teacher=benchmarks/out/teachers/cifar10
[ -f "$teacher/teacher.json" ] || semanticfl teacher train cifar10_cnn data.server_holdout=10000 --out "$teacher" --minutes "${2:-20}"
common=(data.server_holdout=10000 "teacher.path=$teacher" train.rounds=10 train.local_epochs=1
        "algorithm.feddifrc.layer_dims=[128,128,64]" "experiment.output_dir=$out")
semanticfl features cifar10_cnn "${common[@]}" algorithm.name=feddifrc
for alpha in 0.05 0.1 0.5; do
  run=("${common[@]}" partition.alpha=$alpha)
  semanticfl run cifar10_cnn "${run[@]}" algorithm.name=fedavg experiment.name=dir$alpha-fedavg
  semanticfl run cifar10_cnn "${run[@]}" algorithm.name=feddifrc experiment.name=dir$alpha-feddifrc
  semanticfl run cifar10_cnn "${run[@]}" algorithm.name=feddifrc algorithm.feddifrc.lambda_ndcr=0 experiment.name=dir$alpha-tdcl_only
  semanticfl run cifar10_cnn "${run[@]}" algorithm.name=feddifrc algorithm.feddifrc.lambda_tdcl=0 experiment.name=dir$alpha-ndcr_only
done
python benchmarks/run_table.py "$out" benchmarks/results/teacher_guided.json
