"""dataset2metadata's registry: its models, preprocessors and postprocessors, under its names.

A model is a class with dataset2metadata's contract: class attributes `name`, `raw_inputs` ("image", "text" or
"json" of a sample), `preprocessors` (one per raw input, names in PREPROCESSORS), `dependencies` (models whose
outputs are passed after the inputs), `to_device`; built as `cls(device)` (`model_device`: the yml's CUDA index, an
int, as dataset2metadata passes it, or `cpu` / `cuda:N`), called as `model(*inputs, *deps)`, the inputs batched as
webdataset's default_collation_fn batches them.
Postprocessors read the batch's `{model name: output}` and return a column (one value per sample: [B], or [B, k]
for a list per sample) or a feature array ([B, D]). A `custom_pypath` file with dataset2metadata's four dicts
(model_lookup, preprocessor_lookup, postprocess_parquet_lookup, postprocess_feature_lookup) adds to these or
replaces entries by name, so files written for dataset2metadata work unchanged.

Weights load where dataset2metadata loads them, but safely: OpenAI's CLIP through open_clip (`ViT-B-32-quickgelu`
/ `ViT-L-14-quickgelu`, `pretrained="openai"`: the configs without `-quickgelu` build GELU, a silent mismatch
with OpenAI's weights), the NSFW MLP, the eval-set embeddings and SCRFD from dataset2metadata's release assets
(sha256-checked, `mode.datacomp.assets`), the ISC descriptor and Detoxify's checkpoint from their releases; every
checkpoint is read with `torch.load(weights_only=True)`. Subclasses change only what is built (a tiny open_clip
config, a timm test model, a local checkpoint): the tests run every model's own code on random weights.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from functools import partial
from pathlib import Path

from mode.core.errors import UserError
from mode.datacomp.assets import Asset, fetch

D2M_RELEASE = "https://github.com/mlfoundations/dataset2metadata/releases/download/v0.1.0-alpha"
D2M_ASSETS = {
    "nsfw-image": Asset(f"{D2M_RELEASE}/nsfw_torch.pt",
                        "3c97d5478477c181bfa29a33e6933f710c8ec587e3c3551ff855e293acdaf390", "nsfw-image.pt"),
    "faces-scrfd10g": Asset(f"{D2M_RELEASE}/scrfd_10g.pt",
                            "963570df5e0ebf6bb313239d0f9f3f0c096c1ff6937e8e28e45abad4d8b1d5c7", "faces-scrfd10g.pt"),
    "dedup-embeddings": Asset(f"{D2M_RELEASE}/eval_dedup_embeddings.pt",
                              "18aeb08e1d53638761e05ac95254a2ef49653bfdb59a631c9304117ceef23d14",
                              "dedup-embeddings.pt"),
}
ISC_URL = "https://github.com/lyakaap/ISC21-Descriptor-Track-1st/releases/download/v1.0.1/isc_ft_v107.pth.tar"
DETOXIFY_URL = ("https://github.com/unitaryai/detoxify/releases/download/v0.4-alpha/"
                "multilingual_debiased-0b549669.ckpt")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def d2m_root() -> Path:
    """dataset2metadata's cache, where its assets are looked for first (`$MODE_D2M_DIR` to put them elsewhere)."""
    import os

    return Path(os.environ.get("MODE_D2M_DIR") or Path.home() / ".cache" / "dataset2metadata")


def d2m_asset(name: str) -> Path:
    return fetch(name, d2m_root(), D2M_ASSETS)


