"""Reproducible image augmentations in DataCompDR's format: draw them, record them, replay them bit-exactly.

A config (``configs/dr_augment_12m.json``, ``dr_augment_1b.json``) uses ml-mobileclip's keys: the whole file is
``{"num_samples": N, "reinforce": {"image_augmentation": {...}}, ...}`` (N: augmentations stored per sample, 30
in DataCompDR-12M, 10 in DataCompDR-1B; ``model_name``/``pretrained``: the teachers that embedded them), and
``from_config`` also takes the ``image_augmentation`` object alone. Its transforms always compose in this order,
whatever the order of the keys; one is off when absent or ``"enable": false``:

- ``to_rgb``: ``img.convert("RGB")`` (alpha dropped, as ml-mobileclip's loader does). No options.
- ``random_resized_crop``: ``size`` (int or [h, w], required), ``scale`` [0.08, 1], ``ratio`` [3/4, 4/3],
  ``interpolation`` ("bilinear"; DataCompDR: "bicubic"), ``antialias`` (true): torchvision's RandomResizedCrop.
- ``random_horizontal_flip``: ``p`` (0.5).
- ``rand_augment``: ``p`` (1.0: the chance that RandAugment runs at all), ``num_ops`` (2), ``magnitude`` (9),
  ``num_magnitude_bins`` (31), ``interpolation`` ("nearest"), ``fill`` (null): torchvision's RandAugment.
- ``to_tensor`` (required): float32 [C, H, W] in [0, 1].   ``normalize``: ``mean``, ``std``.

A paug entry (one element of ``paug.json``'s ``{"param_aug": [...]}``, one per stored augmentation) is a JSON list
holding, in composition order, the random parameters of each enabled random transform; the others store nothing:

- ``random_resized_crop``: ``[i, j, h, w]``, the crop box (top, left, height, width) in the input image's pixels,
  as ``RandomResizedCrop.get_params`` draws it; it is resized to ``size``.
- ``random_horizontal_flip``: ``true`` or ``false``.
- ``rand_augment``: ``null`` when skipped (chance 1 - p), else ``num_ops`` pairs ``[op, magnitude]``: ``op``
  indexes ``OP_NAMES`` (torchvision RandAugment's op order) and ``magnitude`` is the value the op is applied with
  (torchvision's bin ``magnitude`` of ``num_magnitude_bins`` for the cropped image's size, negated for signed ops
  on a coin flip; 0.0 for ops without one), not a bin index.

For DataCompDR's configs an entry is ``[[i, j, h, w], [[op, magnitude], [op, magnitude]]]``, e.g.
``[[12, 40, 300, 280], [[5, -9.0], [11, 178.5]]]``: crop rows 12..311 and columns 40..319, resize them to 224x224
(bicubic), rotate by -9 degrees, solarise above 178.5. Draws use torch's global generator in ml-mobileclip's order
(crop, flip, RandAugment's skip draw, then per op its index and sign), so a seeded ``apply`` matches torchvision's
own transforms; replays run the same torchvision functional ops on the PIL image, so they are bit-exact.
A config may change ``size``/``interpolation``/``normalize`` at replay (the training loader uses the model's):
boxes stay valid, and stored magnitudes are replayed as stored (translations in pixels of the generation size).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import _apply_op

from mode.core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
OP_NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
            "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
TRANSFORM_ORDER = ("to_rgb", "random_resized_crop", "random_horizontal_flip", "rand_augment", "to_tensor",
                   "normalize")
REQUIRED = object()  # marks an option without a default


class AugmentationConfigError(UserError, ValueError):
    """A malformed augmentation config, or a config name that names no file."""


OUTSIDE = [0]  # stored crop boxes replayed partly outside their image, in this process
log = logging.getLogger(__name__)


class BadAugmentation(ValueError):
    """A paug entry that does not fit the config (layout, type or range), or an image it cannot replay on."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _options(name: str, raw: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """The options of transform `name`: `raw` over `defaults`, unknown or missing ones refused."""
    if not isinstance(raw, Mapping):
        raise AugmentationConfigError(f"image_augmentation.{name}: expected an object of options, got {raw!r}")
    unknown = sorted(set(raw) - set(defaults) - {"enable"})
    if unknown:
        raise AugmentationConfigError(f"image_augmentation.{name}: unknown option(s) {unknown}; "
                                      f"valid: {sorted(defaults) + ['enable']}")
    opts = {**defaults, **{k: v for k, v in raw.items() if k != "enable"}}
    missing = [k for k, v in opts.items() if v is REQUIRED]
    if missing:
        raise AugmentationConfigError(f"image_augmentation.{name}: missing option(s) {missing}")
    return opts


def _interpolation(where: str, value: Any) -> InterpolationMode:
    try:
        return InterpolationMode(value)
    except ValueError:
        valid = [m.value for m in InterpolationMode]
        raise AugmentationConfigError(f"{where}: interpolation {value!r} is not one of {valid}") from None


def _pair(where: str, value: Any) -> tuple[float, float]:
    if not (isinstance(value, Sequence) and len(value) == 2 and all(_is_number(v) for v in value)
            and 0 < value[0] <= value[1]):
        raise AugmentationConfigError(f"{where}: expected [low, high] with 0 < low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def _probability(where: str, value: Any) -> float:
    if not (_is_number(value) and 0 <= value <= 1):
        raise AugmentationConfigError(f"{where}: expected a probability in [0, 1], got {value!r}")
    return float(value)


class RandomResizedCrop:
    """The crop box [i, j, h, w] drawn by torchvision's RandomResizedCrop, resized to `size`."""

    name = "random_resized_crop"
    defaults = {"size": REQUIRED, "scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3], "interpolation": "bilinear",
                "antialias": True}

    def __init__(self, opts: dict[str, Any]):
        where = f"image_augmentation.{self.name}"
        size = [opts["size"]] * 2 if _is_int(opts["size"]) else opts["size"]
        if not (isinstance(size, Sequence) and len(size) in (1, 2) and all(_is_int(s) and s > 0 for s in size)):
            raise AugmentationConfigError(f"{where}.size: expected a positive int or [h, w], got {opts['size']!r}")
        self.size = [size[0], size[-1]]
        self.scale, self.ratio = _pair(f"{where}.scale", opts["scale"]), _pair(f"{where}.ratio", opts["ratio"])
        self.interpolation = _interpolation(where, opts["interpolation"])
        self.antialias = bool(opts["antialias"])

    def sample(self, img: Image.Image) -> list[int]:
        return [int(v) for v in T.RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))]

    def run(self, img: Image.Image, box: list[int]) -> Image.Image:
        i, j, h, w = box
        if i + h > img.height or j + w > img.width:  # zero-padded by resized_crop, as ml-mobileclip replays it
            OUTSIDE[0] += 1
            if OUTSIDE[0] == 1:
                log.warning(f"{self.name}: stored box {box} reaches outside the {img.width}x{img.height} image; "
                            "replayed with zero padding, as ml-mobileclip does. DataCompDR's boxes are in the "
                            "original image's pixels: a resized download (e.g. img2dataset's 512 px) replays "
                            "other regions than the teachers saw. Later ones are counted in dr.transforms.OUTSIDE")
        return F.resized_crop(img, i, j, h, w, self.size, self.interpolation, antialias=self.antialias)

    def encode(self, box: list[int]) -> list[int]:
        return list(box)

    def decode(self, stored: Any) -> list[int]:
        if not (isinstance(stored, Sequence) and len(stored) == 4 and all(_is_int(v) for v in stored)
                and stored[0] >= 0 and stored[1] >= 0 and stored[2] > 0 and stored[3] > 0):
            raise BadAugmentation(f"{self.name}: expected [i, j, h, w] (ints, i, j >= 0, h, w > 0), got {stored!r}")
        return list(stored)


