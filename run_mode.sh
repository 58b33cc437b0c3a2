#!/usr/bin/env bash
# The pipeline as shell steps. Usage: ./run_mode.sh demo [OUT]
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"  # paths given by the user stay relative to where they ran this

demo() {
  local out="${1:-runs/demo}"
  echo "== toy pool -> $out/pool"
  python -m mode toy "$out/pool" --samples 4000 --shards 8
  echo "== train toy_tiny (open_clip_train + plugin, CPU) -> $out/logs/toy_tiny"
  python "$REPO/src/training/main.py" toy_tiny --toy-pool "$out/pool" --logs "$out/logs" --name toy_tiny \
    --epochs 5 --resume latest
  echo "== loss per epoch"
  python -m mode losses "$out/logs/toy_tiny/out.log"
}

# MoDE prep: captions -> embed -> cluster -> assign -> route. The per-shard steps take their rank from
# torchrun/SLURM when launched there; cluster is global. Settings from the environment:
#   FINE (1024) COARSE (4) OOC_RATIO (0.02) WORKERS (2) ENCODER (packaged all-MiniLM-L6-v2) BALANCE (0/1)
prep_steps() {
  local shards="${1:?usage: $0 prep-steps SHARDS WORK_DIR}" work="${2:?usage: $0 prep-steps SHARDS WORK_DIR}"
  local enc=() bal=()
  [ -n "${ENCODER:-}" ] && enc=(--encoder "$ENCODER")
  [ "${BALANCE:-0}" = 1 ] && bal=(--balance)
  python -m mode captions --shards "$shards" --work-dir "$work" --workers "${WORKERS:-2}"
  python -m mode embed --shards "$shards" --work-dir "$work" "${enc[@]}"
  python -m mode cluster --shards "$shards" --work-dir "$work" --fine "${FINE:-1024}" --coarse "${COARSE:-4}" "${bal[@]}"
  python -m mode assign --shards "$shards" --work-dir "$work" --workers "${WORKERS:-2}"
  python -m mode route --shards "$shards" --work-dir "$work" --ooc-ratio "${OOC_RATIO:-0.02}" --workers "${WORKERS:-2}"
}

case "${1:-}" in
  demo) shift; demo "$@" ;;
  prep-steps) shift; prep_steps "$@" ;;
  *) echo "usage: $0 demo [OUT] | prep-steps SHARDS WORK_DIR" >&2; exit 2 ;;
esac
