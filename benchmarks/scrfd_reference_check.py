"""`mode.datacomp.scrfd` against dataset2metadata's own SCRFD-10G code, on the same random weights and inputs.

    python benchmarks/scrfd_reference_check.py [--d2m /path/to/dataset2metadata] [--repeat 5] [--rounds 2]
        [--threads N] [--seed 0]

`--d2m` is a checkout of mlfoundations/dataset2metadata (`git clone https://github.com/mlfoundations/
dataset2metadata`); without it, the mirror named by `--mirror` (a git dir) is extracted with `git archive HEAD`
into a temporary folder. Its `dataset2metadata.face_detection` runs unchanged: it needs only torch, torchvision and
numpy (no mmcv), so nothing is stubbed.

The reference is built by its own `scrfd_wrapper` from its MODEL_CONFIG / TEST_CFG, randomly initialised with a
fixed seed (BN running stats, BN/GN affine parameters and the head's scales randomised too; the cls conv scaled and
its bias shifted so that ~2% of the anchors score above 0.3, the reg bias raised so that boxes have positive
extents), saved as {"state_dict": ...} and loaded by both sides: the reference's `FaceDetector(path, device=-1)`,
ours `build_scrfd10g(state_dict)` (strict). Compared:
  - state_dict keys (in order) and shapes;
  - raw head outputs (cls logits, distances) per level, max abs diff;
  - `get_bboxes` vs `decode` (every NMS survivor above 0.02) and `detect_faces` vs `detect` (score > 0.3,
    rescaled to [0, 1]): per image the same count, values within 1e-5;
on: 4 x 224 x 224 (the input dataset2metadata feeds: square-padded, 4 paddings), 2 x 200 x 312 (feature maps
not multiples of the strides), 2 x 224 x 224 uint8, and `decode` alone on random head outputs of a 640 x 640 input
with 16800 anchors above 0.02 (mmdet's split NMS path, 10000+ candidates).
Timed: `detect` per 4 x 224 x 224 batch on CPU, each side in fresh processes (--rounds of them, alternating;
median of --repeat batches each after a warm-up; --threads torch threads, default torch's), with the largest
peak RSS of its processes.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import Timer, in_child, report  # common puts the repository on sys.path

MIRROR = Path("/work/.mirror/mlfoundations+dataset2metadata/repo")
TOL = 1e-5


def reference_checkout(args, tmp: Path) -> Path:
    if args.d2m:
        return Path(args.d2m).resolve()
    dest = tmp / "dataset2metadata"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(args.mirror), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def import_reference(path: Path):
    sys.path.insert(0, str(path))
    from dataset2metadata.face_detection import scrfd_wrapper

    return scrfd_wrapper


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=g)))
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.normal_(0, 0.1, generator=g)
        for i, s in enumerate(model.bbox_head.scales):
            s.scale.fill_(0.75 + 0.25 * i)
        model.bbox_head.stride_cls["0"].weight.mul_(8.0)
        model.bbox_head.stride_reg["0"].bias.add_(1.5)


def calibrate_cls_bias(model: torch.nn.Module, images: torch.Tensor, target: float = 0.02) -> float:
    """Shift the cls bias so that a fraction `target` of this batch's anchors score above 0.3."""
    with torch.no_grad():
        logits = torch.cat([c.flatten() for c in model.feature_test(images)[0]])
        shift = torch.logit(torch.tensor(0.3)).item() - torch.quantile(logits, 1 - target).item()
        model.bbox_head.stride_cls["0"].bias.add_(shift)
    return shift


