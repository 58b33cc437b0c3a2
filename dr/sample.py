"""DataCompDR reinforcements of one sample: decode, validate, pick, encode.

A DataCompDR shard holds, beside (or instead of) the DataComp members of a sample `<key>`:

- `<key>.syn.json`  `{"syn_text": [caption, ...]}`: the synthetic captions (5 in DataCompDR).
- `<key>.paug.json` `{"param_aug": [params, ...]}`: the recorded parameters of each stored image augmentation
  (30 in DataCompDR-12M, 10 in DataCompDR-1B); `dr.transforms` replays them. Some exports carry the list as a
  JSON string; both are read.
- `<key>.npz` (float32) or `<key>.pth.gz` (gzip of a `torch.save`d dict of bfloat16 tensors) with
  `image_emb [n_aug, D]`: the teachers' embeddings of each augmented image, row i <-> `param_aug[i]`, and
  `text_emb [1 + n_syn, D]`: row 0 embeds the original caption (`<key>.txt`), row 1 + j embeds `syn_text[j]`.
  D is the concatenation of the teachers' dimensions (768 + 768 in DataCompDR); each teacher's part is
  L2-normalised by the generator, the loss does not renormalise it. When both formats are present the float32
  `npz` is read (as ml-mobileclip does).

Everything here is a pure function of bytes or of a webdataset sample dict, so it runs inside a webdataset
pipeline (`wds.map`). A bad sample raises `BadReinforcement` whose `reason` (one of `REASONS`) lets the loader
count skips by reason. Pickles are never executed: npz is read with `allow_pickle=False` and pth.gz with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

SYN_MEMBER = "syn.json"
PAUG_MEMBER = "paug.json"
EMBEDDING_FORMATS = ("npz", "pth.gz")  # in order of preference when a sample has both
SYN_KEY = "syn_text"
PAUG_KEY = "param_aug"
IMAGE_EMB = "image_emb"
TEXT_EMB = "text_emb"

REASONS = (
    "missing_member",  # no syn.json, paug.json or embeddings member
    "bad_syn",  # syn.json undecodable, no syn_text list of strings
    "bad_paug",  # paug.json undecodable, no param_aug list
    "bad_embeddings",  # npz / pth.gz undecodable, or not a mapping of arrays
    "missing_field",  # image_emb or text_emb absent
    "empty",  # no augmentation or no synthetic caption
    "wrong_ndim",  # an embedding that is not 2-D
    "aug_count_mismatch",  # image_emb rows != len(param_aug)
    "syn_count_mismatch",  # text_emb rows != 1 + len(syn_text)
    "dim_mismatch",  # image_emb and text_emb widths differ, or differ from the expected D
    "non_finite",  # NaN or inf in an embedding
)

Array = Union[np.ndarray, torch.Tensor]
Rng = Union[np.random.Generator, torch.Generator, int]


class BadReinforcement(ValueError):
    """A sample's reinforcements are missing or inconsistent; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; valid: {', '.join(REASONS)}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Reinforcement:
    """The reinforcements of one sample, as stored (numpy float32 or torch bfloat16 embeddings)."""

    syn_text: list[str]
    param_aug: list
    image_emb: Array
    text_emb: Array

    @property
    def n_aug(self) -> int:
        return len(self.param_aug)

    @property
    def n_syn(self) -> int:
        return len(self.syn_text)

    @property
    def dim(self) -> int:
        return int(self.image_emb.shape[-1])


@dataclass(frozen=True)
class Pick:
    """One training view of a sample: an augmentation, a synthetic caption and their teacher embeddings.

    The embeddings are float32 torch tensors of shape [D].
    """

    aug_idx: int
    syn_idx: int
    param_aug: Any
    syn_text: str
    image_emb: torch.Tensor
    text_emb: torch.Tensor
    syn_text_emb: torch.Tensor


# ---------------------------------------------------------------------------------------------- decoding


