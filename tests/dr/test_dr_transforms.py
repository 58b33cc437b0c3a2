"""dr.transforms: recorded augmentation parameters replay bit-exactly, in DataCompDR's paug.json format."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from dr import transforms as drt

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
SIZES = [(320, 180), (97, 61), (150, 400), (40, 30), (224, 224)]  # (width, height); one smaller than the crop
MODES = ["RGB", "L", "RGBA", "RGB", "P"]


def make_image(seed: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Noise with a few filled shapes (so geometric ops move visible structure), in `mode`."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(1, w)), y0 + int(rng.integers(1, h))]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return img.convert(mode)


IMAGES = [make_image(i, size, mode) for i, (size, mode) in enumerate(zip(SIZES, MODES))]


def small_config(**overrides) -> dict:
    """The 12M augmentation with a small crop (fast), a flip and a RandAugment that is sometimes skipped."""
    aug = drt.load_config("dr_augment_12m")["reinforce"]["image_augmentation"]
    aug = {**aug, "random_resized_crop": {"size": [48, 40], "interpolation": "bicubic"},
           "random_horizontal_flip": {"p": 0.5}, "rand_augment": {"p": 0.7, "num_ops": 3}}
    return {**aug, **overrides}


CONFIGS = {"12m": lambda: drt.load_config("dr_augment_12m"), "flip_skip": small_config,
           "no_rand_augment": lambda: small_config(rand_augment={"enable": False}),
           "magnitude_max": lambda: small_config(rand_augment={"magnitude": 30, "fill": [128, 0, 255]})}


@pytest.mark.parametrize("name", CONFIGS)
def test_replay_equals_apply_for_many_draws(name):
    aug = drt.from_config(CONFIGS[name]())
    torch.manual_seed(0)
    for k in range(50):
        img = IMAGES[k % len(IMAGES)]
        tensor, entry = aug.apply(img)
        assert tensor.dtype == torch.float32 and tensor.shape[0] == 3
        assert torch.equal(aug.replay(img, entry), tensor), (k, entry)
        stored = json.loads(json.dumps(entry))
        assert stored == entry and torch.equal(aug.replay(img, stored), tensor), (k, entry)
        assert aug.compress(aug.decompress(entry)) == entry


def test_paug_json_round_trip_replays_every_entry():
    cfg = drt.load_config("dr_augment_12m")
    aug, img = drt.from_config(cfg), IMAGES[0]
    torch.manual_seed(1)
    drawn = [aug.apply(img) for _ in range(aug.num_augmentations)]
    doc = json.loads(json.dumps({"param_aug": [entry for _, entry in drawn]}).encode())
    assert list(doc) == ["param_aug"] and len(doc["param_aug"]) == 30
    for (tensor, entry), stored in zip(drawn, doc["param_aug"]):
        assert stored == entry
        crop, ops = stored  # DataCompDR's layout: [[i, j, h, w], [[op, magnitude], [op, magnitude]]]
        assert len(crop) == 4 and all(isinstance(v, int) for v in crop)
        assert len(ops) == 2 and all(isinstance(op, int) and isinstance(m, float) for op, m in ops)
        assert torch.equal(aug.replay(img, stored), tensor)
    assert len({json.dumps(e) for e in doc["param_aug"]}) == 30  # distinct draws


def test_seeded_apply_matches_torchvision_own_transforms():
    aug = drt.from_config(small_config(rand_augment={"p": 1.0}))
    tv_crop = T.RandomResizedCrop([48, 40], interpolation=InterpolationMode.BICUBIC)
    tv_flip, tv_ra = T.RandomHorizontalFlip(0.5), T.RandAugment()
    for seed in range(20):
        img = IMAGES[seed % len(IMAGES)]
        torch.manual_seed(seed)
        ours, _ = aug.apply(img)
        torch.manual_seed(seed)
        x = tv_flip(tv_crop(img.convert("RGB")))
        torch.rand(1)  # the rand_augment p-draw ml-mobileclip makes before RandAugment's own draws
        x = F.normalize(F.to_tensor(tv_ra(x)), OPENAI_MEAN, OPENAI_STD)
        assert torch.equal(ours, x), seed


def test_handwritten_entry_replays_to_torchvision_functional_ops():
    aug, img = drt.from_config(drt.load_config("dr_augment_1b")), IMAGES[0]
    doc = json.loads('{"param_aug": [[[12, 40, 150, 200], [[5, -9.0], [11, 178.5]]], [[0, 0, 180, 320], null]]}')
    crop = F.resized_crop(img, 12, 40, 150, 200, [224, 224], InterpolationMode.BICUBIC, antialias=True)
    rotated = F.rotate(crop, -9.0, interpolation=InterpolationMode.NEAREST)
    expected = F.normalize(F.to_tensor(F.solarize(rotated, 178.5)), OPENAI_MEAN, OPENAI_STD)
    assert torch.equal(aug.replay(img, doc["param_aug"][0]), expected)
    whole = F.resize(img, [224, 224], InterpolationMode.BICUBIC, antialias=True)  # RandAugment skipped: null
    assert torch.equal(aug.replay(img, doc["param_aug"][1]), F.normalize(F.to_tensor(whole), OPENAI_MEAN, OPENAI_STD))
    assert aug.decompress(doc["param_aug"][0]) == {"random_resized_crop": [12, 40, 150, 200],
                                                   "rand_augment": [("Rotate", -9.0), ("Solarize", 178.5)]}


def test_ops_and_magnitudes_follow_torchvision_rand_augment():
    cfg = drt.load_config("dr_augment_12m")
    aug = drt.from_config(cfg)
    ra = aug.steps[aug.layout.index("rand_augment")]
    tv = T.RandAugment(ra.torchvision.num_ops, ra.torchvision.magnitude, ra.torchvision.num_magnitude_bins)
    assert (tv.num_ops, tv.magnitude, tv.num_magnitude_bins) == (2, 9, 31)  # the config relies on the defaults
    space = tv._augmentation_space(tv.num_magnitude_bins, (224, 224))  # magnitudes for the 224 crop
    assert list(space) == list(drt.OP_NAMES)
    torch.manual_seed(2)
    entries = [aug.apply(IMAGES[k % 2])[1] for k in range(20)]  # the drawing itself (no pixels) for many more:
    entries += [[None, ra.encode(ra.sample(Image.new("RGB", (224, 224))))] for _ in range(300)]
    seen = set()
    for _, ops in entries:
        for op, magnitude in ops:
            values, signed = space[drt.OP_NAMES[op]]
            expected = float(values[tv.magnitude]) if values.ndim > 0 else 0.0
            assert magnitude in ({expected, -expected} if signed else {expected}), (op, magnitude)
            seen.add(op)
    assert seen == set(range(len(drt.OP_NAMES)))


@pytest.mark.parametrize("name,num", [("dr_augment_12m", 30), ("dr_augment_1b", 10)])
def test_configs_load_by_name_and_path(name, num):
    cfg = drt.load_config(name)
    assert cfg == drt.load_config(drt.CONFIG_DIR / f"{name}.json") == drt.load_config(f"{name}.json")
    assert cfg["num_samples"] == num and drt.from_config(cfg).num_augmentations == num
    aug_cfg = cfg["reinforce"]["image_augmentation"]
    assert aug_cfg["random_resized_crop"] == {"interpolation": "bicubic", "size": 224}
    assert aug_cfg["rand_augment"] == {"enable": True, "p": 1.0}
    assert aug_cfg["normalize"] == {"mean": OPENAI_MEAN, "std": OPENAI_STD}
    inner = drt.from_config(aug_cfg)
    assert inner.layout == ("random_resized_crop", "rand_augment") and inner.num_augmentations is None
    assert inner.to_rgb and inner.normalize == (OPENAI_MEAN, OPENAI_STD)


def test_input_modes_and_model_overrides():
    aug = drt.from_config(drt.load_config("dr_augment_12m"))
    torch.manual_seed(3)
    for img in IMAGES:
        tensor, entry = aug.apply(img)
        assert tensor.shape == (3, 224, 224)
        assert torch.equal(aug.replay(img.convert("RGB"), entry), tensor)  # to_rgb is convert("RGB")
        pixels = aug.unnormalize(tensor)
        assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
    # What the training loader does: the model's crop size, interpolation and normalisation over the stored ones.
    cfg = drt.load_config("dr_augment_12m")["reinforce"]["image_augmentation"]
    cfg = {**cfg, "random_resized_crop": {"size": [64, 32], "interpolation": InterpolationMode.BILINEAR.value},
           "normalize": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}}
    tensor, entry = drt.from_config(cfg).apply(IMAGES[0])
    assert tensor.shape == (3, 64, 32) and torch.equal(drt.from_config(cfg).replay(IMAGES[0], entry), tensor)


@pytest.mark.parametrize("entry,match", [
    ([[0, 0, 10, 10]], "expected a list of 2"),
    ([[0, 0, 10, 10], [[1, 0.1], [2, 0.1]], True], "expected a list of 2"),
    ("[[0, 0, 10, 10], null]", "expected a list of 2"),
    ([[0, 0, 10], None], "random_resized_crop"),
    ([[0, 0, 10.5, 10], None], "random_resized_crop"),
    ([[-1, 0, 10, 10], None], "random_resized_crop"),
    ([[0, 0, 0, 10], None], "random_resized_crop"),
    ([[0, 0, 10, 10], [[1, 0.1]]], "rand_augment: expected null or 2"),
    ([[0, 0, 10, 10], [[14, 0.1], [2, 0.1]]], "rand_augment op 0"),
    ([[0, 0, 10, 10], [[1, 0.1], ["ShearX", 0.1]]], "rand_augment op 1"),
    ([[0, 0, 10, 10], [[1, float("nan")], [2, 0.1]]], "rand_augment op 0"),
    ([[0, 0, 10, 10], [[1, True], [2, 0.1]]], "rand_augment op 0"),
])
def test_bad_entries_raise_value_error(entry, match):
    aug = drt.from_config(drt.load_config("dr_augment_12m"))
    with pytest.raises(ValueError, match=match):
        aug.replay(IMAGES[0], entry)


def test_a_box_outside_the_image_is_zero_padded_as_ml_mobileclip_replays_it(caplog):
    """DataCompDR's boxes are in original pixels; on a smaller image resized_crop pads with zeros (the
    reference's behaviour), warned once and counted."""
    aug = drt.from_config(drt.load_config("dr_augment_12m"))
    before = drt.OUTSIDE[0]
    with caplog.at_level("WARNING"):
        out = aug.replay(IMAGES[0], [[150, 0, 50, 10], None])
        aug.replay(IMAGES[0], [[150, 0, 50, 10], None])
    want = F.normalize(F.to_tensor(F.resized_crop(IMAGES[0].convert("RGB"), 150, 0, 50, 10, [224, 224],
                                                  T.InterpolationMode.BICUBIC, antialias=True)), *aug.normalize)
    assert torch.equal(out, want) and drt.OUTSIDE[0] == before + 2
    assert (out[:, 150:] == want[:, -1:, -1:]).all()  # the padded rows: black, normalised
    assert sum("outside the 320x180 image" in r.message for r in caplog.records) <= 1