def load_weights(path: str | Path, what: str, allow: tuple = ()):
    """`torch.load(weights_only=True)`: tensors and plain containers only (`allow`: extra harmless classes)."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path}: not a loadable {what} checkpoint ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def torch_device(device) -> str:
    """dataset2metadata's `device` (a CUDA index) or a torch device string; a CUDA index on a machine without
    CUDA runs on the CPU (said once in the log). Under torchrun, local rank r takes index + r."""
    import logging
    import os

    import torch

    if isinstance(device, bool):
        raise UserError(f"device: {device!r}: expected a CUDA index like 0, or cpu / cuda:N")
    if isinstance(device, int):
        if device < 0 or not torch.cuda.is_available():
            if device >= 0:
                logging.getLogger(__name__).warning(f"device {device}: no CUDA GPU here, running on the CPU")
            return "cpu"
        local = int(os.environ.get("LOCAL_RANK", 0))  # one process per GPU: each local rank the next one
        device = f"cuda:{(device + local) % torch.cuda.device_count()}"
    from mode.core.device import pick_device

    return pick_device(str(device))


def model_device(device, resolved: str):
    """What a model is built with: dataset2metadata's yml `device`, a CUDA index (int), where the yml gives one
    and it runs on CUDA (under torchrun, the index this process uses); else the torch device string (`cpu`,
    `cuda:N`), as an index would send a model's `.to(device)` to a GPU that is not there."""
    if isinstance(device, int) and not isinstance(device, bool) and resolved.startswith("cuda:"):
        return int(resolved.split(":", 1)[1])
    return resolved


# ------------------------------------------------------------------------------------------- preprocessors

def _rgb(image):
    return image.convert("RGB")


def _clip_image_transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), _rgb,
                      T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])


def _dedup_transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize((512, 512)), T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


_TRANSFORMS: dict = {}


def _cached(name: str, make):
    if name not in _TRANSFORMS:
        _TRANSFORMS[name] = make()
    return _TRANSFORMS[name]


def clip_image(image):
    """OpenAI CLIP's 224 px preprocessing: bicubic resize of the short side, centre crop, RGB, OpenAI mean/std."""
    return _cached("clip-aug", _clip_image_transform)(image)


def clip_tokens(text: str):
    """OpenAI CLIP's tokens, 77 long; a longer caption is cut with its end token kept last (`truncate=True`)."""
    from open_clip.tokenizer import tokenize

    return tokenize([text])[0]


def dedup_image(image):
    """The ISC descriptor's input: 512 x 512 (aspect not kept), bilinear, mean/std 0.5."""
    return _cached("dedup-aug", _dedup_transform)(image)


def faces_image(image, size: int = 224):
    """SCRFD's input as dataset2metadata makes it: padded to a square with white (left/top get the floor of half
    the padding), bicubic resize to 224, mean/std 0.5; with the padding as fractions of the square's side
    (left, top, right, bottom), to map boxes back to the unpadded image."""
    import numpy as np
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    w, h = image.size
    side = max(w, h)
    left, top = (side - w) // 2, (side - h) // 2
    pad = [left, top, side - w - left, side - h - top]
    square = F.pad(image, pad, fill=255, padding_mode="constant")
    x = F.to_tensor(F.resize(square, size, interpolation=InterpolationMode.BICUBIC))
    x = F.normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return x.unsqueeze(0), torch.from_numpy(np.asarray(pad, dtype=np.float32) / side).unsqueeze(0)


def identity(value):
    return value


PREPROCESSORS = {"clip-aug": clip_image, "clip-tokens": clip_tokens, "identity": identity, "dedup-aug": dedup_image,
                 "faces-aug": faces_image}


# ------------------------------------------------------------------------------------------------- models

class OaiClip:
    """OpenAI's CLIP through open_clip: image and text features, each L2-normalised; fp16 on CUDA as OpenAI's
    own `clip.load` computes them (fp32 on the CPU)."""

    raw_inputs = ["image", "text"]
    preprocessors = ["clip-aug", "clip-tokens"]
    dependencies: list[str] = []
    to_device = True
    arch = ""
    pretrained: str | None = "openai"

    def __init__(self, device):
        import open_clip
        import torch

        self.device = torch.device(device)
        self.model = open_clip.create_model(self.arch, pretrained=self.pretrained, device=self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.half()
        self.dtype = next(self.model.parameters()).dtype

    def __call__(self, images, tokens):
        img = self.model.encode_image(images.to(self.dtype))
        txt = self.model.encode_text(tokens)
        return img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)


