"""A randomly initialised copy of a sentence-transformers BERT model: same config, tokenizer and pooling, new
weights. For timing the embed step where the trained weights cannot travel (all-MiniLM-L6-v2's are 90 MB): the
cost of encoding depends on the architecture and the tokenizer, not on the weights.

    python benchmarks/random_encoder.py SRC DST [--no-weights]

Copies every file of the model folder SRC but its weights (*.safetensors, *.bin, onnx/, openvino/) to DST, then
writes DST/model.safetensors: `AutoModel.from_config(AutoConfig.from_pretrained(SRC))`, seeded. With
`--no-weights` only the small files are copied (to carry them elsewhere; run again there to add weights).
"""

import argparse
import shutil
from pathlib import Path

WEIGHTS = (".safetensors", ".bin", ".h5", ".msgpack", ".ot")
SKIP_DIRS = ("onnx", "openvino")


def copy_small_files(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_dir() or p.suffix in WEIGHTS or rel.parts[0] in SKIP_DIRS or p.name in ("README.md", ".gitattributes"):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst / rel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--no-weights", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    if src.resolve() != dst.resolve():
        copy_small_files(src, dst)
    if a.no_weights:
        return
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(a.seed)
    config = AutoConfig.from_pretrained(src)
    model = AutoModel.from_config(config)
    model.save_pretrained(dst, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"{dst}: random {config.model_type} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, vocab {config.vocab_size}), "
          f"{n / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
