"""SCRFD-10G, the face detector dataset2metadata runs for DataComp's `face_bboxes` column: inference only.

A re-implementation of dataset2metadata's `face_detection` package (itself a trimmed copy of InsightFace's
mmdet-based SCRFD) for the one configuration it uses: a ResNetV1e backbone (deep 3-conv stem, 2x2 max pool,
BasicBlock stages of 3/4/2/3 blocks with 56/88/88/224 channels, avg-pool shortcuts), a PAFPN neck on its last three
stages (56 channels, no norm, no activation) and an SCRFD head shared by the three levels (3 x conv3x3+GN(16)+ReLU
at 80 channels, 2 anchors per position, sigmoid scores, distances scaled by a learnable scale per level).

Weights: dataset2metadata's release asset `scrfd_10g.pt`, a dict whose "state_dict" loads into
`build_scrfd10g()` with `load_state_dict(strict=True)`: every parameter and buffer has the reference's name and
shape, BN running stats, `num_batches_tracked`, the head's `scales.*.scale` and the unused
`bbox_head.integral.project` buffer included (the order of the keys is the reference's too).

`detect` is `FaceDetector.detect_faces`: uint8 images are divided by 255; boxes are decoded from anchor centres
(x * stride, y * stride; both anchors of a position share it) as centre -/+ distance * stride, clipped to the
padded input, kept when sigmoid > 0.02, NMS at IoU 0.45 (torchvision, in the reference's order: by score, and for
10000+ candidates re-sorted as its split path does), kept when score > `score_threshold`, then mapped to [0, 1] of
the unpadded image with the padding fractions (left, top, right, bottom) and clamped.

Verified against dataset2metadata's own code (`benchmarks/scrfd_reference_check.py`, its commit a16f41b): identical
state_dict keys, shapes and order; on the same seeded random weights and inputs (224 x 224 padded batches, 200 x 312,
uint8, a 640 x 640 decode with 10000+ candidates) raw head outputs, NMS survivors and final boxes equal bit for bit.
Not carried over: training, losses, ONNX paths, keypoints (the reference's head returns zeros for them; this one
returns only scores and distances) and the reference's empty `reg_stride_convs` (no parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2  # scales (1, 2) x ratio 1.0 at every position
SCORE_THR = 0.02  # dataset2metadata's TEST_CFG
IOU_THR = 0.45
SPLIT_THR = 10000  # mmdet's batched_nms re-sorts its output from this many candidates on


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _conv3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = _bn(cout), _bn(cout)  # registered first, as in the reference
        self.conv1, self.conv2 = _conv3(cin, cout, stride), _conv3(cout, cout)
        self.downsample = None
        if stride != 1 or cin != cout:  # ResNet-D shortcut: average pool, then a 1x1 conv
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(cin, cout, 1, bias=False), _bn(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Backbone(nn.Module):
    """ResNetV1e: returns the outputs of the four stages (strides 4, 8, 16, 32)."""

    def __init__(self, blocks=(3, 4, 2, 3), planes=(56, 88, 88, 224), stem: int = 56):
        super().__init__()
        half = stem // 2
        self.stem = nn.Sequential(_conv3(3, half, 2), _bn(half), nn.ReLU(), _conv3(half, half), _bn(half), nn.ReLU(),
                                  _conv3(half, stem), _bn(stem), nn.ReLU())
        self.maxpool = nn.MaxPool2d(2, 2)
        cin = stem
        for i, (n, cout) in enumerate(zip(blocks, planes)):
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", nn.Sequential(
                *[_BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(n)]))
            cin = cout

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


class _Conv(nn.Module):
    """mmcv's ConvModule as used here: `.conv`, then `.gn` + ReLU when `groups` is given."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=groups is None)
        self.gn = None if groups is None else nn.GroupNorm(groups, cout)

    def forward(self, x):
        x = self.conv(x)
        return x if self.gn is None else F.relu(self.gn(x))


class _PAFPN(nn.Module):
    """Top-down FPN on the backbone's stages 2-4, then the bottom-up path; three 56-channel outputs."""

    def __init__(self, in_channels=(88, 88, 224), out: int = 56):
        super().__init__()
        n = len(in_channels)
        self.lateral_convs = nn.ModuleList(_Conv(c, out, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(_Conv(out, out, 3) for _ in range(n))
        self.downsample_convs = nn.ModuleList(_Conv(out, out, 3, stride=2) for _ in range(n - 1))
        self.pafpn_convs = nn.ModuleList(_Conv(out, out, 3) for _ in range(n - 1))

    def forward(self, feats):
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        mid = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        for i, conv in enumerate(self.downsample_convs):
            mid[i + 1] = mid[i + 1] + conv(mid[i])
        return [mid[0]] + [conv(x) for conv, x in zip(self.pafpn_convs, mid[1:])]


class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.scale


class _Integral(nn.Module):
    """Holds the reference's `integral.project` buffer (DFL is off: unused at inference, kept for strict loading)."""

    def __init__(self, reg_max: int = 8):
        super().__init__()
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))