class OaiClipVitB32(OaiClip):
    name = "oai-clip-vit-b32"
    arch = "ViT-B-32-quickgelu"


class OaiClipVitL14(OaiClip):
    name = "oai-clip-vit-l14"
    arch = "ViT-L-14-quickgelu"


def nsfw_mlp():
    """dataset2metadata's NSFW classifier over L/14 image features, with its layer names (its state dict's keys)."""
    from torch import nn

    return nn.Sequential(OrderedDict([
        ("norm", nn.BatchNorm1d(768, eps=0.0)), ("dense", nn.Linear(768, 64)), ("relu", nn.ReLU()),
        ("dense1", nn.Linear(64, 512)), ("relu1", nn.ReLU()), ("dense2", nn.Linear(512, 256)), ("relu2", nn.ReLU()),
        ("dense3", nn.Linear(256, 1)), ("sigmoid", nn.Sigmoid())]))


class NsfwImage:
    """Probability that an image is NSFW, from the (normalised) L/14 image feature: one value per sample."""

    name = "nsfw-image-oai-clip-vit-l-14"
    raw_inputs: list[str] = []
    preprocessors: list[str] = []
    dependencies = ["oai-clip-vit-l14"]
    to_device = True

    def weights(self) -> Path:
        return d2m_asset("nsfw-image")

    def __init__(self, device):
        self.model = nsfw_mlp()
        state = load_weights(self.weights(), "NSFW classifier")
        try:
            self.model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise UserError(f"{self.weights()}: not the NSFW classifier's weights ({str(e).splitlines()[0]})")
        self.model.to(device).eval()

    def __call__(self, l14):
        return self.model(l14[0].float()).reshape(-1)  # [B] also for a batch of one


