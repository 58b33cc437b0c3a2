"""`mode metadata` (CLIP B/32 score + features) vs the loop a user would write: webdataset decode + open_clip
preprocess and encode, in a DataLoader with the same workers and batch size, on the same shards.

Both sides are whole processes (imports, model build, decode, encode, writing the results) with the same
ViT-B-32-quickgelu, randomly initialised (OpenAI's weights cost the same to run), on the same device. Prints
samples/s of each, the ratio (ours / plain) and each process's peak RSS.

    python benchmarks/metadata_bench.py [--samples 2000] [--shards 4] [--workers 2] [--batch-size 64] [--device cpu]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

CUSTOM = '''
import torch
from mode.datacomp import d2m


class RandomB32(d2m.OaiClipVitB32):
    pretrained = None

    def __init__(self, device):
        torch.manual_seed(0)
        super().__init__(device)


model_lookup = {"oai-clip-vit-b32": RandomB32}
'''

PLAIN = '''
import sys, time, resource
import numpy as np, torch, open_clip, webdataset as wds
t0 = time.perf_counter()
tars, out, device = sys.argv[1].split("::"), sys.argv[2], sys.argv[5]
workers, batch = int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None, device=device)
model.eval()
tok = open_clip.get_tokenizer("ViT-B-32-quickgelu")
ds = (wds.WebDataset(tars, shardshuffle=False).decode("pilrgb").to_tuple("jpg;png;webp", "txt", "json")
      .map_tuple(preprocess, lambda t: tok([t])[0], lambda j: j["uid"]))
loader = torch.utils.data.DataLoader(ds.batched(batch), batch_size=None, num_workers=workers)
scores, imgs, txts, uids = [], [], [], []
with torch.inference_mode():
    for x, t, u in loader:
        i = model.encode_image(x.to(device)); i = i / i.norm(dim=1, keepdim=True)
        c = model.encode_text(t.to(device)); c = c / c.norm(dim=1, keepdim=True)
        scores.append((i * c).sum(1).cpu()); imgs.append(i.cpu()); txts.append(c.cpu()); uids += list(u)
np.savez(out, score=torch.cat(scores).numpy(), img=torch.cat(imgs).numpy(), txt=torch.cat(txts).numpy(),
         uid=np.array(uids))
print(len(uids), time.perf_counter() - t0)
'''


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, the process and its children) of one whole command."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:]); s = time.perf_counter() - t; "
               "print('BENCH', s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
               "sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("BENCH"))
    _, seconds, rss = line.split()
    return float(seconds), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "mode", "toy", str(tmp / "pool"), "--samples", str(args.samples),
                        "--shards", str(args.shards), "--workers", "2"], check=True, env=env, capture_output=True)
        tars = sorted(str(p) for p in (tmp / "pool" / "shards").glob("*.tar"))
        (tmp / "custom.py").write_text(CUSTOM)
        (tmp / "plain.py").write_text(PLAIN)
        n = sum(json.loads(Path(t[:-4] + "_stats.json").read_text())["successes"] for t in tars)
        rows = []
        for r in range(args.repeats):
            plain = timed([sys.executable, str(tmp / "plain.py"), "::".join(tars), str(tmp / f"plain{r}.npz"),
                           str(args.workers), str(args.batch_size), args.device], env)
            ours = timed([sys.executable, "-m", "mode", "metadata", "--models", "oai-clip-vit-b32",
                          "--postprocess-columns", "oai-clip-vit-b32-score", "--postprocess-features",
                          "oai-clip-vit-b32-image,oai-clip-vit-b32-text", "--additional-fields", "uid",
                          "--input-tars", "::".join(tars), "--output-metadata-dir", str(tmp / f"ours{r}"),
                          "--nworkers", str(args.workers), "--batch-size", str(args.batch_size), "--device",
                          args.device, "--custom-pypath", str(tmp / "custom.py")], env)
            rows.append((plain, ours))
            print(f"run {r}: plain {n / plain[0]:.1f} samples/s ({plain[0]:.1f} s, {plain[1]:.0f} MB), ours "
                  f"{n / ours[0]:.1f} samples/s ({ours[0]:.1f} s, {ours[1]:.0f} MB): ratio {plain[0] / ours[0]:.2f}",
                  flush=True)
        import numpy as np
        import pyarrow.parquet as pq

        ref = np.load(tmp / "plain0.npz")
        got = np.concatenate([pq.read_table(tmp / "ours0" / f"{Path(t).stem}.parquet")
                              .column("oai-clip-vit-b32-score").to_numpy() for t in tars])
        print(f"same scores: max abs diff {np.abs(np.sort(ref['score']) - np.sort(got)).max():.2e} over {n} samples")
        med = sorted(p[0] / o[0] for p, o in rows)[len(rows) // 2]
        print(f"{n} samples, {args.shards} shards, {args.workers} workers, batch {args.batch_size}, {args.device}: "
              f"ours / plain = {med:.2f}x (median of {len(rows)})")


if __name__ == "__main__":
    main()
