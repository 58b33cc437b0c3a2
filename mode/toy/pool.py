"""The embedded toy pool: a small DataComp-layout pool drawn with PIL, the default data of the demo and tests.

Three domains (shapes, glyphs, textures) each have their own classes, caption vocabulary and evaluation task.
Captions name what the image shows, so a tiny CLIP learns them in seconds and a caption clustering finds the
domains. A share of the pool carries the noise DataComp's baseline filters look for, one kind per sample:

    mismatched      the caption describes another sample; low CLIP-score columns
    non_english     a French, German or Spanish caption
    short_caption   one or two words
    small_image     original shorter side below 200 px
    extreme_aspect  original aspect ratio above 3

plus rows that are in the metadata but "failed to download" (absent from the shards, as in DataComp).
Every sample's truth (`toy_domain`, `toy_class`, `toy_noise`, `toy_text_domain`, `toy_downloaded`) is in its
json member and its parquet row, so filters and clusterings can be scored against it.

Content depends only on the seed and the sample index: the same seed gives byte-identical files for any
number of workers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from mode.core.errors import UserError
from mode.core.layout import EvalTask, Pool, shard_name
from mode.core.parallel import pool_map
from mode.core.runner import run_global
from mode.core.shards import atomic_write, write_json, write_tar
from mode.core.step import positive_int, seed_int

TOY_VERSION = 1
STORED_MAX_SIDE = 96  # as img2dataset's keep_ratio_largest resize in DataComp (512 there)
EVAL_SIDE = 96
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
          "purple": (140, 50, 180), "orange": (245, 130, 20), "black": (25, 25, 25)}
BACKGROUNDS = {"white": (250, 250, 250), "grey": (170, 170, 170), "beige": (235, 222, 190),
               "light blue": (190, 215, 245)}
NOISE_RATES = {"mismatched": 0.08, "non_english": 0.05, "short_caption": 0.04, "small_image": 0.04,
               "extreme_aspect": 0.03}
NOT_DOWNLOADED_RATE = 0.02
FEATURE_DIMS = {"b32": 512, "l14": 768}


@dataclass(frozen=True)
class Domain:
    """One toy domain: its classes, how captions and eval prompts name them, and how it is drawn."""

    name: str
    weight: float
    classes: tuple[str, ...]
    captions: tuple[str, ...]  # English caption templates with {cls}, {color}, {bg}
    templates: tuple[str, ...]  # zero-shot templates with {c}, as clip_benchmark writes them
    foreign: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return f"toy_{self.name}"


GLYPHS = {"digit two": "2", "digit three": "3", "digit five": "5", "digit seven": "7",
          "letter A": "A", "letter K": "K", "letter R": "R", "letter X": "X"}

DOMAINS = (
    Domain(
        "shapes", 0.40,
        ("circle", "square", "triangle", "star", "hexagon", "cross"),
        ("a {color} {cls} shape drawn on a {bg} background",
         "a photo of a {color} {cls} shape in the middle of the picture",
         "simple flat illustration of a {color} geometric {cls}",
         "clip art showing one {color} {cls} shape",
         "a big {color} geometric {cls} on a plain {bg} canvas"),
        ("a photo of a {c}.", "a drawing of a {c}.", "a {c} shape.", "clip art of a {c}."),
        {"fr": ("une forme géométrique colorée dessinée sur un fond uni",
                "un dessin simple d'une figure colorée au centre de l'image"),
         "de": ("eine bunte geometrische Form auf einem einfarbigen Hintergrund",
                "eine einfache Zeichnung einer farbigen Figur in der Mitte des Bildes"),
         "es": ("una forma geométrica de color dibujada sobre un fondo liso",
                "un dibujo sencillo de una figura de colores en el centro de la imagen")}),
    Domain(
        "glyphs", 0.35,
        tuple(GLYPHS),
        ("the {cls} printed in {color} ink on {bg} paper",
         "a sign showing the {cls} in a bold {color} font",
         "close-up photo of the {cls} written in {color}",
         "typography poster with a large {color} {cls}",
         "the {cls} in {color} on a {bg} card"),
        ("a photo of the {c}.", "the {c} printed on paper.", "a sign with the {c}."),
        {"fr": ("un chiffre ou une lettre imprimé en couleur sur une feuille de papier",
                "une affiche avec un grand caractère écrit à l'encre de couleur"),
         "de": ("eine Ziffer oder ein Buchstabe in farbiger Tinte auf einem Blatt Papier",
                "ein Schild mit einem großen Zeichen in einer kräftigen Schrift"),
         "es": ("un número o una letra impresa en color sobre una hoja de papel",
                "un cartel con un carácter grande escrito con tinta de color")}),
    Domain(
        "textures", 0.25,
        ("stripes", "checkerboard", "polka dots", "waves", "grid", "concentric rings"),
        ("a fabric texture with {color} {cls}",
         "seamless repeating pattern of {color} {cls}",
         "close-up of a wallpaper pattern covered in {color} {cls}",
         "an abstract texture made of {color} {cls}",
         "a tiled surface texture with {color} {cls}"),
        ("a photo of a {c} pattern.", "a texture of {c}.", "a fabric with {c}."),
        {"fr": ("un motif répétitif imprimé sur un tissu de couleur",
                "une texture de papier peint avec un dessin qui se répète"),
         "de": ("ein sich wiederholendes Muster auf einem farbigen Stoff",
                "eine Tapete mit einem regelmäßigen Muster aus Linien und Punkten"),
         "es": ("un patrón repetido estampado sobre una tela de color",
                "una textura de papel pintado con un dibujo que se repite")}),
)
DOMAIN_BY_NAME = {d.name: d for d in DOMAINS}


# ---------------------------------------------------------------------------------------------- drawing

def _polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    for k in range(n * (2 if inner else 1)):
        rad = (inner if inner and k % 2 else 1.0) * r
        a = rot + 2 * math.pi * k / (n * (2 if inner else 1)) - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(draw, w, h, cls, rng, fg):
    s = min(w, h)
    r = s * rng.uniform(0.28, 0.42)
    cx, cy = w / 2 + rng.uniform(-0.08, 0.08) * s, h / 2 + rng.uniform(-0.08, 0.08) * s
    rot = math.radians(rng.uniform(-12, 12))
    if cls == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cls == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, rot + math.pi / 4), fill=fg)
    elif cls == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.15, 3, rot), fill=fg)
    elif cls == "star":
        draw.polygon(_polygon(cx, cy, r * 1.2, 5, rot, inner=0.45), fill=fg)
    elif cls == "hexagon":
        draw.polygon(_polygon(cx, cy, r * 1.1, 6, rot), fill=fg)
    elif cls == "cross":
        t = r * 0.38
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)


@lru_cache(maxsize=64)
def _font(size: int):
    return ImageFont.load_default(size=max(6, size))


def _draw_glyph(draw, w, h, cls, rng, fg):
    s = min(w, h)
    cx, cy = w / 2 + rng.uniform(-0.06, 0.06) * s, h / 2 + rng.uniform(-0.06, 0.06) * s
    draw.text((cx, cy), GLYPHS[cls], fill=fg, font=_font(int(s * rng.uniform(0.65, 0.85))), anchor="mm")


def _draw_texture(draw, w, h, cls, rng, fg):
    p = max(4, int(min(w, h) * rng.uniform(0.10, 0.18)))
    if cls == "stripes":
        vertical = rng.random() < 0.5
        for x in range(0, (w if vertical else h), p):
            box = [x, 0, x + p // 2, h] if vertical else [0, x, w, x + p // 2]
            draw.rectangle(box, fill=fg)
    elif cls == "checkerboard":
        for i, y in enumerate(range(0, h, p)):
            for j, x in enumerate(range(0, w, p)):
                if (i + j) % 2 == 0:
                    draw.rectangle([x, y, x + p - 1, y + p - 1], fill=fg)
    elif cls == "polka dots":
        r = p * 0.3
        for y in range(p // 2, h + p, p):
            for x in range(p // 2, w + p, p):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fg)
    elif cls == "waves":
        amp, width = p * 0.35, max(2, p // 4)
        for y0 in range(0, h + p, p):
            pts = [(x, y0 + amp * math.sin(2 * math.pi * x / (2 * p))) for x in range(0, w + 2, 2)]
            draw.line(pts, fill=fg, width=width)
    elif cls == "grid":
        width = max(1, p // 5)
        for x in range(0, w, p):
            draw.line([(x, 0), (x, h)], fill=fg, width=width)
        for y in range(0, h, p):
            draw.line([(0, y), (w, y)], fill=fg, width=width)
    elif cls == "concentric rings":
        cx, cy, width = w / 2, h / 2, max(2, p // 3)
        for r in range(p // 2, int(math.hypot(w, h) / 2) + p, p):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=width)


_DRAW = {"shapes": _draw_shape, "glyphs": _draw_glyph, "textures": _draw_texture}


def draw_image(domain: str, cls: str, width: int, height: int, fg: str, bg: str, seed: list[int]) -> Image.Image:
    """Draw one image of `cls` from `domain`, `width` x `height`, deterministic for `seed`."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), BACKGROUNDS[bg])
    _DRAW[domain](ImageDraw.Draw(img), width, height, cls, rng, COLORS[fg])
    return img


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- planning

