#!/usr/bin/env bash
# Install semanticfl on a CPU machine: the quickstart's dataset (Debian's Fashion-MNIST) and the
# WordNet noun database FedAFD's image-text benchmark reads (Debian's wordnet-base), when apt is
# available as root, and the package with the CPU torch wheel. `--test` adds test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
fi
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq wordnet-base >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq wordnet-base >/dev/null; }
fi
python -m pip install -q -c constraints/cpu.txt -e ".${extras}"
