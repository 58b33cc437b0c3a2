"""`mode dr-generate`: reinforce a pool's shards with frozen teachers, in DataCompDR's format.

For every sample of every input shard: `--num-augs` image augmentations drawn by `dr.transforms` (their
parameters stored in `<key>.paug.json`), `--num-syn` synthetic captions (`<key>.syn.json`), and the teachers'
L2-normalised embeddings of each augmented image and of the caption and each synthetic caption, concatenated
over teachers (`<key>.npz` float32 or `<key>.pth.gz` bfloat16). Output shards keep the input's names and, unless
`--only-reinforcements` (DataCompDR's own layout, merged back by `mode dr-join`), its members too, but for those
that webdataset's default decoders would unpickle (`.pyd`, `.pickle`, `.pth`; counted as `dropped_members`).

Teachers are any open_clip models, `NAME[:PRETRAINED]` (a tag or a checkpoint path); only the plugin's toy models
(`ViT-Toy-*`) may go without weights, initialised from `--seed` (the toy's case: the path runs offline); another
teacher without weights is refused (it would be a random model). Captioners:
- `toy`: rewrites each toy sample's true class with other caption templates of its domain (offline; toy pools);
- `coca:MODEL:PRETRAINED`: open_clip CoCa generation with top-p sampling, as DataCompDR used CoCa captions.

Per-shard, resumable and shardable like the prep steps (`mode.core.runner`): `--rank/--world-size`, atomic shards,
`<shard>_stats.json` beside each output tar (so `--data-dir` knows the sizes), stats and summary in
`<out>/_dr_generate/`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from dr import sample as drs
from mode.core.device import pick_device
from mode.core.errors import UserError
from mode.core.runner import inputs_hash, run_per_shard
from mode.core.shards import IMAGE_EXTS, expand, iter_tar, tar_stats, tar_writer, write_tar_stats
from mode.core.step import positive_int, print_summary, rank_arguments, seed_int

TOY_PREFIX = "ViT-Toy-"  # the plugin's tiny model configs: the only teachers that may run without weights


@dataclass(frozen=True)
class GenerateConfig:
    teachers: tuple[str, ...] = ("ViT-Toy-8",)
    augmentation: str = "dr_augment_12m"
    num_augs: int | None = None  # default: the augmentation config's count
    num_syn: int = 5
    captioner: str = "toy"
    fmt: str = "npz"
    only_reinforcements: bool = False
    seed: int = 0
    device: str = "cpu"


class Teacher:
    """A frozen open_clip model giving normalised image and text embeddings."""

    def __init__(self, spec: str, seed: int, device: str):
        import open_clip

        import open_clip_patch

        open_clip_patch.apply()  # registers the tiny model configs
        name, _, pretrained = spec.partition(":")
        with torch.random.fork_rng(devices=[]):  # seeds the weights without touching the caller's stream
            torch.manual_seed(seed)
            try:
                self.model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained or None, device=device)
            except RuntimeError as e:
                raise UserError(f"teacher {spec!r}: {e}") from None
        self.model.eval().requires_grad_(False)
        self.tokenizer, self.device = open_clip.get_tokenizer(name), device
        norm = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
        self.mean = torch.tensor(norm.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
        self.size = self.model.visual.image_size
        self.size = tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size, self.size)
        self.dim = self.model.text_projection.shape[1] if hasattr(self.model, "text_projection") else None

    @torch.no_grad()
    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings of unnormalised [n, 3, h, w] pixels in [0, 1], resized to the teacher's input."""
        x = pixels.to(self.device)
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bicubic", antialias=True).clamp(0, 1)
        return torch.nn.functional.normalize(self.model.encode_image((x - self.mean) / self.std).float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)


@lru_cache(maxsize=1)
def _setup(cfg: GenerateConfig):
    from dr.transforms import from_config, load_config

    aug_cfg = load_config(cfg.augmentation)
    transforms = from_config(aug_cfg)
    teachers = [Teacher(t, cfg.seed, cfg.device) for t in cfg.teachers]
    return transforms, teachers, _captioner(cfg.captioner, cfg.device)