def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def plan_sample(seed: int, index: int) -> dict:
    """Decide everything about pool sample `index` except its pixels: truth, caption, sizes, scores, uid."""
    rng = np.random.default_rng([seed, index])
    weights = np.array([d.weight for d in DOMAINS])
    domain = DOMAINS[int(rng.choice(len(DOMAINS), p=weights / weights.sum()))]
    cls = _pick(rng, domain.classes)
    fg, bg = _pick(rng, list(COLORS)), _pick(rng, list(BACKGROUNDS))
    u = rng.random()
    noise = "clean"
    for kind, rate in NOISE_RATES.items():
        if u < rate:
            noise = kind
            break
        u -= rate
    downloaded = bool(rng.random() >= NOT_DOWNLOADED_RATE)

    side = rng.uniform(256, 1024)
    aspect = rng.uniform(0.6, 1.8)
    if noise == "small_image":
        side = rng.uniform(64, 180)
    elif noise == "extreme_aspect":
        aspect = rng.uniform(3.5, 6.0) * (1 if rng.random() < 0.5 else -1)
    ratio = abs(aspect) if aspect > 0 else 1 / abs(aspect)
    ow, oh = (int(side * ratio), int(side)) if ratio >= 1 else (int(side), int(side / ratio))

    text_domain, text_cls = domain, cls
    if noise == "mismatched":
        text_domain = DOMAINS[int(rng.integers(len(DOMAINS)))]
        text_cls = _pick(rng, [c for c in text_domain.classes if c != cls])
    text_fg = _pick(rng, list(COLORS)) if noise == "mismatched" else fg
    if noise == "non_english":
        lang = _pick(rng, sorted(domain.foreign))
        caption = _pick(rng, domain.foreign[lang])
    elif noise == "short_caption":
        word = text_cls.split()[-1]
        caption = word if rng.random() < 0.5 else f"{text_fg} {word}"
    else:
        caption = _pick(rng, text_domain.captions).format(cls=text_cls, color=text_fg, bg=bg)

    b32 = rng.uniform(0.02, 0.16) if noise == "mismatched" else rng.uniform(0.22, 0.40)
    l14 = b32 - 0.04 + rng.uniform(-0.01, 0.01)
    uid = rng.bytes(16).hex()
    return {
        "uid": uid, "url": f"http://images.toy-pool.invalid/{domain.name}/{uid}.jpg", "text": caption,
        "original_width": ow, "original_height": oh,
        "clip_b32_similarity_score": float(b32), "clip_l14_similarity_score": float(l14),
        "face_bboxes": [], "toy_domain": domain.name, "toy_class": cls, "toy_noise": noise,
        "toy_text_domain": "unknown" if noise == "non_english" else text_domain.name,
        "toy_downloaded": downloaded, "fg": fg, "bg": bg, "index": index,
    }