class _Head(nn.Module):
    """One conv tower shared by classification and regression and by the three levels (ModuleDict key "0")."""

    def __init__(self, cin: int = 56, feat: int = 80, stacked: int = 3, groups: int = 16):
        super().__init__()
        self.cls_stride_convs = nn.ModuleDict(
            {"0": nn.ModuleList(_Conv(cin if i == 0 else feat, feat, 3, groups=groups) for i in range(stacked))})
        self.stride_cls = nn.ModuleDict({"0": _conv3(feat, NUM_ANCHORS, bias=True)})
        self.stride_reg = nn.ModuleDict({"0": _conv3(feat, 4 * NUM_ANCHORS, bias=True)})
        self.scales = nn.ModuleList(_Scale() for _ in STRIDES)
        self.integral = _Integral()

    def forward(self, feats):
        cls_scores, bbox_preds = [], []
        for x, scale in zip(feats, self.scales):
            for conv in self.cls_stride_convs["0"]:
                x = conv(x)
            cls_scores.append(self.stride_cls["0"](x))
            bbox_preds.append(scale(self.stride_reg["0"](x)))
        return cls_scores, bbox_preds


class SCRFD10G(nn.Module):
    """`forward(images [N,3,H,W])` -> (cls logits per level [N,2,h,w], distances / stride per level [N,8,h,w])."""

    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.neck = _PAFPN()
        self.bbox_head = _Head()

    def forward(self, images):
        return self.bbox_head(self.neck(self.backbone(images)[1:]))


def build_scrfd10g(state_dict: dict | None = None) -> SCRFD10G:
    """The model in eval mode; `state_dict` (the checkpoint's "state_dict") is loaded strictly when given."""
    model = SCRFD10G()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def anchor_centers(h: int, w: int, stride: int, device=None) -> torch.Tensor:
    """[h * w * NUM_ANCHORS, 2] (x, y) in input pixels, row-major, the anchors of a position consecutive."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    xy = torch.stack([xs, ys], -1).reshape(-1, 1, 2).expand(-1, NUM_ANCHORS, 2).reshape(-1, 2)
    return (xy * stride).float()


def decode(cls_scores, bbox_preds, img_hw, score_thr: float = SCORE_THR, iou_thr: float = IOU_THR):
    """Per-level head outputs of a batch -> per image a [K, 5] tensor (x1, y1, x2, y2, score) in input pixels,
    by decreasing score after NMS (the reference's `get_bboxes` with its TEST_CFG). One image at a time, as the
    reference: the sigmoid's vectorised and scalar paths can differ by an ulp, so its input keeps the same shape."""
    H, W = img_hw
    centers = [anchor_centers(*c.shape[-2:], s, c.device) for c, s in zip(cls_scores, STRIDES)]
    out = []
    for i in range(len(cls_scores[0])):
        boxes, scores = [], []
        for cls, reg, ctr, stride in zip(cls_scores, bbox_preds, centers, STRIDES):
            scores.append(cls[i].permute(1, 2, 0).reshape(-1).sigmoid())
            dist = reg[i].permute(1, 2, 0).reshape(-1, 4) * stride
            b = torch.cat([ctr - dist[:, :2], ctr + dist[:, 2:]], 1)
            b[:, 0::2].clamp_(min=0, max=W)
            b[:, 1::2].clamp_(min=0, max=H)
            boxes.append(b)
        b, s = torch.cat(boxes), torch.cat(scores)
        keep = s > score_thr
        b, s = b[keep], s[keep]
        keep = torchvision.ops.nms(b, s, iou_thr)
        if len(b) >= SPLIT_THR:  # mmdet's split path: kept indices in input order, then sorted by score
            keep = keep.sort().values
            keep = keep[s[keep].sort(descending=True).indices]
        out.append(torch.cat([b[keep], s[keep, None]], 1))
    return out


def rescale(boxes: torch.Tensor, padding: torch.Tensor, img_hw) -> torch.Tensor:
    """Boxes in padded-input pixels -> fractions of the unpadded image, clamped to [0, 1]; `padding` is
    (left, top, right, bottom) as fractions of the padded side."""
    H, W = img_hw
    left, top, right, bottom = padding.unbind()
    out = torch.empty_like(boxes, dtype=torch.float32)
    out[:, 0::2] = torch.clamp((boxes[:, 0::2] - left * W) / ((1.0 - left - right) * W), 0, 1)
    out[:, 1::2] = torch.clamp((boxes[:, 1::2] - top * H) / ((1.0 - top - bottom) * H), 0, 1)
    return out


@torch.no_grad()
def detect(model: SCRFD10G, images: torch.Tensor, paddings: torch.Tensor,
           score_threshold: float = 0.3) -> list[list[list[float]]]:
    """dataset2metadata's `FaceDetector.detect_faces`: images [N,3,H,W] (normalised floats, or uint8 / 255),
    paddings [N,4] -> per image a list of [x1, y1, x2, y2] in [0, 1] of the unpadded image, by decreasing score."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError("Images should be provided as a tensor of shape (N,3,H,W).")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    images = images.to(next(model.parameters()).device)
    hw = tuple(images.shape[-2:])
    dets = decode(*model(images), hw)
    return [rescale(d[d[:, 4] > score_threshold, :4], pad, hw).tolist() for d, pad in zip(dets, paddings.unbind())]