class Detoxify:
    """Detoxify's multilingual model (XLM-R base), score = the max over its class names' sigmoid outputs. Built
    from the checkpoint with transformers as Detoxify builds it, but read with weights_only=True; any device."""

    name = "nsfw-detoxify"
    raw_inputs = ["text"]
    preprocessors = ["identity"]
    dependencies: list[str] = []
    to_device = False
    hf_config: str | None = None  # a local folder with the config and tokenizer (default: the checkpoint's hub name)

    def checkpoint(self) -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / Path(DETOXIFY_URL).name

    def __init__(self, device):
        import torch
        import transformers

        path = self.checkpoint()
        if not path.exists():
            torch.hub.download_url_to_file(DETOXIFY_URL, str(path), hash_prefix="0b549669")
        loaded = load_weights(path, "Detoxify")
        try:
            args = loaded["config"]["arch"]["args"]
            classes = loaded["config"]["dataset"]["args"]["classes"]
            model_class = getattr(transformers, args["model_name"])
            tokenizer_class = getattr(transformers, args["tokenizer_name"])
            source = self.hf_config or args["model_type"]
            config = model_class.config_class.from_pretrained(source, num_labels=args["num_classes"])
            self.model = model_class(config)
            missing, unexpected = self.model.load_state_dict(loaded["state_dict"], strict=False)
        except (KeyError, TypeError, AttributeError, RuntimeError) as e:
            raise UserError(f"{path}: not a Detoxify checkpoint ({type(e).__name__}: {e})") from None
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]  # a buffer older versions saved
        if missing or unexpected:
            raise UserError(f"{path}: its weights do not fit {args['model_name']} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
        self.tokenizer = tokenizer_class.from_pretrained(source)
        self.classes = list(classes)
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    def __call__(self, texts):
        import torch

        inputs = self.tokenizer(list(texts), return_tensors="pt", truncation=True, padding=True).to(self.device)
        with torch.no_grad():
            scores = torch.sigmoid(self.model(**inputs).logits.float())
        # Detoxify.predict reports the checkpoint's class names only: the first len(classes) outputs (the
        # multilingual checkpoint has 16 outputs, its 7 classes then identity labels that are not scored)
        return scores[:, :len(self.classes)].max(dim=1).values.cpu()


class IscDescriptor:
    """The ISC21 copy-detection descriptor (isc_ft_v107: EfficientNetV2-M features, GeM with p = 1, fc to 256
    without bias, BatchNorm, L2) and each image's highest cosine similarity to DataComp's evaluation images."""

    name = "dedup-isc-ft-v107"
    raw_inputs = ["image"]
    preprocessors = ["dedup-aug"]
    dependencies: list[str] = []
    to_device = True
    arch = "tf_efficientnetv2_m.in21k_ft_in1k"  # timm's name today for the checkpoint's tf_efficientnetv2_m_in21ft1k

    def checkpoint(self) -> Path:
        import torch

        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(ISC_URL).name
        if not path.exists():
            torch.hub.download_url_to_file(ISC_URL, str(path))
        return path

    def references(self) -> Path:
        return d2m_asset("dedup-embeddings")

    def __init__(self, device):
        import timm
        import torch

        self.backbone = timm.create_model(self.arch, features_only=True, pretrained=False)
        channels = self.backbone.feature_info.channels()[-1]
        self.fc = torch.nn.Linear(channels, 256, bias=False)
        self.bn = torch.nn.BatchNorm1d(256)
        ckpt = load_weights(self.checkpoint(), "ISC descriptor", allow=(argparse.Namespace,))
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        state = {k.removeprefix("module."): v for k, v in state.items()}
        parts = {"backbone": self.backbone, "fc": self.fc, "bn": self.bn}
        try:
            for prefix, module in parts.items():
                module.load_state_dict({k[len(prefix) + 1:]: v for k, v in state.items()
                                        if k.startswith(prefix + ".")}, strict=True)
        except RuntimeError as e:
            raise UserError(f"{self.checkpoint()}: not the ISC descriptor's weights ({str(e).splitlines()[0]})")
        refs = load_weights(self.references(), "evaluation-set embeddings")
        self.device = torch.device(device)
        for module in parts.values():
            module.to(self.device).eval()
        self.refs = torch.as_tensor(refs, dtype=torch.float32).to(self.device).t()  # [256, N]

    def embed(self, images):
        import torch.nn.functional as F

        x = self.backbone(images)[-1]
        x = x.clamp(min=1e-6).mean(dim=(2, 3))  # GeM with p = 1 at evaluation
        return F.normalize(self.bn(self.fc(x)))

    def __call__(self, images):
        z = self.embed(images)
        return z, (z @ self.refs).max(dim=1).values


class Scrfd10G:
    """SCRFD-10G face boxes as dataset2metadata computes them (`mode.datacomp.scrfd`, checked bit for bit against
    its code): on the white-padded 224 px square, score > 0.3 after NMS at 0.45, boxes [x1, y1, x2, y2] in [0, 1]
    of the unpadded image; a list of boxes per sample (empty without faces)."""

    name = "faces-scrfd10g"
    raw_inputs = ["image"]
    preprocessors = ["faces-aug"]
    dependencies: list[str] = []
    to_device = True

    def weights(self) -> Path:
        return d2m_asset("faces-scrfd10g")

    def __init__(self, device):
        from mode.datacomp.scrfd import build_scrfd10g

        ckpt = load_weights(self.weights(), "SCRFD-10G")
        try:
            self.model = build_scrfd10g(ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt
                                        else ckpt)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise UserError(f"{self.weights()}: not SCRFD-10G's weights ({str(e).splitlines()[0]})") from None
        self.model.to(device)

    def __call__(self, faces):
        from mode.datacomp.scrfd import detect

        images, paddings = faces
        return detect(self.model, images, paddings.cpu())


MODELS = {cls.name: cls for cls in (OaiClipVitB32, OaiClipVitL14, NsfwImage, Detoxify, IscDescriptor, Scrfd10G)}


# ------------------------------------------------------------------------------------------ postprocessors

def select(outputs: dict, model: str, index: int, to_cpu: bool = True):
    value = outputs[model][index]
    return value.cpu() if to_cpu else value


def take(outputs: dict, model: str, to_cpu: bool = True):
    value = outputs[model]
    return value.cpu() if to_cpu and hasattr(value, "cpu") else value


def batched_dot_product(outputs: dict, model: str):
    """CLIP score: the cosine of the normalised image and text features, as is (not x100, not clamped), computed
    in the features' own dtype as dataset2metadata's einsum (fp16 on CUDA); stored as float64."""
    import torch

    img, txt = outputs[model]
    return torch.einsum("bn,bn->b", img, txt).cpu()


COLUMNS = {
    "oai-clip-vit-b32-score": partial(batched_dot_product, model="oai-clip-vit-b32"),
    "oai-clip-vit-l14-score": partial(batched_dot_product, model="oai-clip-vit-l14"),
    "nsfw-detoxify-score": partial(take, model="nsfw-detoxify"),
    "nsfw-image-score": partial(take, model="nsfw-image-oai-clip-vit-l-14"),
    "dedup-isc-ft-v107-score": partial(select, model="dedup-isc-ft-v107", index=1),
    "face-boxes": partial(take, model="faces-scrfd10g", to_cpu=False),
}
FEATURES = {
    "oai-clip-vit-b32-image": partial(select, model="oai-clip-vit-b32", index=0),
    "oai-clip-vit-b32-text": partial(select, model="oai-clip-vit-b32", index=1),
    "oai-clip-vit-l14-image": partial(select, model="oai-clip-vit-l14", index=0),
    "oai-clip-vit-l14-text": partial(select, model="oai-clip-vit-l14", index=1),
    "dedup-isc-ft-v107-image": partial(select, model="dedup-isc-ft-v107", index=0),
}

# use_datacomp_keys: DataComp's column and feature names (dataset2metadata's d2m_to_datacomp_keys), and `caption`,
# which DataComp's metadata calls `text` (the filters read that column)
DATACOMP_KEYS = {
    "oai-clip-vit-b32-score": "clip_b32_similarity_score", "oai-clip-vit-l14-score": "clip_l14_similarity_score",
    "face-boxes": "face_bboxes", "oai-clip-vit-b32-image": "b32_img", "oai-clip-vit-b32-text": "b32_txt",
    "oai-clip-vit-l14-image": "l14_img", "oai-clip-vit-l14-text": "l14_txt", "dedup-isc-ft-v107-score": "dedup",
    "caption": "text",
}


class Registry:
    """The four lookups of one run: the built-in ones, with a custom_pypath file's entries added over them."""

    def __init__(self, custom_pypath: str | None = None):
        self.models = dict(MODELS)
        self.preprocessors = dict(PREPROCESSORS)
        self.columns = dict(COLUMNS)
        self.features = dict(FEATURES)
        if custom_pypath:
            self.add_file(custom_pypath)

    def add_file(self, path: str) -> None:
        import importlib.util

        if not Path(path).is_file():
            raise UserError(f"custom_pypath: {path} is not a file")
        spec = importlib.util.spec_from_file_location(f"d2m_custom_{Path(path).stem}", path)
        if spec is None:
            raise UserError(f"custom_pypath: {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except UserError:
            raise
        except Exception as e:  # the user's file: a syntax error or a failing import is theirs to fix, in one line
            where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
            raise UserError(f"custom_pypath {path}{where}: {type(e).__name__}: {e}") from None
        for attr, table in (("model_lookup", self.models), ("preprocessor_lookup", self.preprocessors),
                            ("postprocess_parquet_lookup", self.columns),
                            ("postprocess_feature_lookup", self.features)):
            entries = getattr(module, attr, {})
            if not isinstance(entries, dict):
                raise UserError(f"custom_pypath {path}: {attr} must be a dict of name -> entry")
            table.update(entries)