def padded_batch(seed: int, size: tuple[int, int], originals: list[tuple[int, int]]):
    """Smooth random images (normalised to [-1, 1]) square-padded with white as dataset2metadata pads them
    (left/top get the floor of half), with the padding fractions (left, top, right, bottom)."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    images = torch.nn.functional.interpolate(torch.rand(len(originals), 3, H // 8, W // 8, generator=g) * 2 - 1,
                                             size=(H, W), mode="bilinear", align_corners=False)
    images = images + 0.1 * torch.randn(images.shape, generator=g)
    paddings = []
    for img, (w, h) in zip(images, originals):
        side = max(w, h)
        left, top = (side - w) // 2, (side - h) // 2
        pad = torch.tensor([left, top, side - w - left, side - h - top], dtype=torch.float32) / side
        x0, y0 = round(pad[0].item() * W), round(pad[1].item() * H)
        x1, y1 = W - round(pad[2].item() * W), H - round(pad[3].item() * H)
        mask = torch.ones(H, W, dtype=torch.bool)
        mask[y0:y1, x0:x1] = False
        img[:, mask] = 1.0
        paddings.append(pad)
    return images, torch.stack(paddings)


BATCH_224 = [(224, 224), (112, 224), (224, 150), (640, 203)]


def compare_boxes(a, b) -> tuple[bool, float, list[int]]:
    """Per-image lists (or tensors) of boxes: same counts, max abs diff."""
    counts, diff, same = [], 0.0, True
    for x, y in zip(a, b):
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        counts.append(len(x))
        if x.shape != y.shape:
            same = False
            continue
        if len(x):
            diff = max(diff, (x - y).abs().max().item())
    return same and diff <= TOL and len(a) == len(b), diff, counts


def check(args) -> bool:
    from mode.datacomp.scrfd import build_scrfd10g, decode, detect

    ref_mod = import_reference(Path(args.d2m))
    torch.manual_seed(args.seed)
    ref = ref_mod.SCRFD(ref_mod.MODEL_CONFIG["backbone"], ref_mod.MODEL_CONFIG["neck"],
                        ref_mod.MODEL_CONFIG["bbox_head"], test_cfg=ref_mod.TEST_CFG).eval()
    randomise(ref, args.seed)
    images, paddings = padded_batch(args.seed, (224, 224), BATCH_224)
    shift = calibrate_cls_bias(ref, images)
    torch.save({"state_dict": ref.state_dict()}, args.ckpt)

    detector = ref_mod.FaceDetector(str(args.ckpt), device=-1)  # the reference's own loading path
    ref = detector.model
    ours = build_scrfd10g(torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"])
    ref_keys = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    our_keys = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
    n_params = sum(p.numel() for p in ref.parameters())
    keys_ok = ref_keys == our_keys
    print(f"state_dict: {len(ref_keys)} keys (reference) vs {len(our_keys)} (ours), names/shapes/order identical: "
          f"{keys_ok}; {n_params} parameters; cls bias shifted by {shift:+.3f}")
    ok = keys_ok

    g = torch.Generator().manual_seed(args.seed + 1)
    odd_images, odd_pads = padded_batch(args.seed + 2, (200, 312), [(312, 200), (300, 180)])
    uint8 = (torch.rand(2, 3, 224, 224, generator=g) * 256).to(torch.uint8)
    cases = [("4 x 224 x 224, padded", images, paddings),
             ("2 x 200 x 312", odd_images, odd_pads),
             ("2 x 224 x 224 uint8", uint8, torch.tensor([[0.0, 0.1, 0.0, 0.2], [0.25, 0.0, 0.25, 0.0]]))]
    for name, x, pads in cases:
        with torch.no_grad():
            xf = x.float() / 255.0 if x.dtype == torch.uint8 else x
            r_cls, r_reg, _ = ref.feature_test(xf)
            o_cls, o_reg = ours(xf)
            raw = max((a - b).abs().max().item() for a, b in zip(r_cls + r_reg, o_cls + o_reg))
            hw = tuple(x.shape[-2:])
            metas = [{"img_shape": (*hw, 3), "scale_factor": 1}] * len(x)
            r_all = [d for d, _ in ref.bbox_head.get_bboxes(r_cls, r_reg, None, img_metas=metas)]
            o_all = decode(o_cls, o_reg, hw)
        all_ok, all_diff, all_counts = compare_boxes(r_all, o_all)
        r_det = detector.detect_faces(x, pads)
        o_det = detect(ours, x, pads)
        det_ok, det_diff, det_counts = compare_boxes(r_det, o_det)
        inside = all(0 <= v <= 1 for img in o_det for box in img for v in box)
        print(f"{name}: raw head outputs max abs diff {raw:.3g}; after NMS (> 0.02) counts {all_counts}, "
              f"equal {all_ok} (max diff {all_diff:.3g}); detect (> 0.3) counts {det_counts}, equal {det_ok} "
              f"(max diff {det_diff:.3g}), all in [0, 1]: {inside}")
        ok = ok and raw <= TOL and all_ok and det_ok and inside

    # decode alone, 640 x 640: 16800 anchors, nearly all above 0.02 (the split path of mmdet's batched_nms)
    cls = [torch.randn(1, 2, 640 // s, 640 // s, generator=g) for s in (8, 16, 32)]
    reg = [0.5 + torch.rand(1, 8, 640 // s, 640 // s, generator=g) * 3 for s in (8, 16, 32)]
    metas = [{"img_shape": (640, 640, 3), "scale_factor": 1}]
    r_all = [d for d, _ in ref.bbox_head.get_bboxes(cls, reg, None, img_metas=metas)]
    o_all = decode(cls, reg, (640, 640))
    n_cand = sum(int((c.sigmoid() > 0.02).sum()) for c in cls)
    split_ok, split_diff, split_counts = compare_boxes(r_all, o_all)
    order_ok = all(torch.equal(a, b) for a, b in zip(r_all, o_all))
    print(f"decode on 640 x 640 head outputs, {n_cand} candidates: kept {split_counts}, equal {split_ok} "
          f"(max diff {split_diff:.3g}, bitwise identical incl. order: {order_ok})")
    ok = ok and split_ok
    return ok


def child(args) -> None:
    """Time `detect` (ours) or `detect_faces` (the reference) on the 4 x 224 x 224 batch from the saved weights."""
    if args.threads:
        torch.set_num_threads(args.threads)
    images, paddings = padded_batch(args.seed, (224, 224), BATCH_224)
    if args.child == "ours":
        from mode.datacomp.scrfd import build_scrfd10g, detect

        model = build_scrfd10g(torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"])
        run = lambda: detect(model, images, paddings)  # noqa: E731
    else:
        ref_mod = import_reference(Path(args.d2m))
        detector = ref_mod.FaceDetector(str(args.ckpt), device=-1)
        run = lambda: detector.detect_faces(images, paddings)  # noqa: E731
    run()
    times = []
    for _ in range(args.repeat):
        with Timer() as t:
            boxes = run()
        times.append(t.seconds)
    report(times=times, boxes=sum(map(len, boxes)), threads=torch.get_num_threads())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d2m", help="a dataset2metadata checkout (default: extract --mirror with git archive)")
    parser.add_argument("--mirror", type=Path, default=MIRROR, help="a git dir of dataset2metadata")
    parser.add_argument("--repeat", type=int, default=5, help="timed batches per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per side, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the timed processes (0: torch's)")
    parser.add_argument("--child", choices=["ours", "ref"], help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        args.d2m = str(reference_checkout(args, Path(tmp)))
        args.ckpt = Path(tmp) / "scrfd_random.pt"
        ok = check(args)
        script = str(Path(__file__).resolve())
        common = ["--d2m", args.d2m, "--ckpt", str(args.ckpt), "--seed", str(args.seed), "--repeat", str(args.repeat),
                  "--threads", str(args.threads)]
        runs = {"ours": [], "ref": []}
        for i in range(args.rounds):  # alternating, so that a load that comes and goes hits both sides
            for side in ("ours", "ref") if i % 2 == 0 else ("ref", "ours"):
                runs[side].append(in_child(script, side, *common))
    res = {side: {"ms": round(1000 * statistics.median(t for run in rs for t in run["times"]), 1),
                  "peak_rss_mb": max(run["peak_rss_mb"] for run in rs), "boxes": rs[0]["boxes"]}
           for side, rs in runs.items()}
    o, r = res["ours"], res["ref"]
    print(f"detect per 4 x 224 x 224 batch (CPU, {runs['ours'][0]['threads']} threads, median of "
          f"{args.rounds} x {args.repeat}, one process per side and round): ours {o['ms']:.1f} ms, reference "
          f"{r['ms']:.1f} ms (ours / reference {o['ms'] / r['ms']:.2f}); peak RSS ours {o['peak_rss_mb']:.0f} MB, "
          f"reference {r['peak_rss_mb']:.0f} MB; boxes {o['boxes']} / {r['boxes']}")
    print(json.dumps({"equal": ok, "ours": o, "reference": r}))
    print("RESULT:", "identical" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