def _load_json(data: bytes | str | Mapping, reason: str) -> Mapping:
    if isinstance(data, Mapping):
        return data
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        raise BadReinforcement(reason, f"not JSON ({e})") from None
    if not isinstance(obj, Mapping):
        raise BadReinforcement(reason, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def decode_syn(data: bytes | str | Mapping, key: str = SYN_KEY) -> list[str]:
    """Read the synthetic captions of a `syn.json` member.

    Args:
        data: the member's bytes (or its already-decoded dict, as `wds.decode` gives).
        key: the field holding the captions.

    Returns:
        The captions, in stored order (row 1 + j of `text_emb` embeds caption j).
    """
    captions = _load_json(data, "bad_syn").get(key)
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise BadReinforcement("bad_syn", f"{key!r} is not a list of strings")
    return captions


def decode_paug(data: bytes | str | Mapping, key: str = PAUG_KEY) -> list:
    """Read the augmentation parameters of a `paug.json` member.

    Args:
        data: the member's bytes (or its already-decoded dict).
        key: the field holding the list (a JSON string holding the list is accepted too).

    Returns:
        One entry per stored augmentation (row i of `image_emb` embeds augmentation i).
    """
    params = _load_json(data, "bad_paug").get(key)
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            raise BadReinforcement("bad_paug", f"{key!r} is a string but not JSON") from None
    if not isinstance(params, list):
        raise BadReinforcement("bad_paug", f"{key!r} is not a list")
    return params


def decode_embeddings(data: bytes, ext: str) -> dict[str, Array]:
    """Read an embeddings member without executing pickles.

    Args:
        data: the member's bytes.
        ext: "npz" (numpy arrays, read with allow_pickle=False) or "pth.gz" (gzip of a torch.save'd dict of
            tensors, read with weights_only=True).

    Returns:
        name -> array (numpy for npz, torch tensors as stored for pth.gz).
    """
    if ext not in EMBEDDING_FORMATS:
        raise ValueError(f"unknown embeddings format {ext!r}; valid: {', '.join(EMBEDDING_FORMATS)}")
    try:
        if ext == "npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                out = {name: npz[name] for name in npz.files}
        else:
            out = torch.load(io.BytesIO(gzip.decompress(data)), map_location="cpu", weights_only=True)
    except Exception as e:  # any parse failure of untrusted bytes is a bad sample, not a crash
        raise BadReinforcement("bad_embeddings", f"{ext}: {type(e).__name__}: {e}") from None
    if not isinstance(out, Mapping) or not all(isinstance(v, (np.ndarray, torch.Tensor)) for v in out.values()):
        raise BadReinforcement("bad_embeddings", f"{ext}: not a mapping of arrays")
    return dict(out)


def reinforcement_from_sample(sample: Mapping[str, Any], dim: int | None = None) -> Reinforcement:
    """Build and validate the reinforcements of a webdataset sample dict.

    Args:
        sample: members by extension ("syn.json", "paug.json", "npz" and/or "pth.gz"), raw bytes or already
            decoded by `wds.decode`.
        dim: the expected embedding width D (the sum of the teachers' dimensions); None accepts any.

    Returns:
        The validated `Reinforcement`; raises `BadReinforcement` otherwise.
    """
    ext = next((e for e in EMBEDDING_FORMATS if e in sample), None)
    missing = [m for m in (SYN_MEMBER, PAUG_MEMBER) if m not in sample] + ([] if ext else ["npz|pth.gz"])
    if missing:
        raise BadReinforcement("missing_member", ", ".join(missing))
    embs = sample[ext]
    embs = embs if isinstance(embs, Mapping) else decode_embeddings(embs, ext)
    for field in (IMAGE_EMB, TEXT_EMB):
        if field not in embs:
            raise BadReinforcement("missing_field", f"{ext} has no {field!r}")
    r = Reinforcement(syn_text=decode_syn(sample[SYN_MEMBER]), param_aug=decode_paug(sample[PAUG_MEMBER]),
                      image_emb=embs[IMAGE_EMB], text_emb=embs[TEXT_EMB])
    return validate(r, dim)


# -------------------------------------------------------------------------------------------- validation


def _all_finite(x: Array) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())


def validate(r: Reinforcement, dim: int | None = None) -> Reinforcement:
    """Check that the fields of `r` agree with each other (and with `dim` when given).

    Args:
        r: the reinforcements of one sample.
        dim: the expected embedding width D; None accepts any.

    Returns:
        `r` unchanged; raises `BadReinforcement` with the first failed check's reason.
    """
    if r.n_aug == 0 or r.n_syn == 0:
        raise BadReinforcement("empty", f"{r.n_aug} augmentations, {r.n_syn} synthetic captions")
    for name, emb in ((IMAGE_EMB, r.image_emb), (TEXT_EMB, r.text_emb)):
        if emb.ndim != 2:
            raise BadReinforcement("wrong_ndim", f"{name} has shape {tuple(emb.shape)}, expected 2-D")
        if not (emb.dtype.is_floating_point if isinstance(emb, torch.Tensor) else emb.dtype.kind == "f"):
            raise BadReinforcement("bad_embeddings", f"{name} has dtype {emb.dtype}, expected floating point")
    if r.image_emb.shape[0] != r.n_aug:
        raise BadReinforcement("aug_count_mismatch", f"{IMAGE_EMB} has {r.image_emb.shape[0]} rows, "
                                                     f"{PAUG_KEY} has {r.n_aug} entries")
    if r.text_emb.shape[0] != 1 + r.n_syn:
        raise BadReinforcement("syn_count_mismatch", f"{TEXT_EMB} has {r.text_emb.shape[0]} rows, expected "
                                                     f"1 + {r.n_syn} synthetic captions")
    widths = {int(r.image_emb.shape[1]), int(r.text_emb.shape[1])}
    if len(widths) != 1 or (dim is not None and widths != {dim}):
        raise BadReinforcement("dim_mismatch", f"widths {sorted(widths)}, expected {dim or 'one width'}")
    for name, emb in ((IMAGE_EMB, r.image_emb), (TEXT_EMB, r.text_emb)):
        if not _all_finite(emb):
            raise BadReinforcement("non_finite", f"{name} has NaN or inf")
    return r