def check_captioner(spec: str) -> None:
    """`toy`, or `coca:MODEL:PRETRAINED` naming an open_clip CoCa model and a tag of it or a file; else one line."""
    if spec == "toy":
        return
    kind, model, pretrained = (spec.split(":", 2) + ["", ""])[:3]
    if kind != "coca" or not model or not pretrained:
        raise UserError(f"--captioner {spec!r}: expected toy or coca:MODEL:PRETRAINED")
    import open_clip

    if not model.startswith("coca") or model not in open_clip.list_models():
        coca = [m for m in open_clip.list_models() if m.startswith("coca")]
        raise UserError(f"--captioner {spec!r}: {model!r} is not an open_clip CoCa model ({', '.join(coca)})")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags and not Path(pretrained).is_file():
        raise UserError(f"--captioner {spec!r}: {pretrained!r} is neither a tag of {model} "
                        f"({', '.join(tags) or 'none'}) nor a checkpoint file")


def _captioner(spec: str, device: str):
    check_captioner(spec)
    if spec == "toy":
        return toy_captions
    return CocaCaptioner(*spec.split(":", 2)[1:], device=device)


def toy_captions(image, meta: dict, n: int, rng: np.random.Generator) -> list[str]:
    """Captions of a toy sample's true content from its domain's templates (what a captioner would see)."""
    from mode.toy.pool import DOMAIN_BY_NAME

    if "toy_domain" not in meta:
        raise UserError("--captioner toy needs toy samples (a json with toy_domain); use coca:MODEL:PRETRAINED")
    domain = DOMAIN_BY_NAME[meta["toy_domain"]]
    picks = rng.choice(len(domain.captions), size=n, replace=n > len(domain.captions))
    return [" ".join(domain.captions[i].format(cls=meta["toy_class"], color="colored", bg="plain").split())
            for i in picks]


class CocaCaptioner:
    """Synthetic captions from an open_clip CoCa model, sampled with top-p for variety."""

    def __init__(self, model: str, pretrained: str, device: str):
        import open_clip

        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained,
                                                                                   device=device)
        except RuntimeError as e:  # e.g. a checkpoint of another model
            raise UserError(f"--captioner coca:{model}:{pretrained}: {e}") from None
        self.model.eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, image, meta: dict, n: int, rng: np.random.Generator) -> list[str]:
        import open_clip

        torch.manual_seed(int(rng.integers(2**31)))
        x = self.preprocess(image).unsqueeze(0).repeat(n, 1, 1, 1).to(self.device)
        out = self.model.generate(x, generation_type="top_p", top_p=0.9)
        return [open_clip.decode(t).split("<end_of_text>")[0].replace("<start_of_text>", "").strip() for t in out]


def reinforce(image, caption: str, meta: dict, cfg: GenerateConfig, rng: np.random.Generator) -> dict[str, bytes]:
    """The three reinforcement members of one sample."""
    transforms, teachers, captioner = _setup(cfg)
    n_aug = cfg.num_augs or transforms.num_augmentations
    entries, pixels = [], []
    for _ in range(n_aug):
        tensor, entry = transforms.apply(image)
        entries.append(entry)
        pixels.append(transforms.unnormalize(tensor))
    syn = captioner(image, meta, cfg.num_syn, rng)
    pixels = torch.stack(pixels)
    embs = {drs.IMAGE_EMB: torch.cat([t.images(pixels) for t in teachers], dim=1).cpu().numpy(),
            drs.TEXT_EMB: torch.cat([t.texts([caption, *syn]) for t in teachers], dim=1).cpu().numpy()}
    return {drs.SYN_MEMBER: drs.encode_syn(syn), drs.PAUG_MEMBER: drs.encode_paug(entries),
            cfg.fmt: drs.encode_embeddings(embs, cfg.fmt)}


def _work(cfg: GenerateConfig, out_dir: str, path: str, shard_id: str) -> dict:
    from PIL import Image

    skipped: Counter = Counter()
    name = f"{shard_id}.tar"  # distinct even where two joined pools share a file name
    written = dropped = 0
    _setup(cfg)  # models first: building them draws from torch's generator, which is seeded for the shard next
    shard_seed = [cfg.seed, int.from_bytes(hashlib.sha256(shard_id.encode()).digest()[:8], "little")]
    torch.manual_seed(int(np.random.SeedSequence(shard_seed).generate_state(1, np.uint64)[0] >> 1))  # the transforms
    rng = np.random.default_rng(shard_seed)  # draw from torch's generator, the captions from this: both per shard
    with tar_writer(Path(out_dir) / name) as sink:
        for key, members in iter_tar(path, skipped):
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None or "txt" not in members:
                skipped["no_image_or_caption"] += 1
                continue
            try:
                image = Image.open(io.BytesIO(members[ext])).convert("RGB")
                meta = json.loads(members["json"]) if "json" in members else {}
            except (OSError, ValueError):
                skipped["undecodable"] += 1
                continue
            extra = reinforce(image, members["txt"].decode("utf-8"), meta, cfg, rng)
            kept = {}
            if not cfg.only_reinforcements:
                kept = {e: d for e, d in members.items() if not pickled(e)}
                dropped += len(members) - len(kept)
            sink.write(key, {**kept, **extra})
            written += 1
    write_tar_stats(Path(out_dir) / name, written)
    return {"processed": written + sum(skipped.values()), "kept": written, "skipped": dict(skipped),
            "dropped_members": dropped}


