"""mode.datacomp.scrfd: SCRFD-10G's layout as dataset2metadata's code builds it (numbers taken from its
`state_dict()`), strict loading, and the decode / NMS / rescale math by hand. Equality with dataset2metadata's own
code on random weights is checked by benchmarks/scrfd_reference_check.py (it needs the reference checkout)."""

import hashlib
import math

import pytest
import torch

from mode.datacomp.scrfd import build_scrfd10g, decode, detect, rescale

# from dataset2metadata's SCRFD(MODEL_CONFIG...).state_dict(), commit a16f41b
N_KEYS, N_PARAMS, N_STATE = 217, 3860225, 3866760
KEYS_SHA256 = "fe8209e96b94febd2fa7fbb97352e4082b1b1a9797df23417dadf2e9a5cd7705"  # "key shape" lines, in order
SHAPES = {
    "backbone.stem.0.weight": (28, 3, 3, 3),
    "backbone.stem.7.num_batches_tracked": (),
    "backbone.layer2.0.downsample.1.weight": (88, 56, 1, 1),
    "backbone.layer3.0.downsample.2.running_var": (88,),
    "backbone.layer4.2.conv2.weight": (224, 224, 3, 3),
    "neck.lateral_convs.2.conv.weight": (56, 224, 1, 1),
    "neck.pafpn_convs.1.conv.bias": (56,),
    "bbox_head.cls_stride_convs.0.0.conv.weight": (80, 56, 3, 3),
    "bbox_head.cls_stride_convs.0.2.gn.bias": (80,),
    "bbox_head.stride_cls.0.weight": (2, 80, 3, 3),
    "bbox_head.stride_reg.0.bias": (8,),
    "bbox_head.scales.2.scale": (),
    "bbox_head.integral.project": (9,),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions: one thread is as fast, and not stalled by a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return build_scrfd10g()


def test_state_dict_is_the_references(model):
    sd = model.state_dict()
    assert len(sd) == N_KEYS
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS
    assert sum(v.numel() for v in sd.values()) == N_STATE
    for key, shape in SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    for absent in ("backbone.layer1.0.downsample.1.weight", "bbox_head.cls_stride_convs.0.0.conv.bias"):
        assert absent not in sd
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
    assert hashlib.sha256(lines.encode()).hexdigest() == KEYS_SHA256


def _random(seed=0, cls_bias=0.0):
    """Random weights, BN stats included; zero-mean cls logits around `cls_bias`, positive box extents."""
    torch.manual_seed(seed)
    m = build_scrfd10g()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        head = m.bbox_head
        head.stride_cls["0"].weight.mul_(0.01)
        head.stride_cls["0"].bias.fill_(cls_bias)
        head.stride_reg["0"].weight.mul_(0.1)
        head.stride_reg["0"].bias.fill_(1.5)
    return m


def test_strict_roundtrip(tmp_path):
    m = _random(1)
    torch.save({"state_dict": m.state_dict()}, tmp_path / "scrfd.pt")
    again = build_scrfd10g(torch.load(tmp_path / "scrfd.pt", weights_only=True)["state_dict"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (cls_a, reg_a), (cls_b, reg_b) = m(x), again(x)
    for a, b in zip(cls_a + reg_a, cls_b + reg_b):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError):
        build_scrfd10g({k: v for k, v in m.state_dict().items() if "integral" not in k})


def test_detect_on_random_weights():
    m = _random(2)
    images = torch.rand(2, 3, 64, 96) * 2 - 1
    paddings = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.25, 0.1, 0.25, 0.0]])
    out = detect(m, images, paddings)
    assert len(out) == 2 and all(len(img) > 0 for img in out)
    for img in out:
        for x1, y1, x2, y2 in img:
            assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
    assert detect(m, images, paddings, score_threshold=1.0) == [[], []]
    as_uint8 = (torch.rand(1, 3, 32, 32) * 255).to(torch.uint8)
    assert detect(m, as_uint8, paddings[:1]) == detect(m, as_uint8.float() / 255.0, paddings[:1])
    with pytest.raises(ValueError):
        detect(m, images[:, :1], paddings)


def test_rescale_by_hand():
    # 224 x 224 input, the image padded left and right by 25% each: it spans x in [56, 168]
    boxes = torch.tensor([[56.0, 0.0, 168.0, 224.0], [112.0, 56.0, 140.0, 112.0], [0.0, 10.0, 50.0, 20.0]])
    out = rescale(boxes, torch.tensor([0.25, 0.0, 0.25, 0.0]), (224, 224))
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.25, 0.75, 0.5], [0.0, 10 / 224, 0.0, 20 / 224]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_decode_centers_clamp_threshold_and_nms():
    """64 x 64 input; every distance = 1 (x stride). Anchor centres are (x * stride, y * stride)."""
    cls = [torch.full((1, 2, 64 // s, 64 // s), -10.0) for s in (8, 16, 32)]
    reg = [torch.ones(1, 8, 64 // s, 64 // s) for s in (8, 16, 32)]
    cls[0][0, 0, 2, 2] = 3.0  # centre (16, 16): [8, 8, 24, 24]
    cls[0][0, 1, 2, 2] = 2.0  # its second anchor, the same box: removed by NMS
    cls[0][0, 0, 2, 3] = 1.0  # [16, 8, 32, 24], IoU 1/3 with the first: kept
    cls[0][0, 0, 0, 0] = 1.5  # [-8, -8, 8, 8] clamped to [0, 0, 8, 8]
    cls[1][0, 1, 1, 1] = 0.5  # stride 16, centre (16, 16): [0, 0, 32, 32]
    cls[2][0, 0, 1, 1] = -3.8  # sigmoid 0.0219 > 0.02: [0, 0, 64, 64]
    cls[2][0, 0, 0, 1] = -4.0  # sigmoid 0.0180: dropped
    (det,) = decode(cls, reg, (64, 64))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = torch.tensor([[8, 8, 24, 24, sig(3.0)], [0, 0, 8, 8, sig(1.5)], [16, 8, 32, 24, sig(1.0)],
                             [0, 0, 32, 32, sig(0.5)], [0, 0, 64, 64, sig(-3.8)]])
    assert torch.allclose(det, expected, atol=1e-6)
