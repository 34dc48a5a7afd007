#!/usr/bin/env bash
# FedAFD's table (BENCHMARKS.md): the shipped multimodal_cifar10 config (CIFAR-10 + WordNet class-level
# image-text benchmark; 3 image, 3 text, 4 image-text clients, all every round; 6 rounds x 2 local
# epochs; 1,000 public pairs), IID and Dirichlet alpha = 0.1, FedAFD against LOCAL, CreamFL-style and
# the three ablations, FedAFD with β = 0.05 (BAA's weight at a tenth of the paper's), and FedAFD as its public
# code runs it (algorithm.fedafd.variant=code); at IID also the paper with only BAA as the code has it
# (code_baa), the code less its lr decay, its per-epoch BAA or its GFF settings, and LOCAL, FedAFD and the
# code variant with MiniLM text encoders (frozen, pretrained; a trainable head) in every text and
# image-text client.
# A finished row is skipped, so the script can be stopped and started again.
#   ./benchmarks/fedafd.sh [OUT] [SETTING-METHOD ...]   # only these rows, in this order (e.g. iid-code)
#   python benchmarks/fedafd_table.py [OUT]     # -> benchmarks/results/fedafd.json + Markdown
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/out/fedafd}

setting_overrides() {
  case $1 in
    iid) echo "partition.scheme=iid" ;;
    dir*) echo "partition.scheme=dirichlet partition.alpha=${1#dir}" ;;
  esac
}

minilm_clients='["image:cnn","image:cnn","image:cnn","text:minilm","text:minilm","text:minilm","pair:cnn+minilm","pair:cnn+minilm","pair:cnn+minilm","pair:cnn+minilm"]'

method_overrides() {
  local p=algorithm.fedafd
  case $1 in
    minilm_*) echo "$p.clients=$minilm_clients $(method_overrides "${1#minilm_}")" ;;
    fedafd) echo "" ;;
    local) echo "$p.collaborate=false" ;;
    creamfl_style) echo "$p.aggregation=creamfl $p.baa=false $p.gff=false" ;;
    no_baa) echo "$p.baa=false" ;;
    no_gff) echo "$p.gff=false" ;;
    no_sed) echo "$p.aggregation=mean" ;;
    fedafd_beta*) echo "$p.beta=${1#fedafd_beta}" ;;  # BAA's weight: a sensitivity row, not a tuned one
    code) echo "$p.variant=code" ;;
    code_baa) echo "$p.discriminator_output=sigmoid $p.adversarial_loss=nonsaturating $p.discriminator_weight=0.5" \
                   "$p.discriminator_optimizer=adam $p.keep_discriminator_optimizer=true" ;;  # the paper, BAA as the code
    code_no_decay) echo "$p.variant=code $p.lr_decay_at=[]" ;;  # the code less one of its differences each
    code_baa_once) echo "$p.variant=code $p.baa_every_epoch=false" ;;
    code_paper_gff) echo "$p.variant=code $p.gff_second_gate=same $p.gff_optimizer=encoder $p.gff_fresh_each_round=false" ;;
  esac
}

row() {  # row SETTING METHOD
  local name="$1-$2"
  if grep -qs '"complete": true' "$out/$name"-2*/summary.json; then return; fi
  rm -rf "${out:?}/$name"-2*
  # shellcheck disable=SC2046  # the override lists are meant to split into words
  semanticfl run multimodal_cifar10 experiment.name="$name" "experiment.output_dir=$out" \
    $(setting_overrides "$1") $(method_overrides "$2")
}

if [ $# -gt 1 ]; then
  for name in "${@:2}"; do row "${name%%-*}" "${name#*-}"; done
  exit
fi
for setting in dir0.1 iid; do
  for method in fedafd local creamfl_style no_baa no_gff no_sed fedafd_beta0.05 code; do row "$setting" "$method"; done
done
for method in code_baa code_no_decay code_baa_once code_paper_gff minilm_local minilm_fedafd minilm_code; do
  row iid "$method"
done
python benchmarks/fedafd_table.py "$out"