def stored_size(ow: int, oh: int, max_side: int = STORED_MAX_SIDE) -> tuple[int, int]:
    """The downloaded size: the original shrunk so its longer side is at most `max_side` (keep ratio)."""
    scale = min(1.0, max_side / max(ow, oh))
    return max(1, round(ow * scale)), max(1, round(oh * scale))


def render(seed: int, row: dict) -> tuple[bytes, int, int]:
    """JPEG bytes and stored size of a planned sample."""
    w, h = stored_size(row["original_width"], row["original_height"])
    img = draw_image(row["toy_domain"], row["toy_class"], w, h, row["fg"], row["bg"], [seed, row["index"], 1])
    return encode(img, "JPEG"), w, h


# ---------------------------------------------------------------------------------------------- writing

_PUBLIC = ("uid", "url", "text", "original_width", "original_height", "clip_b32_similarity_score",
           "clip_l14_similarity_score", "face_bboxes", "toy_domain", "toy_class", "toy_noise", "toy_text_domain",
           "toy_downloaded")


def _write_shard(args) -> dict[str, tuple[str, int, int]]:
    """Render and write one shard; return {uid: (sha256, width, height)} for every row it drew."""
    seed, path, stats_path, rows, key_width = args
    drawn, samples = {}, []
    for j, row in enumerate(rows):
        img, w, h = render(seed, row)
        sha = hashlib.sha256(img).hexdigest()
        drawn[row["uid"]] = (sha, w, h)
        if path is None:  # rows that failed to download: metadata only
            continue
        key = f"{os.path.basename(path)[:-4][-5:]}{j:0{key_width}d}"
        meta = {k: row[k] for k in _PUBLIC} | {"key": key, "caption": row["text"], "sha256": sha,
                                                "width": w, "height": h, "status": "success"}
        members = {"jpg": img, "txt": row["text"].encode("utf-8"), "json": json.dumps(meta, sort_keys=True).encode()}
        samples.append((key, members))
    if path is not None:
        n = write_tar(path, samples)
        write_json(stats_path, {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
                                "status_dict": {"success": n}})
    return drawn


