"""clip-rocket's model additions on an open_clip CLIP, trained by open_clip_train's own loop (`--rocket OBJ`).

`attach(model, args)` (called on the model open_clip_train builds, before DDP) adds, as submodules saved and
resumed with the run's checkpoints:

- `model.rocket`: `RocketHeads` (the augmented views' heads and logit scale, the objective's projectors);
- `model.rocket_momentum` (BYOLIP only): a copy of the CLIP and its heads, never trained by the optimizer
  (requires_grad False), moved towards the online weights after each optimizer step.

and gives the model a training forward for view batches: `model(images, texts)` with images [B, 1 + A, C, H, W]
and texts [B, 1 + A, L] (view 0 the global one, as the rocket loader yields them) returns the dict
`RocketLoss` reads; any other input runs open_clip's own CLIP forward, so open_clip_train's evaluation and
`encode_image/encode_text` are unchanged. The heads read the towers' features before their projections, as
clip-rocket's do: `tower_features` computes them and the projection in one pass (open_clip's ViT and timm image
towers and the built-in text tower). The class of the model becomes a subclass of its own class (state-dict
keys and every method stay open_clip's).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mode.core.errors import UserError
from open_clip_patch import rocket


def vision_width(model) -> int:
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    v = model.visual
    if isinstance(v, VisionTransformer) and v.proj is not None and not v.output_tokens:
        return int(v.proj.shape[0])
    if isinstance(v, TimmModel) and getattr(v.trunk, "num_classes", 0) == 0:  # pooled trunk, then open_clip's head
        return int(v.trunk.num_features)
    raise UserError(f"--rocket: image tower {type(v).__name__} is not supported (open_clip's ViT, or a timm tower "
                    "with open_clip's own projection head)")


def text_width(model) -> int:
    if getattr(model, "text_projection", None) is None or not hasattr(model, "token_embedding"):
        raise UserError("--rocket: needs open_clip's CLIP with its built-in text tower and a text projection "
                        f"({type(model).__name__} has none)")
    p = model.text_projection
    return int(p.in_features if isinstance(p, nn.Linear) else p.shape[0])


def image_features(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features before the projection, projected embedding) of open_clip's image tower, in one pass."""
    from open_clip.timm_model import TimmModel

    v = model.visual
    feats = v.trunk(images) if isinstance(v, TimmModel) else v._pool(v.transformer(v._embeds(images)))[0]
    return feats, project_image(model, feats)


def text_features(model, text: torch.Tensor, dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features before the projection, projected embedding) of the built-in text tower. `dropout` > 0 (local
    captions, `--text-dropout-prob`) drops units of the residual stream at the input of every block while
    training, as clip-rocket's local text mode does."""
    from open_clip.transformer import text_global_pool

    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding.to(cast)
    if dropout > 0 and model.training:
        t = model.transformer
        if not t.batch_first:
            x = x.transpose(0, 1)
        for block in t.resblocks:
            x = block(F.dropout(x, dropout, training=True), attn_mask=model.attn_mask)
        if not t.batch_first:
            x = x.transpose(0, 1)
    else:
        x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    feats = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return feats, project_text(model, feats)


class RocketForward:
    """Mixed into the model's class by `attach`: the training forward over view batches."""

    rocket_text_dropout: float = 0.0

    def forward(self, image=None, text=None):
        if image is None or text is None or image.ndim != 5:
            return super().forward(image, text)
        out = self.rocket_views(image, text)
        momentum = getattr(self, "rocket_momentum", None)
        if momentum is not None:
            with torch.no_grad():
                target = momentum.rocket_views(image, text)
            out.update({f"{k}_momentum": v for k, v in target.items() if k.startswith("v_")})
        return out

    def rocket_views(self, image: torch.Tensor, text: torch.Tensor) -> dict:
        heads = self.rocket
        f_img, z_img = image_features(self, image[:, 0])
        f_txt, z_txt = text_features(self, text[:, 0])
        f_imgs = [image_features(self, image[:, k])[0] for k in range(1, image.shape[1])]
        f_txts = [text_features(self, text[:, k], self.rocket_text_dropout)[0] for k in range(1, text.shape[1])]
        out = {"image_features": F.normalize(z_img, dim=-1), "text_features": F.normalize(z_txt, dim=-1),
               "logit_scale": self.logit_scale.exp()}
        if heads.separate_proj:
            out["h_images"] = [heads.l2l_image_projector(f) for f in f_imgs]
            out["h_texts"] = [heads.l2l_text_projector(f) for f in f_txts]
            out["h_logit_scale"] = heads.l2l_logit_scale.exp()
        else:  # clip-rocket without --separate-proj: the CLIP's own projections and scale
            out["h_images"] = [project_image(self, f) for f in f_imgs]
            out["h_texts"] = [project_text(self, f) for f in f_txts]
            out["h_logit_scale"] = out["logit_scale"]
        if heads.objective in ("siamlip", "byolip", "barlip"):
            out["v_image"], out["v_text"] = heads.image_projector_ssl(f_img), heads.text_projector_ssl(f_txt)
            out["v_images"] = [heads.image_projector_ssl(f) for f in f_imgs]
            out["v_texts"] = [heads.text_projector_ssl(f) for f in f_txts]
        if heads.objective in ("siamlip", "byolip"):
            out["p_image"], out["p_text"] = heads.image_text_predictor(out["v_image"]), \
                heads.text_image_predictor(out["v_text"])
            out["p_images"] = [heads.image_text_predictor(v) for v in out["v_images"]]
            out["p_texts"] = [heads.text_image_predictor(v) for v in out["v_texts"]]
        return out


