#!/usr/bin/env bash
# The pipeline as shell steps. Usage: ./run_mode.sh demo [OUT]
set -euo pipefail
cd "$(dirname "$0")"

demo() {
  local out="${1:-runs/demo}"
  echo "== toy pool -> $out/pool"
  python -m mode toy "$out/pool" --samples 4000 --shards 8
  echo "== train toy_tiny (open_clip_train + plugin, CPU) -> $out/logs/toy_tiny"
  python src/training/main.py toy_tiny --toy-pool "$out/pool" --logs "$out/logs" --name toy_tiny \
    --epochs 5 --resume latest
  echo "== loss per epoch"
  python -m mode losses "$out/logs/toy_tiny/out.log"
}

case "${1:-}" in
  demo) shift; demo "$@" ;;
  *) echo "usage: $0 demo [OUT]" >&2; exit 2 ;;
esac