def _features(seed: int, rows: list[dict], dim: int, score_key: str, tag: int) -> tuple[np.ndarray, np.ndarray]:
    """DataComp-style image/text features whose cosine equals the row's CLIP-score column exactly."""
    concept_rng = np.random.default_rng([seed, tag])
    concepts = {(d.name, c): v for d in DOMAINS for c in d.classes
                for v in [concept_rng.standard_normal(dim)]}
    img = np.empty((len(rows), dim), np.float32)
    txt = np.empty((len(rows), dim), np.float32)
    for i, row in enumerate(rows):
        rng = np.random.default_rng([seed, row["index"], tag])
        u = concepts[(row["toy_domain"], row["toy_class"])]
        f = u / np.linalg.norm(u) + 0.75 * rng.standard_normal(dim) / math.sqrt(dim)
        f /= np.linalg.norm(f)
        o = rng.standard_normal(dim)
        o -= (o @ f) * f
        o /= np.linalg.norm(o)
        t = row[score_key]
        img[i], txt[i] = f, t * f + math.sqrt(1 - t * t) * o
    return img, txt


def _write_metadata(pool: Pool, seed: int, stem: str, rows: list[dict]) -> None:
    schema = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                        ("original_width", pa.int64()), ("original_height", pa.int64()),
                        ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
                        ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string()),
                        ("toy_domain", pa.string()), ("toy_class", pa.string()), ("toy_noise", pa.string()),
                        ("toy_text_domain", pa.string()), ("toy_downloaded", pa.bool_())])
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
    with atomic_write(pool.metadata(stem), "wb") as f:
        pq.write_table(table, f)
    arrays = {}
    for tag, (name, dim) in enumerate(FEATURE_DIMS.items()):
        img, txt = _features(seed, rows, dim, f"clip_{name}_similarity_score", tag)
        arrays[f"{name}_img"], arrays[f"{name}_txt"] = img.astype(np.float16), txt.astype(np.float16)
    with atomic_write(pool.metadata(stem, "npz"), "wb") as f:
        np.savez(f, **arrays)


def _write_eval_task(pool: Pool, domain: Domain, seed: int, per_class: int) -> int:
    task = EvalTask(pool.eval_tasks_dir / domain.task)
    task.test_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(task.classnames, "w") as f:
        f.write("".join(c + "\n" for c in domain.classes))
    with atomic_write(task.templates, "w") as f:
        f.write("".join(t + "\n" for t in domain.templates))
    samples = []
    for i in range(per_class * len(domain.classes)):
        label = i % len(domain.classes)
        rng = np.random.default_rng([seed, 10**6 + DOMAINS.index(domain), i])
        fg, bg = _pick(rng, list(COLORS)), _pick(rng, list(BACKGROUNDS))
        img = draw_image(domain.name, domain.classes[label], EVAL_SIDE, EVAL_SIDE, fg, bg, [seed, 10**7 + i])
        samples.append((f"s{i:07d}", {"webp": encode(img, "WEBP"), "cls": str(label).encode()}))
    write_tar(task.shard(0), samples)
    with atomic_write(task.nshards, "w") as f:
        f.write("1\n")
    return len(samples)


