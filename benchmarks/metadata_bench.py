"""`mode metadata` (CLIP B/32 score + features) against dataset2metadata's own `process(yml)`, run from a copy of
mlfoundations/dataset2metadata, and against the loop a user would write (webdataset decode + open_clip preprocess
and encode in a DataLoader), all with the same workers and batch size on the same shards.

    python -m venv d2m && d2m/bin/pip install torch torchvision fire fsspec numpy pandas Pillow pyarrow \
        pysimdjson PyYAML tqdm wandb webdataset detoxify timm ftfy regex packaging
    d2m/bin/pip install --no-deps git+https://github.com/openai/CLIP git+https://github.com/sagadre/ISC21-Descriptor-Track-1st
    python benchmarks/metadata_bench.py --d2m-python d2m/bin/python [--d2m CHECKOUT] [--samples 2000] [--shards 4]
        [--workers 2] [--batch-size 64] [--device cpu] [--repeats 2] [--no-plain]
    python benchmarks/metadata_bench.py --device cuda --samples 20000 --workers 8 --batch-size 256  # ours vs plain

(the venv holds dataset2metadata's requirements.txt; `clip` and `isc_feature_extractor` are git requirements,
installed from their repositories; `detoxify` and `isc_feature_extractor` are imported by its models.py though
the CLIP model does not use them). Without `--d2m` the mirror named by `--mirror` (a git dir) is extracted with
`git archive HEAD`; dataset2metadata runs from that copy (`PYTHONPATH=COPY python -m dataset2metadata.main --yml`)
with the yml of the same job: oai-clip-vit-b32, its score column, its image and text features, uid.

Every side is a whole process (imports, model build, decode, encode, writing the results) with the same
ViT-B-32-quickgelu weights: open_clip's random initialisation (seed 0) rounded to fp16 values (OpenAI's released
weights are fp16; dataset2metadata's `clip.load` rounds to fp16 when it builds the model, so unrounded weights
would differ between the sides), saved as a state dict for open_clip (ours, plain) and, for `clip.load`, as a
TorchScript archive of OpenAI's CLIP module built from that state dict, the form OpenAI's own downloads have, so
that `clip.load` takes the path it takes with OpenAI's file (JIT archive -> state_dict -> build_model). The
reference's code is unchanged: OpenAI's weights cannot be downloaded here, so its `custom_pypath` mechanism
registers `oai-clip-vit-b32` as its own wrapper class with the local archive's path instead of "ViT-B/32"
(marked PATCH below; same architecture, preprocessing, tokenizer and forward). Printed: samples/s of each side
per run, the ratios (dataset2metadata / ours, plain / ours: above 1 means ours is faster), each process's peak
RSS, and the outputs joined by uid (dataset2metadata writes one `<md5 of the tar list>.parquet/.npz` for the group,
ours one pair per shard): max abs difference of the score and of the image and text features.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

MIRROR = Path("/work/.mirror/mlfoundations+dataset2metadata/repo")

WEIGHTS = '''
import sys, torch, open_clip
torch.manual_seed(0)
model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
torch.save({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, sys.argv[1])
'''

# run by the reference's interpreter: OpenAI's CLIP module from the same state dict, as a TorchScript archive
REF_ARCHIVE = '''
import sys, warnings, torch
from clip import clip
from clip.model import build_model
sd = torch.load(sys.argv[1], map_location="cpu")
model = build_model(dict(sd)).float().eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.jit.save(torch.jit.trace(model, (torch.zeros(1, 3, 224, 224), clip.tokenize(["a"])), check_trace=False),
                   sys.argv[2])
    loaded, _ = clip.load(sys.argv[2], device="cpu")
same = all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
print(f"clip.load of the archive: {len(sd)} tensors, equal to the state dict: {same}")
sys.exit(0 if same else 1)
'''

CUSTOM = '''
from mode.datacomp import d2m


class LocalB32(d2m.OaiClipVitB32):
    pretrained = {weights!r}


model_lookup = {{"oai-clip-vit-b32": LocalB32}}
'''

# PATCH (through dataset2metadata's own custom_pypath, no source change): its OaiClipVitB32Wrapper with the local
# archive instead of "ViT-B/32" (which clip.load would download from OpenAI). Everything else is inherited.
REF_CUSTOM = '''
from dataset2metadata.models import OaiClipVitB32Wrapper, OaiClipWrapper


class LocalOaiClipVitB32Wrapper(OaiClipVitB32Wrapper):
    def __init__(self, device):
        OaiClipWrapper.__init__(self, {archive!r}, device)


model_lookup = {{"oai-clip-vit-b32": LocalOaiClipVitB32Wrapper}}
preprocessor_lookup = {{}}
postprocess_parquet_lookup = {{}}
postprocess_feature_lookup = {{}}
'''

PLAIN = '''
import sys, time
import numpy as np, torch, open_clip, webdataset as wds
t0 = time.perf_counter()
tars, out, device, weights = sys.argv[1].split("::"), sys.argv[2], sys.argv[5], sys.argv[6]
workers, batch = int(sys.argv[3]), int(sys.argv[4])
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=weights, device=device)
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

SCORE, IMAGE, TEXT = "oai-clip-vit-b32-score", "oai-clip-vit-b32-image", "oai-clip-vit-b32-text"


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, the largest of the process and its children) and stderr of one whole command."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:]); s = time.perf_counter() - t; "
               "print('BENCH', s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
               "sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("BENCH"))
    _, seconds, rss = line.split()
    return float(seconds), float(rss), out.stderr


def reference_copy(args, tmp: Path) -> Path:
    if args.d2m:
        return Path(args.d2m).resolve()
    dest = tmp / "dataset2metadata"
    dest.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(args.mirror), "archive", "HEAD"], capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def max_diff(a, b) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def compare(tmp: Path, tars: list[str], n: int, plain: bool, ref: bool = True) -> None:
    """The first run's outputs joined by uid: dataset2metadata's group parquet/npz vs ours per shard (and plain)."""
    import numpy as np
    import pyarrow.parquet as pq

    ours_cols = [pq.read_table(tmp / "ours0" / f"{Path(t).stem}.parquet").to_pydict() for t in tars]
    ours_feats = [np.load(tmp / "ours0" / f"{Path(t).stem}.npz") for t in tars]
    uids = [u for c in ours_cols for u in c["uid"]]
    ours_score = np.concatenate([c[SCORE] for c in ours_cols])
    ours_img = np.concatenate([f[IMAGE] for f in ours_feats])
    ours_txt = np.concatenate([f[TEXT] for f in ours_feats])
    if ref:
        compare_reference(tmp, tars, n, uids, ours_score, ours_img, ours_txt)
    if plain:
        loop = np.load(tmp / "plain0.npz")
        p_at = {u: i for i, u in enumerate(loop["uid"].tolist())}
        p_order = [p_at[u] for u in uids]
        print(f"plain vs ours, joined by uid: max abs diff score "
              f"{max_diff(loop['score'][p_order], ours_score):.2e}, image features "
              f"{max_diff(loop['img'][p_order], ours_img):.2e}")


def compare_reference(tmp, tars, n, uids, ours_score, ours_img, ours_txt) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    name = hashlib.md5(str(tars).encode()).hexdigest()  # dataset2metadata's name of the group
    ref_cols = pq.read_table(tmp / "d2m0" / f"{name}.parquet").to_pydict()
    ref_feats = np.load(tmp / "d2m0" / f"{name}.npz")
    at = {u: i for i, u in enumerate(ref_cols["uid"])}
    assert len(at) == len(ref_cols["uid"]) == len(uids) == n and set(at) == set(uids), "not the same samples"
    order = [at[u] for u in uids]
    ref_score = np.asarray(ref_cols[SCORE])[order]
    ref_img, ref_txt = ref_feats[IMAGE][order], ref_feats[TEXT][order]
    print(f"outputs, joined by uid ({n} samples, the same uids; dataset2metadata's {name}.parquet/.npz vs ours "
          f"per shard): max abs diff score {max_diff(ours_score, ref_score):.2e}, image features "
          f"{max_diff(ours_img, ref_img):.2e}, text features {max_diff(ours_txt, ref_txt):.2e}; dtypes "
          f"ours {ours_score.dtype}/{ours_img.dtype}, dataset2metadata {ref_score.dtype}/{ref_img.dtype}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or a CUDA index (as in the ymls)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--d2m", help="a dataset2metadata checkout (default: extract --mirror with git archive)")
    ap.add_argument("--mirror", type=Path, default=MIRROR, help="a git dir of dataset2metadata")
    ap.add_argument("--d2m-python", help="a Python with dataset2metadata's requirements (without it: ours vs the "
                    "plain loop only, e.g. on a GPU machine that cannot install them)")
    ap.add_argument("--no-plain", action="store_true", help="leave out the plain webdataset + open_clip loop")
    args = ap.parse_args()
    device = int(args.device) if args.device.isdigit() else args.device
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.d2m_python:
            if args.no_plain:
                raise SystemExit("--no-plain without --d2m-python leaves no baseline")
            print("no --d2m-python: dataset2metadata's side is left out; the baseline is the plain loop")
        d2m = reference_copy(args, tmp) if args.d2m_python else tmp
        ref_env = {**os.environ, "PYTHONPATH": str(d2m), "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
        subprocess.run([sys.executable, "-m", "mode", "toy", str(tmp / "pool"), "--samples", str(args.samples),
                        "--shards", str(args.shards), "--workers", "2"], check=True, env=env, capture_output=True)
        tars = sorted(str(p) for p in (tmp / "pool" / "shards").glob("*.tar"))
        weights, archive = tmp / "b32.pt", tmp / "b32_openai_jit.pt"
        subprocess.run([sys.executable, "-c", WEIGHTS, str(weights)], check=True, env=env, capture_output=True)
        if args.d2m_python:
            made = subprocess.run([args.d2m_python, "-c", REF_ARCHIVE, str(weights), str(archive)], env=ref_env,
                                  capture_output=True, text=True)
            if made.returncode != 0:
                raise RuntimeError(f"the reference's archive:\n{made.stdout}{made.stderr[-3000:]}")
            print(made.stdout.strip())
        (tmp / "custom.py").write_text(CUSTOM.format(weights=str(weights)))
        (tmp / "ref_custom.py").write_text(REF_CUSTOM.format(archive=str(archive)))
        (tmp / "plain.py").write_text(PLAIN)
        n = sum(json.loads(Path(t[:-4] + "_stats.json").read_text())["successes"] for t in tars)

        def run_ours(r):
            return timed([sys.executable, "-m", "mode", "metadata", "--models", "oai-clip-vit-b32",
                          "--postprocess-columns", SCORE, "--postprocess-features", f"{IMAGE},{TEXT}",
                          "--additional-fields", "uid", "--input-tars", "::".join(tars),
                          "--output-metadata-dir", str(tmp / f"ours{r}"), "--nworkers", str(args.workers),
                          "--batch-size", str(args.batch_size), "--device", args.device,
                          "--custom-pypath", str(tmp / "custom.py")], env)

        def run_ref(r):
            yml = {"models": ["oai-clip-vit-b32"], "postprocess_columns": [SCORE],
                   "postprocess_features": [IMAGE, TEXT], "additional_fields": ["uid"],
                   "nworkers": args.workers, "batch_size": args.batch_size, "device": device, "input_tars": tars,
                   "output_metadata_dir": str(tmp / f"d2m{r}"), "custom_pypath": str(tmp / "ref_custom.py"),
                   "reprocess": True}
            (tmp / f"d2m{r}.yml").write_text(json.dumps(yml))  # json is yml
            res = timed([args.d2m_python, "-m", "dataset2metadata.main", "--yml", str(tmp / f"d2m{r}.yml")], ref_env)
            if not list((tmp / f"d2m{r}").glob("*.npz")):  # its process() prints errors and exits 0
                raise RuntimeError(f"dataset2metadata wrote nothing:\n{res[2][-3000:]}")
            return res

        def run_plain(r):
            return timed([sys.executable, str(tmp / "plain.py"), "::".join(tars), str(tmp / f"plain{r}.npz"),
                          str(args.workers), str(args.batch_size), args.device, str(weights)], env)

        sides = {"dataset2metadata": run_ref, "ours": run_ours} if args.d2m_python else {"ours": run_ours}
        if not args.no_plain:
            sides["plain"] = run_plain
        runs = {s: [] for s in sides}
        for r in range(args.repeats):  # the order rotates, so that a load that comes and goes hits every side
            names = list(sides)
            for s in names[r % len(names):] + names[:r % len(names)]:
                runs[s].append(sides[s](r)[:2])
            cells = ", ".join(f"{s} {n / runs[s][r][0]:.1f} samples/s ({runs[s][r][0]:.1f} s, {runs[s][r][1]:.0f} MB)"
                              for s in sides)
            ratios = ", ".join(f"{s} / ours {runs[s][r][0] / runs['ours'][r][0]:.2f}" for s in sides if s != "ours")
            print(f"run {r}: {cells}; {ratios}", flush=True)
            if r == 0:
                compare(tmp, tars, n, plain="plain" in sides, ref="dataset2metadata" in sides)

        med = {s: statistics.median(t for t, _ in rs) for s, rs in runs.items()}
        ratio = {s: statistics.median(runs[s][r][0] / runs["ours"][r][0] for r in range(args.repeats))
                 for s in sides if s != "ours"}
        print(f"{n} samples, {args.shards} shards, {args.workers} workers, batch {args.batch_size}, {args.device}: "
              + ", ".join(f"{s} / ours = {v:.2f}x" for s, v in ratio.items()) + f" (median of {args.repeats}; "
              + ", ".join(f"{s} {n / med[s]:.1f} samples/s, peak RSS {max(m for _, m in runs[s]):.0f} MB"
                          for s in sides) + ")")


if __name__ == "__main__":
    main()