class RandomHorizontalFlip:
    """A coin flip with chance `p`, stored as true/false."""

    name = "random_horizontal_flip"
    defaults = {"p": 0.5}

    def __init__(self, opts: dict[str, Any]):
        self.p = _probability(f"image_augmentation.{self.name}.p", opts["p"])

    def sample(self, img: Image.Image) -> bool:
        return torch.rand(1).item() < self.p

    def run(self, img: Image.Image, flip: bool) -> Image.Image:
        return F.hflip(img) if flip else img

    def encode(self, flip: bool) -> bool:
        return bool(flip)

    def decode(self, stored: Any) -> bool:
        if not (isinstance(stored, bool) or (_is_int(stored) and stored in (0, 1))):
            raise BadAugmentation(f"{self.name}: expected true or false, got {stored!r}")
        return bool(stored)


class RandAugment:
    """torchvision's RandAugment with a chance `p` of running; ops stored as [op index, magnitude] pairs."""

    name = "rand_augment"
    defaults = {"p": 1.0, "num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31, "interpolation": "nearest",
                "fill": None}

    def __init__(self, opts: dict[str, Any]):
        where = f"image_augmentation.{self.name}"
        self.p = _probability(f"{where}.p", opts["p"])
        bins, magnitude, num_ops = opts["num_magnitude_bins"], opts["magnitude"], opts["num_ops"]
        if not (_is_int(bins) and _is_int(magnitude) and 0 <= magnitude < bins):
            raise AugmentationConfigError(f"{where}: expected ints with 0 <= magnitude < num_magnitude_bins, got "
                                          f"magnitude={magnitude!r}, num_magnitude_bins={bins!r}")
        if not (_is_int(num_ops) and num_ops >= 0):
            raise AugmentationConfigError(f"{where}.num_ops: expected an int >= 0, got {num_ops!r}")
        fill = opts["fill"]
        if not (fill is None or _is_number(fill) or (isinstance(fill, Sequence) and all(map(_is_number, fill)))):
            raise AugmentationConfigError(f"{where}.fill: expected null, a number or a list of numbers, got {fill!r}")
        self.interpolation = _interpolation(where, opts["interpolation"])
        self.fill = list(fill) if isinstance(fill, Sequence) else fill
        self.torchvision = T.RandAugment(num_ops, magnitude, bins, self.interpolation, self.fill)
        if tuple(self.space((224, 224))) != OP_NAMES:
            raise RuntimeError(f"torchvision's RandAugment ops {list(self.space((224, 224)))} are not the stored "
                               f"format's {list(OP_NAMES)}: this torchvision cannot replay DataCompDR's entries")

    def space(self, hw: tuple[int, int]) -> dict[str, tuple[torch.Tensor, bool]]:
        """torchvision's op -> (magnitudes per bin, signed) for an image of height and width `hw`."""
        return self.torchvision._augmentation_space(self.torchvision.num_magnitude_bins, hw)

    def sample(self, img: Image.Image) -> list[tuple[str, float]] | None:
        if bool(torch.rand(1) > self.p):  # ml-mobileclip's skip draw, compared as it does (float32)
            return None
        space, ops = self.space((img.height, img.width)), []
        for _ in range(self.torchvision.num_ops):
            op = OP_NAMES[int(torch.randint(len(space), (1,)).item())]
            magnitudes, signed = space[op]
            magnitude = float(magnitudes[self.torchvision.magnitude].item()) if magnitudes.ndim > 0 else 0.0
            if signed and torch.randint(2, (1,)):
                magnitude *= -1.0
            ops.append((op, magnitude))
        return ops

    def run(self, img: Image.Image, ops: list[tuple[str, float]] | None) -> Image.Image:
        for op, magnitude in ops or ():
            img = _apply_op(img, op, magnitude, interpolation=self.interpolation, fill=self.fill)
        return img

    def encode(self, ops: list[tuple[str, float]] | None) -> list[list] | None:
        return None if ops is None else [[OP_NAMES.index(op), magnitude] for op, magnitude in ops]

    def decode(self, stored: Any) -> list[tuple[str, float]] | None:
        if stored is None:
            return None
        n = self.torchvision.num_ops
        if not (isinstance(stored, Sequence) and len(stored) == n):
            raise BadAugmentation(f"{self.name}: expected null or {n} [op, magnitude] pairs, got {stored!r}")
        ops = []
        for k, pair in enumerate(stored):
            if not (isinstance(pair, Sequence) and len(pair) == 2 and _is_int(pair[0])
                    and 0 <= pair[0] < len(OP_NAMES) and _is_number(pair[1])):
                raise BadAugmentation(f"{self.name} op {k}: expected [op in 0..{len(OP_NAMES) - 1}, finite "
                                      f"magnitude], got {pair!r}")
            ops.append((OP_NAMES[pair[0]], float(pair[1])))
        return ops


