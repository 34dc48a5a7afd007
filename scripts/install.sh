#!/usr/bin/env bash
# Install semanticfl on a CPU machine: the quickstart's dataset (Debian's Fashion-MNIST) and the
# WordNet noun database FedAFD's image-text benchmark reads (Debian's wordnet-base), when apt is
# available as root, and the package with the CPU torch wheel. `--test` adds test tools.
# Safe to run again: what is already there is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

say() { echo "install.sh: $*"; }

# apt_package PACKAGE FILE WHAT: install Debian's PACKAGE unless FILE (one of its files) exists.
apt_package() {
  local package=$1 file=$2 what=$3
  if [ -e "$file" ]; then
    say "$what: already installed ($file)"
  elif ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    say "$what: skipped (needs apt-get as root); install Debian's $package yourself"
  else
    say "$what: apt-get install $package ..."
    apt-get install -y -qq "$package" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq "$package" >/dev/null; }
  fi
}

apt_package dataset-fashion-mnist /usr/share/datasets/fashion-mnist "Fashion-MNIST (the quickstart's data)"
apt_package wordnet-base /usr/share/wordnet/data.noun "WordNet (FedAFD's image-text benchmark)"

started=$SECONDS
say "pip install -c constraints/cpu.txt -e .${extras}: torch (CPU wheel), Flower, diffusers, transformers" \
  "and the rest (a minute or more on a fresh machine, seconds when already installed) ..."
python -m pip install -q --root-user-action=ignore -c constraints/cpu.txt -e ".${extras}"
say "pip install done in $((SECONDS - started)) s"
say "ready: try 'semanticfl run' (the quickstart) or 'semanticfl --help'"
