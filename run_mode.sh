#!/usr/bin/env bash
# The pipeline as shell steps. Usage: ./run_mode.sh demo [OUT]
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"  # paths given by the user stay relative to where they ran this

# The whole pipeline on a fresh toy pool: DataComp basic filter -> reshard -> MoDE prep -> one expert per toy
# domain + a dense baseline with the same compute -> evaluate -> ensemble -> report.
# SAMPLES (6000) and EPOCHS (10) size it; ~10 min on 2 CPU cores.
demo() {
  local out="${1:-runs/demo}" samples="${SAMPLES:-6000}" epochs="${EPOCHS:-10}"
  local fine=32 coarse=3
  local runs="$out/logs/toy_tiny_mode_n${coarse}m${fine}"
  echo "== toy pool -> $out/pool"
  python -m mode toy "$out/pool" --samples "$samples" --shards 8 --workers 2
  echo "== DataComp basic filter (English, > 2 words, > 5 characters, min side >= 200, aspect <= 3) -> $out/basic.npy"
  python -m mode filter --name basic_filter --metadata-dir "$out/pool/metadata" --save-path "$out/basic.npy"
  echo "== reshard the kept pairs -> $out/filtered"
  python -m mode reshard -i "$out/pool" -o "$out/filtered" -s "$out/basic.npy" --shard-size 1000 --workers 2 \
    --overwrite
  echo "== MoDE prep: captions, embed, cluster ($fine fine -> $coarse coarse), assign, route -> $out/work"
  FINE=$fine COARSE=$coarse prep_steps "$out/filtered" "$out/work"
  echo "== train $coarse experts + a dense baseline (open_clip_train + plugin, CPU) -> $runs"
  python -m mode train-experts toy_tiny_mode --experts all --dense --folder "$out/logs/submitit" -- \
    --data-dir "$out/filtered" --mode-work-dir "$out/work" --logs "$out/logs" --epochs "$epochs"
  local models=() labels=()
  for k in $(seq 0 $((coarse - 1))); do
    models+=(--model "expert_$k=toy_tiny_mode:$runs/expert_$k/checkpoints/epoch_$epochs.pt")
    labels+=("expert_$k")
  done
  models+=(--model "dense=toy_tiny_mode:$runs/dense/checkpoints/epoch_$epochs.pt")
  echo "== evaluate on the toy tasks -> $out/eval"
  python -m mode evaluate --tasks "$out/pool/eval_tasks" --out "$out/eval" "${models[@]}"
  echo "== ensemble (MoDE weighting) -> $out/report"
  python -m mode ensemble --work-dir "$out/work" --tasks "$out/pool/eval_tasks" --eval-out "$out/eval" \
    --experts "$(IFS=,; echo "${labels[*]}")" --dense dense --weighting mode --report "$out/report"
  echo "== ensemble (hard top-1 routing by the same scores) -> $out/report_top1"
  python -m mode ensemble --work-dir "$out/work" --tasks "$out/pool/eval_tasks" --eval-out "$out/eval" \
    --experts "$(IFS=,; echo "${labels[*]}")" --dense dense --weighting top1 --report "$out/report_top1"
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