RANDOM_TRANSFORMS = {t.name: t for t in (RandomResizedCrop, RandomHorizontalFlip, RandAugment)}


class ReplayableAugment:
    """A composed augmentation whose `apply` records its random parameters and whose `replay` reapplies them."""

    def __init__(self, steps: list, to_rgb: bool, normalize: tuple[list[float], list[float]] | None,
                 num_augmentations: int | None = None):
        """Build from parsed parts; use `from_config` instead.

        Args:
            steps: the random transforms (RandomResizedCrop, RandomHorizontalFlip, RandAugment), in order.
            to_rgb: convert the input image to RGB first.
            normalize: (mean, std) applied to the [0, 1] tensor, or None.
            num_augmentations: augmentations stored per sample (the config's `num_samples`), or None.
        """
        self.steps, self.to_rgb, self.normalize = steps, to_rgb, normalize
        self.num_augmentations = num_augmentations

    @property
    def layout(self) -> tuple[str, ...]:
        """The transforms whose parameters a paug entry holds, one item each, in this order."""
        return tuple(step.name for step in self.steps)

    def apply(self, img: Image.Image) -> tuple[torch.Tensor, list]:
        """Augment `img` with freshly drawn parameters (torch's global generator).

        Args:
            img: a PIL image (any mode with `to_rgb`, else RGB or L).

        Returns:
            The augmented float32 tensor [C, H, W] and its paug entry (JSON-serialisable list).
        """
        img, entry = self._prepare(img), []
        for step in self.steps:
            params = step.sample(img)
            img = step.run(img, params)
            entry.append(step.encode(params))
        return self._finish(img), entry

    def replay(self, img: Image.Image, entry: Sequence) -> torch.Tensor:
        """Reapply the augmentation recorded in `entry` to `img`; equal to what `apply` returned for it.

        Args:
            img: the same image the entry was drawn for (same pixels and size).
            entry: one element of `param_aug`.

        Returns:
            The augmented float32 tensor [C, H, W].

        Raises:
            BadAugmentation (a ValueError): the entry does not fit this config or this image.
        """
        params = self.decompress(entry)
        img = self._prepare(img)
        for step in self.steps:
            img = step.run(img, params[step.name])
        return self._finish(img)

    def decompress(self, entry: Sequence) -> dict[str, Any]:
        """The parameters of a paug entry by transform name, validated; RandAugment ops named.

        Args:
            entry: one element of `param_aug`, e.g. [[i, j, h, w], [[op, magnitude], ...]].

        Returns:
            {"random_resized_crop": [i, j, h, w], "rand_augment": [(op name, magnitude), ...] or None, ...}.
        """
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != len(self.steps):
            raise BadAugmentation(f"paug entry: expected a list of {len(self.steps)} item(s) "
                                  f"{list(self.layout)}, got {entry!r}")
        return {step.name: step.decode(stored) for step, stored in zip(self.steps, entry)}

    def compress(self, params: Mapping[str, Any]) -> list:
        """The paug entry of parameters in `decompress`'s form.

        Args:
            params: parameters by transform name.

        Returns:
            The JSON-serialisable entry; `decompress(compress(p)) == p`.
        """
        missing = [name for name in self.layout if name not in params]
        if missing:
            raise BadAugmentation(f"parameters miss {missing}")
        return [step.encode(params[step.name]) for step in self.steps]

    def unnormalize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (up to rounding) of a tensor from `apply`/`replay` (undoes `normalize`)."""
        if self.normalize is None:
            return tensor
        mean, std = (torch.tensor(v, dtype=tensor.dtype).view(-1, 1, 1) for v in self.normalize)
        return tensor * std + mean

    def _prepare(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        if self.to_rgb:
            return img if img.mode == "RGB" else img.convert("RGB")
        if img.mode not in ("RGB", "L"):
            raise BadAugmentation(f"image mode {img.mode!r}: enable to_rgb or pass an RGB or L image")
        return img

    def _finish(self, img: Image.Image) -> torch.Tensor:
        tensor = F.to_tensor(img)
        return tensor if self.normalize is None else F.normalize(tensor, *self.normalize)


def _image_augmentation(cfg: Mapping) -> tuple[Mapping, int | None]:
    """The image_augmentation object of a whole config (or of itself) and the stored augmentation count."""
    if not isinstance(cfg, Mapping):
        raise AugmentationConfigError(f"augmentation config: expected a JSON object, got {type(cfg).__name__}")
    if "reinforce" not in cfg:
        return cfg, None
    aug = cfg["reinforce"].get("image_augmentation") if isinstance(cfg["reinforce"], Mapping) else None
    if not isinstance(aug, Mapping):
        raise AugmentationConfigError("augmentation config: reinforce.image_augmentation must be an object")
    num = cfg.get("num_samples")
    if num is not None and not (_is_int(num) and num > 0):
        raise AugmentationConfigError(f"augmentation config: num_samples must be a positive int, got {num!r}")
    return aug, num


def _normalize(raw: Any) -> tuple[list[float], list[float]]:
    opts = _options("normalize", raw, {"mean": REQUIRED, "std": REQUIRED})
    mean, std = opts["mean"], opts["std"]
    if not all(isinstance(v, Sequence) and len(v) in (1, 3) and all(map(_is_number, v)) for v in (mean, std)) \
            or len(mean) != len(std) or 0 in std:
        raise AugmentationConfigError(f"image_augmentation.normalize: expected mean and std of 1 or 3 numbers "
                                      f"(std nonzero), got mean={mean!r}, std={std!r}")
    return [float(v) for v in mean], [float(v) for v in std]


def from_config(cfg: Mapping) -> ReplayableAugment:
    """The augmentation a config describes (see the module docstring for keys and defaults).

    Args:
        cfg: a whole config (as `load_config` returns) or its `reinforce.image_augmentation` object.

    Returns:
        A ReplayableAugment; its `num_augmentations` is the config's `num_samples` (None when `cfg` is the
        image_augmentation object alone).

    Raises:
        AugmentationConfigError (a ValueError): an unknown transform or option, or a bad value; names it.
    """
    aug, num = _image_augmentation(cfg)
    unknown = sorted(set(aug) - set(TRANSFORM_ORDER))
    if unknown:
        raise AugmentationConfigError(f"image_augmentation: unsupported transform(s) {unknown}; "
                                      f"supported: {list(TRANSFORM_ORDER)}")
    for name, raw in aug.items():
        if not isinstance(raw, Mapping) or not isinstance(raw.get("enable", True), bool):
            raise AugmentationConfigError(f"image_augmentation.{name}: expected an object with an optional "
                                          f"boolean enable, got {raw!r}")
    on = {name: raw for name, raw in aug.items() if raw.get("enable", True)}
    if "to_tensor" not in on:
        raise AugmentationConfigError("image_augmentation.to_tensor must be enabled: apply/replay return tensors")
    for name in ("to_rgb", "to_tensor"):
        if name in on:
            _options(name, on[name], {})
    steps = [cls(_options(name, on[name], cls.defaults)) for name, cls in RANDOM_TRANSFORMS.items() if name in on]
    normalize = _normalize(on["normalize"]) if "normalize" in on else None
    return ReplayableAugment(steps, "to_rgb" in on, normalize, num)


def _config_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    if path.name == name:  # a bare name: one of configs/
        candidate = CONFIG_DIR / (name if name.endswith(".json") else f"{name}.json")
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    raise AugmentationConfigError(f"augmentation config {name!r}: no such file, and not one of {known} "
                                  f"(in {CONFIG_DIR})")


def load_config(path_or_name: str | Path | Mapping) -> dict:
    """Read and validate an augmentation config.

    Args:
        path_or_name: a JSON file's path, a bare name of a file in configs/ ("dr_augment_12m", with or
            without ".json"), or an already loaded config (copied).

    Returns:
        The config as a dict, valid for `from_config`.

    Raises:
        AugmentationConfigError (a ValueError and a mode UserError): unknown name, bad JSON or bad config.
    """
    if isinstance(path_or_name, Mapping):
        cfg = copy.deepcopy(dict(path_or_name))
    else:
        path = _config_path(str(path_or_name))
        try:
            cfg = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AugmentationConfigError(f"augmentation config {str(path)!r}: cannot read it as JSON ({e})") from None
    from_config(cfg)
    return cfg