def generate(out: str, samples: int = 4000, shards: int = 8, seed: int = 0, eval_per_class: int = 20,
             workers: int = 1) -> dict:
    """Write a toy pool into `out` (which must not exist or be empty) and return its record.

    Args:
        out: the pool directory (DataComp layout: shards/, metadata/, plus eval_tasks/ and toy.json).
        samples: metadata rows; about 2% of them "fail to download" and are absent from the shards.
        shards: number of webdataset shards.
        seed: everything is a function of the seed and the sample index.
        eval_per_class: evaluation images per class in each task.
        workers: processes drawing shards (the output does not depend on it).
    """
    if samples < 1 or shards < 1:
        raise UserError(f"--samples and --shards must be positive (got {samples}, {shards})")
    pool = Pool(out)
    rows = [plan_sample(seed, i) for i in range(samples)]
    got = [r for r in rows if r["toy_downloaded"]]
    if len(got) < shards:
        raise UserError(f"{samples} samples cannot fill {shards} shards; ask for more samples or fewer shards")
    bounds = np.linspace(0, len(got), shards + 1).astype(int)
    key_width = max(4, len(str(int(np.diff(bounds).max()))))
    jobs = [(seed, str(pool.shard(s)), str(pool.shard_stats(s)), got[bounds[s]:bounds[s + 1]], key_width)
            for s in range(shards)]
    jobs.append((seed, None, None, [r for r in rows if not r["toy_downloaded"]], key_width))
    drawn = {}
    pool.shards_dir.mkdir(parents=True, exist_ok=True)
    for part in tqdm(pool_map(_write_shard, jobs, workers), total=len(jobs), desc="toy shards", unit="shard"):
        drawn.update(part)
    for r in rows:
        r["sha256"] = drawn[r["uid"]][0]
    per_file = max(1, math.ceil(samples / max(1, math.ceil(samples / 5000))))
    for m, start in enumerate(range(0, samples, per_file)):
        _write_metadata(pool, seed, shard_name(m), rows[start:start + per_file])
    tasks = {d.task: _write_eval_task(pool, d, seed, eval_per_class) for d in DOMAINS}
    record = {
        "toy_version": TOY_VERSION, "seed": seed, "samples": samples, "shards": shards,
        "eval_per_class": eval_per_class, "downloaded": len(got),
        "domains": {d.name: {"classes": list(d.classes), "task": d.task} for d in DOMAINS},
        "noise": dict(sorted(Counter(r["toy_noise"] for r in rows).items())),
        "domain_counts": dict(sorted(Counter(r["toy_domain"] for r in rows).items())),
        "eval_tasks": tasks,
    }
    write_json(pool.toy_record, record)  # written last: its presence marks a complete pool
    return record


def ensure_pool(out: str, samples: int = 4000, shards: int = 8, seed: int = 0, eval_per_class: int = 20,
                workers: int = 1, overwrite: bool = False) -> dict:
    """Make the toy pool at `out` unless an identical one is there; safe when several processes race.

    A global step (mode.core.runner.run_global, record `toy.json`): a second caller waits for the first and
    reuses its pool; a pool whose files changed since is made again; other parameters need `overwrite`. The
    pool is built in a private temp directory and its files moved into place, so a crash never leaves a partial
    pool at `out`; a non-empty folder that is not a toy pool is never touched, and in a toy pool only the files
    its record lists are replaced or removed.
    """
    params = {"samples": samples, "shards": shards, "seed": seed, "eval_per_class": eval_per_class,
              "toy_version": TOY_VERSION}
    pool = Pool(out)
    previous: dict = {}
    if pool.toy_record.exists():
        previous = read_toy_record(pool.toy_record)
        if "params_hash" not in previous:  # made before toy pools had run records: its parameters decide
            if all(previous.get(k) == v for k, v in params.items()):
                return previous
            if not overwrite:
                raise UserError(f"{out} holds a toy pool made with another config; pass --overwrite to replace it")
    elif os.path.exists(out) and os.listdir(out):
        raise UserError(f"{out} exists and is not a toy pool; choose an empty or new directory")
    root = pool.root.resolve()
    made: list[str] = []  # the files the build writes (its record lists them)
    files = lambda: [root / rel for rel in made if rel != "toy.json"]  # noqa: E731
    return run_global("toy", root, root.parent, params, [], files,
                      partial(_build, out, samples, shards, seed, eval_per_class, workers,
                              _owned_files(root, previous), made),
                      record=pool.toy_record, lock_name=f"toy-{root.name}", replace=overwrite,
                      hint="pass --overwrite to replace it", wait=True, timed=False)


