#!/usr/bin/env bash
# The pipeline as shell steps. Usage: ./run_mode.sh demo [OUT]
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"  # paths given by the user stay relative to where they ran this

# The whole pipeline on a fresh toy pool, in MoDE's protocol: DataComp basic filter -> reshard -> MoDE prep ->
# a dense seed run to epoch SEED_EPOCHS -> one expert per toy domain forked from it, and the dense run continued
# with the experts' compute -> evaluate -> ensemble -> report. Every step is seeded: the same tables every run.
# SAMPLES (6000), EPOCHS (10) and SEED_EPOCHS (8: MoDE forks at 27 of 32, about the same share) size it; every
# run's epoch is the filtered pool, as MoDE's runs share one epoch size; ~10 min on 2 CPU cores.
demo() {
  local out="${1:-runs/demo}" samples="${SAMPLES:-6000}" epochs="${EPOCHS:-10}" seed_epochs="${SEED_EPOCHS:-8}"
  local fine=32 coarse=3
  local runs="$out/logs/toy_tiny_mode_n${coarse}m${fine}"
  echo "== toy pool -> $out/pool"
  python -m mode toy "$out/pool" --samples "$samples" --shards 8 --workers 2
  echo "== DataComp basic filter (English, > 2 words, > 5 characters, min side >= 200, aspect <= 3) -> $out/basic.npy"
  python -m mode filter --name basic_filter --metadata-dir "$out/pool/metadata" --save-path "$out/basic.npy" \
    --fasttext-model packaged
  echo "== reshard the kept pairs -> $out/filtered"
  python -m mode reshard -i "$out/pool" -o "$out/filtered" -s "$out/basic.npy" --shard-size 1000 --workers 2 \
    --overwrite
  echo "== MoDE prep: captions, embed, cluster ($fine fine -> $coarse coarse), assign, route -> $out/work"
  FINE=$fine COARSE=$coarse prep_steps "$out/filtered" "$out/work"
  echo "== dense seed run to epoch $seed_epochs of $epochs, then $coarse experts forked from it + the dense run" \
    "continued with their compute (open_clip_train + plugin, CPU) -> $runs"
  python -m mode train-experts toy_tiny_mode --experts all --dense --seed-epochs "$seed_epochs" \
    --folder "$out/logs/submitit" -- \
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
  echo "== cluster browser (experts, fine clusters, thumbnails, why each task was routed) -> $out/site"
  python -m mode inspect --work-dir "$out/work" --shards "$out/filtered" --out "$out/site" \
    --subset "$out/basic.npy" --tasks "$out/pool/eval_tasks" --eval-out "$out/eval" --report "$out/report"
}

# MoDE prep: captions -> embed -> cluster -> assign -> route, through `mode prep` (locally in order; with
# `--executor slurm --ranks R` as SLURM job arrays with dependencies). Settings from the environment:
#   FINE (1024) COARSE (4) OOC_RATIO (0.02) WORKERS (2) ENCODER (packaged all-MiniLM-L6-v2) BALANCE (0/1)
#   SAMPLE_SHARDS, PRESET: fast (default: the packaged MiniLM mean-pooled, spherical k-means on a row sample, fine
#   centroids weighted by size, out-of-cluster pairs a share of each expert) or mode (MoDE's choices: SimCSE's
#   pooler output, balanced Euclidean k-means at both levels on 5% of the shards, r x the other clusters' pairs).
#   Any setting given beside PRESET wins, e.g. PRESET=mode ENCODER=all-MiniLM-L6-v2 offline. Flags after WORK_DIR
#   go to `mode prep`, e.g. `--executor slurm --ranks 16 --partition P --wait`.
prep_steps() {
  local shards="${1:?usage: $0 prep-steps SHARDS WORK_DIR [mode prep flags]}"
  local work="${2:?usage: $0 prep-steps SHARDS WORK_DIR [mode prep flags]}"
  shift 2
  local flags=(--preset "${PRESET:-fast}" --fine "${FINE:-1024}" --coarse "${COARSE:-4}"
               --ooc-ratio "${OOC_RATIO:-0.02}" --workers "${WORKERS:-2}")
  [ -n "${ENCODER:-}" ] && flags+=(--encoder "$ENCODER")
  case "${BALANCE:-}" in 1) flags+=(--balance) ;; 0) flags+=(--no-balance) ;; esac
  [ -n "${SAMPLE_SHARDS:-}" ] && flags+=(--sample-shards "$SAMPLE_SHARDS")
  python -m mode prep --shards "$shards" --work-dir "$work" "${flags[@]}" "$@"
}

# A pool's metadata recomputed from its shards with dataset2metadata's datacomp.yml (DataComp's column names), then
# two DataComp filters on it. The models' weights download on first use (see README); offline, CUSTOM=FILE names a
# custom_pypath file with your own (tests/datacomp/d2m_tiny.py: random small models). YML=FILE uses your own yml;
# DEVICE (0: the first GPU, cpu without one), BATCH (64), WORKERS (2).
metadata() {
  local pool="${1:?usage: $0 metadata POOL OUT}" out="${2:?usage: $0 metadata POOL OUT}"
  local yml="${YML:-${out%/}.yml}"
  if [ -z "${YML:-}" ]; then
    mkdir -p "$(dirname "$yml")"
    cat >"$yml" <<EOF
models: [oai-clip-vit-b32, oai-clip-vit-l14, nsfw-detoxify, nsfw-image-oai-clip-vit-l-14, faces-scrfd10g,
         dedup-isc-ft-v107]
postprocess_columns: [oai-clip-vit-b32-score, oai-clip-vit-l14-score, nsfw-detoxify-score, nsfw-image-score,
                      face-boxes, dedup-isc-ft-v107-score]
postprocess_features: [oai-clip-vit-b32-image, oai-clip-vit-b32-text, oai-clip-vit-l14-image,
                       oai-clip-vit-l14-text, dedup-isc-ft-v107-image]
additional_fields: [uid, url, caption, original_width, original_height, sha256]
nworkers: ${WORKERS:-2}
batch_size: ${BATCH:-64}
device: ${DEVICE:-0}
input_tars: "$pool/shards"
output_metadata_dir: "$out"
custom_pypath: ${CUSTOM:-null}
reprocess: false
use_datacomp_keys: true
EOF
  fi
  echo "== mode metadata --yml $yml -> $out"
  python -m mode metadata --yml "$yml"
  echo "== DataComp basic filter and CLIP L/14 score top 30% on it -> ${out%/}_basic.npy, ${out%/}_clip30.npy"
  python -m mode filter --name basic_filter --metadata-dir "$out" --save-path "${out%/}_basic.npy" \
    --fasttext-model packaged
  python -m mode filter --name clip_score --arch l14 --fraction 0.3 --metadata-dir "$out" \
    --save-path "${out%/}_clip30.npy"
}

case "${1:-}" in
  demo) shift; demo "$@" ;;
  prep-steps) shift; prep_steps "$@" ;;
  metadata) shift; metadata "$@" ;;
  *) echo "usage: $0 demo [OUT] | prep-steps SHARDS WORK_DIR [mode prep flags] | metadata POOL OUT" >&2; exit 2 ;;
esac