# ------------------------------------------------------------------------------------------------ picking


def _draw(rng: Rng, n: int) -> int:
    if isinstance(rng, torch.Generator):
        return int(torch.randint(n, (1,), generator=rng).item())
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    raise TypeError(f"rng must be a numpy Generator, a torch Generator or an int seed, not {type(rng).__name__}")


def _row(emb: Array, i: int) -> torch.Tensor:
    row = emb[i]
    row = row if isinstance(row, torch.Tensor) else torch.from_numpy(np.array(row))
    return row.to(torch.float32)


def pick(r: Reinforcement, rng: Rng | None = None, aug_idx: int | None = None, syn_idx: int | None = None) -> Pick:
    """Choose one stored augmentation and one synthetic caption of a sample, with their teacher embeddings.

    The augmentation index is drawn first, then the caption index, each uniformly; an index given explicitly
    (e.g. `epoch % n` for sequential sampling) is used as is and draws nothing.

    Args:
        r: validated reinforcements.
        rng: a numpy Generator, a torch Generator, or an int seed (a fresh numpy Generator); required unless
            both indices are given (sampling is never unseeded).
        aug_idx: the augmentation to use; taken modulo `r.n_aug`.
        syn_idx: the synthetic caption to use; taken modulo `r.n_syn`.

    Returns:
        A `Pick` with image_emb[aug_idx], text_emb[0] and text_emb[1 + syn_idx] as float32 tensors.
    """
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(rng)
    if rng is None and (aug_idx is None or syn_idx is None):
        raise ValueError("pick needs an rng (or a seed) unless both aug_idx and syn_idx are given")
    a = _draw(rng, r.n_aug) if aug_idx is None else aug_idx % r.n_aug
    s = _draw(rng, r.n_syn) if syn_idx is None else syn_idx % r.n_syn
    return Pick(aug_idx=a, syn_idx=s, param_aug=r.param_aug[a], syn_text=r.syn_text[s],
                image_emb=_row(r.image_emb, a), text_emb=_row(r.text_emb, 0), syn_text_emb=_row(r.text_emb, 1 + s))


# ----------------------------------------------------------------------------------------------- encoding


def encode_syn(captions: Sequence[str], key: str = SYN_KEY) -> bytes:
    """The bytes of a `syn.json` member holding `captions`."""
    return json.dumps({key: list(captions)}, ensure_ascii=False).encode("utf-8")


def encode_paug(params: Sequence, key: str = PAUG_KEY) -> bytes:
    """The bytes of a `paug.json` member holding the augmentation parameters `params` (JSON-serialisable)."""
    return json.dumps({key: list(params)}).encode("utf-8")


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same arrays give the same bytes


def _encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_embeddings(embs: Mapping[str, Array], fmt: str = "npz") -> bytes:
    """The bytes of an embeddings member in a DataCompDR format.

    Args:
        embs: name -> 2-D array (numpy or torch), e.g. {"image_emb": [n_aug, D], "text_emb": [1 + n_syn, D]}.
        fmt: "npz" (float32, exact) or "pth.gz" (bfloat16 tensors, torch.save'd then gzipped).

    Returns:
        The member's bytes; the same input gives the same bytes.
    """
    if fmt not in EMBEDDING_FORMATS:
        raise ValueError(f"unknown embeddings format {fmt!r}; valid: {', '.join(EMBEDDING_FORMATS)}")
    if fmt == "npz":
        return _encode_npz({k: (v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor)
                                else np.asarray(v, dtype=np.float32)) for k, v in embs.items()})
    tensors = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)))
               .to(torch.bfloat16).contiguous().clone() for k, v in embs.items()}
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return gzip.compress(buf.getvalue(), mtime=0)