def pickled(ext: str) -> bool:
    """Whether webdataset's default decoders unpickle a member (`.pyd`, `.pickle`, `.pth`, gzipped or not)."""
    return ext.lower().removesuffix(".gz").rsplit(".", 1)[-1] in ("pyd", "pickle", "pth")


def run(shards: str, out: str, cfg: GenerateConfig, rank: int | None = None, world_size: int | None = None,
        workers: int = 1) -> dict:
    """Reinforce this rank's shards of `shards` into `out`; return the step summary."""
    if cfg.fmt not in drs.EMBEDDING_FORMATS:
        raise UserError(f"--format {cfg.fmt!r}: expected one of {', '.join(drs.EMBEDDING_FORMATS)}")
    if cfg.num_syn < 1:
        raise UserError("--num-syn must be at least 1")
    check_captioner(cfg.captioner)  # before any work: a bad one was a traceback in the first shard
    import open_clip

    import open_clip_patch

    open_clip_patch.apply()  # registers the toy model configs
    for spec in cfg.teachers:
        name, _, pretrained = spec.partition(":")
        if name not in open_clip.list_models() and not name.startswith("hf-hub"):
            raise UserError(f"--teacher {spec}: no open_clip model {name!r} (`python -c 'import open_clip; "
                            "print(open_clip.list_models())'` lists them)")
        if not pretrained and not name.startswith(TOY_PREFIX):
            raise UserError(f"--teacher {spec}: no pretrained weights (give MODEL:TAG or MODEL:CHECKPOINT); a "
                            f"randomly initialised teacher teaches nothing (only the toy's {TOY_PREFIX}* models "
                            "run without weights, seeded by --seed)")
    out_dir, paths = Path(out), expand(shards)
    params = asdict(cfg) | {"shards": inputs_hash(paths), "format_version": 2}
    cfg = replace(cfg, device=pick_device(cfg.device))  # checked now; `auto` resolved for this rank
    return run_per_shard("dr-generate", out_dir / "_dr_generate", paths, partial(_work, cfg, str(out_dir)),
                         params, rank=rank, world_size=world_size, workers=workers,
                         outputs=lambda i: [out_dir / f"{i}.tar", tar_stats(out_dir / f"{i}.tar")],
                         hint="use another --out, or delete that folder")


# --------------------------------------------------------------------------------------- `mode dr-generate`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", required=True, metavar="SPEC", help="input shards: dir, brace pattern, '::' list")
    p.add_argument("--out", required=True, help="output directory (shards keep their names)")
    p.add_argument("--teacher", action="append", metavar="MODEL[:PRETRAINED]",
                   help="an open_clip teacher (repeat for several; default ViT-Toy-8, initialised from --seed)")
    p.add_argument("--augmentation", default="dr_augment_12m", help="augmentation config: configs/ name or path")
    p.add_argument("--num-augs", type=positive_int, default=None,
                   help="augmentations per image (default: the config's)")
    p.add_argument("--num-syn", type=positive_int, default=5, help="synthetic captions per sample")
    p.add_argument("--captioner", default="toy", help="toy, or coca:MODEL:PRETRAINED")
    p.add_argument("--format", choices=drs.EMBEDDING_FORMATS, default="npz", help="npz float32 or pth.gz bfloat16")
    p.add_argument("--only-reinforcements", action="store_true",
                   help="write only the reinforcement members (DataCompDR's layout; then `mode dr-join`)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="cpu")
    rank_arguments(p)
    p.add_argument("--workers", type=positive_int, default=1)


def main(args: argparse.Namespace) -> None:
    cfg = GenerateConfig(teachers=tuple(args.teacher or ["ViT-Toy-8"]), augmentation=args.augmentation,
                         num_augs=args.num_augs, num_syn=args.num_syn, captioner=args.captioner, fmt=args.format,
                         only_reinforcements=args.only_reinforcements, seed=args.seed, device=args.device)
    print_summary(run(args.shards, args.out, cfg, args.rank, args.world_size, args.workers))