def test_bad_flip_entry_and_input():
    aug = drt.from_config(small_config())
    assert aug.layout == ("random_resized_crop", "random_horizontal_flip", "rand_augment")
    with pytest.raises(ValueError, match="random_horizontal_flip"):
        aug.replay(IMAGES[0], [[0, 0, 10, 10], "yes", None])
    assert aug.decompress([[0, 0, 10, 10], 1, None])["random_horizontal_flip"] is True
    with pytest.raises(ValueError, match="enable to_rgb"):
        drt.from_config(small_config(to_rgb={"enable": False})).apply(IMAGES[2])  # RGBA without to_rgb
    with pytest.raises(TypeError, match="PIL"):
        aug.apply(torch.zeros(3, 8, 8))


@pytest.mark.parametrize("change,match", [
    ({"resize": {"size": 256}}, r"unsupported transform\(s\) \['resize'\]"),
    ({"rand_augment": {"p": 1.0, "magnitud": 9}}, r"rand_augment: unknown option\(s\) \['magnitud'\]"),
    ({"rand_augment": {"magnitude": 31}}, "rand_augment: expected ints with 0 <= magnitude"),
    ({"rand_augment": {"p": 1.5}}, r"rand_augment\.p: expected a probability"),
    ({"random_resized_crop": {"size": 224, "interpolation": "cubic"}}, "interpolation 'cubic' is not one of"),
    ({"random_resized_crop": {"interpolation": "bicubic"}}, r"random_resized_crop: missing option\(s\) \['size'\]"),
    ({"random_resized_crop": {"size": [224, 0]}}, r"random_resized_crop\.size"),
    ({"to_tensor": {"enable": False}}, "to_tensor must be enabled"),
    ({"to_rgb": {"enable": "yes"}}, "to_rgb: expected an object with an optional boolean enable"),
    ({"normalize": {"mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]}}, "normalize: expected mean and std"),
])
def test_bad_configs_raise_value_error_naming_the_key(change, match):
    cfg = drt.load_config("dr_augment_12m")
    cfg["reinforce"]["image_augmentation"].update(change)
    with pytest.raises(ValueError, match=match):
        drt.load_config(cfg)


def test_bad_config_files(tmp_path):
    with pytest.raises(drt.AugmentationConfigError, match=r"'dr_augment_2m': no such file.*dr_augment_12m"):
        drt.load_config("dr_augment_2m")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        drt.load_config(tmp_path / "broken.json")
    (tmp_path / "count.json").write_text(json.dumps({**drt.load_config("dr_augment_1b"), "num_samples": 0}))
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        drt.load_config(str(tmp_path / "count.json"))