RECORD_KEYS = ("toy_version", "seed", "samples", "shards", "eval_per_class")  # in every toy.json `generate` wrote


def read_toy_record(path: Path) -> dict:
    """A toy pool's record; a toy.json this tool did not write (cut, not an object, a json of the user's own
    without the toy's keys) makes the folder the user's: one line naming it, with or without --overwrite."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a toy pool's record ({type(e).__name__}): the folder is not a toy pool; "
                        "choose an empty or new directory") from None
    ours = isinstance(record, dict) and all(k in record for k in RECORD_KEYS) and (
        "params_hash" not in record or (record.get("step") == "toy" and isinstance(record.get("outputs"), dict)))
    if not ours:
        raise UserError(f"{path} is not a toy pool's record (no {', '.join(RECORD_KEYS)}, or not an object): the "
                        "folder is not a toy pool; choose an empty or new directory")
    return record


TOY_ENTRIES = ("shards", "metadata", "eval_tasks")  # what a toy pool consists of (besides toy.json)
# the names the toy writes, for a record of a version that did not list its files
_TOY_NAME = re.compile(r"shards/\d{8}(\.tar|_stats\.json)|metadata/\d{8}\.(parquet|npz)|"
                       r"eval_tasks/toy_\w+/(classnames\.txt|zeroshot_classification_templates\.txt|test/\d+\.tar|"
                       r"test/nshards\.txt)")


def _owned_files(root: Path, record: dict) -> set[str]:
    """The files of the toy pool whose record this is, relative to `root`: those it lists, or for a record
    that lists none (an older version), the files under the toy's folders named as the toy names them."""
    if not record:
        return set()
    if isinstance(record.get("outputs"), dict):
        return set(record["outputs"])
    files = (p.relative_to(root).as_posix() for e in TOY_ENTRIES for p in (root / e).rglob("*") if p.is_file())
    return {rel for rel in files if _TOY_NAME.fullmatch(rel)}


def _build(out: str, samples: int, shards: int, seed: int, eval_per_class: int, workers: int,
           owned: set[str], made: list[str]) -> dict:
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(os.path.abspath(out))}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        record = generate(tmp, samples, shards, seed, eval_per_class, workers)
        made[:] = sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*") if p.is_file())
        if not os.path.exists(out):
            os.rename(tmp, out)
            return record
        # a toy pool being made again or replaced (run_global checked it is one), or an empty folder: the new
        # pool's files replace the old one's, the old one's the new one lacks go, and nothing else is touched
        for rel in sorted(owned - set(made)):
            (Path(out) / rel).unlink(missing_ok=True)
        for rel in sorted(made, key=lambda r: r == "toy.json"):  # the record last
            target = Path(out) / rel
            if target.is_dir():
                raise UserError(f"{target} is a folder of yours where the toy pool writes a file: move it away")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / rel, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


# ------------------------------------------------------------------------------------------------ `mode toy`

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="pool directory to create")
    p.add_argument("--samples", type=positive_int, default=4000, help="metadata rows (about 2%% fail to download)")
    p.add_argument("--shards", type=positive_int, default=8)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--eval-per-class", type=positive_int, default=20, help="evaluation images per class and task")
    p.add_argument("--workers", type=positive_int, default=1, help="processes drawing shards")
    p.add_argument("--overwrite", action="store_true", help="replace a toy pool made with other parameters")


def main(args: argparse.Namespace) -> None:
    record = ensure_pool(args.out, samples=args.samples, shards=args.shards, seed=args.seed,
                         eval_per_class=args.eval_per_class, workers=args.workers, overwrite=args.overwrite)
    noise = ", ".join(f"{k} {v}" for k, v in record["noise"].items())
    print(f"toy pool at {args.out}: {record['samples']} rows, {record['downloaded']} in {record['shards']} shards; "
          f"{noise}; tasks {', '.join(record['eval_tasks'])}")
