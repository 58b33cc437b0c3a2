"""The files DataComp's baselines download (language-id model, ImageNet synsets and features, pool centroids).

Each asset has DataComp's URL and sha256. `fetch(name)` returns a verified local copy: a cached file whose
sha256 matches is reused, anything else is downloaded to a temp file, checked, then renamed into place, so a
killed download never leaves a file that looks complete. The cache is `~/.cache/datacomp` (DataComp's), or
`--assets-dir` / `$MODE_ASSETS_DIR`. With no network, the error says which file to place where.

Every filter that uses an asset also takes an explicit path (`--centroids`, `--target-features`,
`--synset-ids`, `--fasttext-model`), which skips the download.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mode.core.errors import UserError, first_line, reading
from mode.core.shards import atomic_write

_RELEASE = "https://github.com/sagadre/datacomp_baseline_assets/releases/download/v0.1.0-alpha"


@dataclass(frozen=True)
class Asset:
    url: str
    sha256: str
    filename: str


def _release(stem: str, sha256: str, remote: str | None = None, suffix: str = ".pt") -> Asset:
    return Asset(f"{_RELEASE}/{remote or stem}{suffix}", sha256, f"{stem}{suffix}")


ASSETS: dict[str, Asset] = {
    "fasttext": Asset("https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin",
                      "7e69ec5451bc261cc7844e49e4792a85d7f09c06789ec800fc4a44aec362764e", "lid.176.bin"),
    "imagenet21k_wordnet_ids": _release("imagenet21k_wordnet_ids",
                                        "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2",
                                        suffix=".txt"),
    "in1k_clip_vit_l14_0": _release("in1k_clip_vit_l14_0",
                                    "304990fd492f40ba90072b80af78d6e8edcab9d042476ef513e03441cf53743b"),
    "in1k_clip_vit_l14_1": _release("in1k_clip_vit_l14_1",
                                    "72f008e6aa3bfb54174fa322963215337f843fc90fd642a9dccc815dd9e7ee76"),
    "in1k_clip_vit_l14_2": _release("in1k_clip_vit_l14_2",
                                    "83c3cc6503b8a50a22cac7023ca6cd61b130ab9725db2a7519f1bec5cabf5493"),
    "in1k_clip_vit_l14_3": _release("in1k_clip_vit_l14_3",
                                    "83faa289f847799ddcd438e5b74df1cb5973c345674896d10ba31ea48bc63804"),
    "in1k_clip_vit_l14_4": _release("in1k_clip_vit_l14_4",
                                    "067a45f4a140a93371876510a2fd9198a89ac1d194ae4063a51b45a6da69cadf"),
    "small_centroids": _release("small_centroids", "23c66a05e49ad77283c1e2b33355c7eb088ac332a944c97ff85d5dfd48a5b251",
                                "small_centroids_l14"),
    "medium_centroids": _release("medium_centroids",
                                 "028b1721b1d0f139c565b6b0ac99f8a1756f4bae89c36b0ec6d1c6ea9b6f112d",
                                 "medium_centroids_l14"),
    "large_centroids": _release("large_centroids", "04eeab1069d3540c246cf7ce69323147351a474017fc472e4c50a018ca32240b",
                                "large_centroids_l14"),
    "xlarge_centroids": _release("xlarge_centroids",
                                 "3f62e5f8ae3a715ce84e422846fcfce1536d184455ea234790c4a6465c4c6726",
                                 "xlarge_centroids_l14"),
}
IN1K_FEATURES = tuple(f"in1k_clip_vit_l14_{i}" for i in range(5))


def default_root() -> Path:
    return Path(os.environ.get("MODE_ASSETS_DIR") or Path.home() / ".cache" / "datacomp")


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (the ImageNet feature files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, root: str | os.PathLike | None = None, assets: dict[str, Asset] = ASSETS) -> Path:
    """A verified local copy of asset `name`, downloaded into `root` unless a matching copy is there.

    Args:
        name: a key of `assets`.
        root: cache directory (default: `default_root()`).
        assets: the registry (tests pass their own).
    Returns:
        The file's path; its sha256 equals the registry's.
    """
    if name not in assets:
        raise UserError(f"unknown asset {name!r}; expected one of {', '.join(assets)}")
    asset = assets[name]
    target = Path(root or default_root()).expanduser() / asset.filename
    if target.is_file():
        if sha256_of(target) == asset.sha256:
            return target
        print(f"{target}: sha256 does not match DataComp's; downloading it again")
    try:
        with urllib.request.urlopen(asset.url, timeout=60) as src, atomic_write(target, "wb") as out:
            total = int(src.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {asset.filename}") as bar:
                while block := src.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise UserError(f"could not download {asset.url} ({getattr(e, 'reason', e)}); place the file at {target} "
                        f"(sha256 {asset.sha256}) or pass its path explicitly") from None
    if (got := sha256_of(target)) != asset.sha256:
        target.unlink()
        raise UserError(f"{asset.url}: downloaded sha256 {got} is not DataComp's {asset.sha256}")
    return target


def load_array(path: str | os.PathLike, key: str | None = None, trusted: bool = False) -> np.ndarray:
    """A float32 array from `.npy`, `.npz` (first array or `key`) or a torch file (an array, or a dict's `key`).

    Torch files are loaded with `weights_only=True` unless `trusted` (a checksum-verified DataComp asset:
    its centroids are pickled numpy arrays, which the safe loader refuses).
    """
    path = str(path)
    if path.endswith((".npy", ".npz")):
        with reading(path, "float array"):
            if path.endswith(".npy"):
                return np.asarray(np.load(path), dtype=np.float32)
            with np.load(path) as z:
                return np.asarray(z[key or z.files[0]], dtype=np.float32)
    import torch

    try:
        with reading(path, "torch file"):
            obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except (UserError, RuntimeError) as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise UserError(f"{path}: not loadable safely (weights_only); save it as .npy instead") from None
        raise UserError(str(e) if isinstance(e, UserError) else f"{path}: {first_line(e)}") from None
    if isinstance(obj, dict):
        if key not in obj:
            raise UserError(f"{path}: expected key {key!r}, found {', '.join(map(str, obj))}")
        obj = obj[key]
    return obj.float().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj, dtype=np.float32)