def project_image(model, feats: torch.Tensor) -> torch.Tensor:
    """open_clip's image projection of tower features (timm: its head)."""
    from open_clip.timm_model import TimmModel

    return model.visual.head(feats) if isinstance(model.visual, TimmModel) else feats @ model.visual.proj


def project_text(model, feats: torch.Tensor) -> torch.Tensor:
    proj = model.text_projection
    return proj(feats) if isinstance(proj, nn.Linear) else feats @ proj


_CLASSES: dict[type, type] = {}


def rocket_class(cls: type) -> type:
    """`cls` with the rocket forward (one class per open_clip class, so pickling and deepcopy see one type)."""
    if issubclass(cls, RocketForward):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Rocket{cls.__name__}", (RocketForward, cls), {"__module__": __name__})
    return _CLASSES[cls]


def attach(model: nn.Module, objective: str, text_dropout: float = 0.0, **heads) -> nn.Module:
    """Add the rocket heads (`rocket.RocketHeads`, given `heads` as keywords) and BYOLIP's momentum copy to
    `model` in place; returns it."""
    if hasattr(model, "rocket"):
        return model
    param = next(model.parameters())
    heads = rocket.RocketHeads(vision_width(model), text_width(model), _embed_dim(model), objective, **heads)
    model.__class__ = rocket_class(type(model))
    model.rocket = heads.to(device=param.device)
    model.rocket_text_dropout = float(text_dropout)
    if objective == "byolip":
        target = copy.deepcopy(model)  # the CLIP and its heads, loaded with the online weights (clip-rocket)
        for p in target.parameters():
            p.requires_grad_(False)
        model.rocket_momentum = target
    return model


def _embed_dim(model) -> int:
    proj = model.text_projection
    return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])


def online_parameters(model: nn.Module):
    """The model's parameters in the order its momentum copy holds them (the copy's own excluded)."""
    return [p for n, p in model.named_parameters() if not n.startswith("rocket_momentum.")]


@torch.no_grad()
def after_step(model: nn.Module, tau: float) -> None:
    """After each optimizer step: clamp the views' log scale to [0, ln 100] (stock clamps the CLIP's) and move
    BYOLIP's momentum copy towards the online weights."""
    if model.rocket.separate_proj:
        rocket.clamp_logit_scales(model.rocket.l2l_logit_scale)
    target = getattr(model, "rocket_momentum", None)
    if target is not None:
        mom = list(target.parameters())
        online = online_parameters(model)
        assert len(mom) == len(online)
        for p, pm in zip(online, mom):
            pm.mul_(tau).add_(p.detach(), alpha=1 - tau)


class ZHModel(nn.Module):
    """A CLIP trained with --rocket, seen through its views' heads for zero-shot evaluation (clip-rocket's
    `predict_zeroshot`): branch `h` embeds with the heads alone; `zhW` returns [sqrt(W) z, sqrt(1 - W) h] (each part
    unit norm), whose dot products are W x the z cosine + (1 - W) x the h cosine; `branches` tells the zero-shot
    classifier to renormalise each part of the class embeddings alone."""

    def __init__(self, clip: nn.Module, heads: rocket.RocketHeads, z_weight: float | None):
        super().__init__()
        self.clip, self.heads, self.z_weight = clip, heads, z_weight
        d = _embed_dim(clip)
        self.branches = None if z_weight is None else [(0, d, z_weight), (d, 2 * d, 1 - z_weight)]

    @classmethod
    def from_state(cls, clip: nn.Module, state: dict, branch: str) -> "ZHModel":
        """`state`: the checkpoint's `rocket.*` tensors without the prefix; `branch`: h or zhW."""
        l2l = {k: v for k, v in state.items() if k.startswith("l2l_")}
        if "l2l_image_projector.layer1.weight" not in l2l:
            raise UserError(f"branch {branch}: the checkpoint's views used the CLIP's own projections (trained "
                            "without --separate-proj), so h equals z; evaluate branch z")
        hidden = int(l2l["l2l_image_projector.layer1.weight"].shape[0])
        heads = rocket.RocketHeads(vision_width(clip), text_width(clip), _embed_dim(clip), "cl2l",
                                   l2l_hidden_dim=hidden)
        try:
            heads.load_state_dict(l2l)
        except RuntimeError as e:
            raise UserError(f"branch {branch}: the checkpoint's view heads do not fit this model "
                            f"({str(e).splitlines()[0]})") from None
        param = next(clip.parameters())
        return cls(clip, heads.to(param.device), None if branch == "h" else float(branch[2:]))

    def _join(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h = F.normalize(h, dim=-1)
        if self.z_weight is None:
            return h
        w = self.z_weight
        return torch.cat([w ** 0.5 * F.normalize(z, dim=-1), (1 - w) ** 0.5 * h], dim=-1)

    def encode_image(self, image, normalize: bool = True):
        f, z = image_features(self.clip, image)
        h = self.heads.l2l_image_projector(f)
        return self._join(z, h)

    def encode_text(self, text, normalize: bool = True):
        f, z = text_features(self.clip, text)
        h = self.heads.l2l_text_projector(f)
        return self._join(z, h)
