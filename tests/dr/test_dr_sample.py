"""dr.sample: DataCompDR members decode, validate, pick and encode (round trips, bad input by reason)."""

import gzip
import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from dr import sample as drs
from dr.sample import BadReinforcement

N_AUG, N_SYN, DIM = 4, 3, 8
CAPTIONS = ["a red cube on a table", "une tasse de café ☕", "two dogs"]
PARAMS = [[[i, 2 * i, 30, 40], [[i % 3, 0.25 * i], [7, -1.5]]] for i in range(N_AUG)]


def _embeddings(seed=0, n_aug=N_AUG, n_syn=N_SYN, dim=DIM):
    rng = np.random.default_rng(seed)
    return {"image_emb": rng.standard_normal((n_aug, dim)).astype(np.float32),
            "text_emb": rng.standard_normal((1 + n_syn, dim)).astype(np.float32)}


def _members(fmt="npz", embs=None, captions=CAPTIONS, params=PARAMS):
    return {"syn.json": drs.encode_syn(captions), "paug.json": drs.encode_paug(params),
            fmt: drs.encode_embeddings(embs if embs is not None else _embeddings(), fmt)}


# ------------------------------------------------------------------------------------------ round trips


def test_syn_and_paug_round_trip():
    assert drs.decode_syn(drs.encode_syn(CAPTIONS)) == CAPTIONS
    assert drs.decode_paug(drs.encode_paug(PARAMS)) == PARAMS
    # some exports store param_aug as a JSON string; and wds.decode hands over dicts
    assert drs.decode_paug(json.dumps({"param_aug": json.dumps(PARAMS)}).encode()) == PARAMS
    assert drs.decode_syn({"syn_text": CAPTIONS}) == CAPTIONS


def test_npz_round_trip_is_exact_and_deterministic():
    embs = _embeddings()
    data = drs.encode_embeddings(embs, "npz")
    assert data == drs.encode_embeddings(embs, "npz")
    back = drs.decode_embeddings(data, "npz")
    assert set(back) == set(embs)
    for k in embs:
        assert back[k].dtype == np.float32 and np.array_equal(back[k], embs[k])
    # stock numpy reads it too
    assert np.array_equal(np.load(io.BytesIO(data))["text_emb"], embs["text_emb"])


def test_pth_gz_round_trip_within_bf16():
    embs = _embeddings()
    data = drs.encode_embeddings({k: torch.from_numpy(v) for k, v in embs.items()}, "pth.gz")
    assert data == drs.encode_embeddings(embs, "pth.gz")  # numpy or torch input, same bytes
    back = drs.decode_embeddings(data, "pth.gz")
    for k, v in embs.items():
        assert back[k].dtype == torch.bfloat16 and back[k].shape == v.shape
        assert torch.equal(back[k], torch.from_numpy(v).bfloat16())
        assert np.allclose(back[k].float().numpy(), v, rtol=2 ** -8, atol=0)
    # the member is a gzipped torch.save of a dict, as DataCompDR-12M-bf16 stores it
    assert set(torch.load(io.BytesIO(gzip.decompress(data)), weights_only=True)) == set(embs)


def test_unknown_format_is_a_user_error():
    with pytest.raises(ValueError, match="npz, pth.gz"):
        drs.encode_embeddings(_embeddings(), "pt")
    with pytest.raises(ValueError, match="npz, pth.gz"):
        drs.decode_embeddings(b"", "h5")


# ------------------------------------------------------------------------------------------ safe loading

EXECUTED = []


def _record(tag):
    EXECUTED.append(tag)
    return tag


class _Payload:
    def __reduce__(self):
        return (_record, ("pickle code ran",))


def test_pth_gz_never_runs_pickled_code():
    buf = io.BytesIO()
    torch.save({"image_emb": _Payload()}, buf)
    with pytest.raises(BadReinforcement) as e:
        drs.decode_embeddings(gzip.compress(buf.getvalue()), "pth.gz")
    assert e.value.reason == "bad_embeddings" and EXECUTED == []


def test_npz_object_arrays_are_refused():
    buf = io.BytesIO()
    np.savez(buf, image_emb=np.array([_Payload()], dtype=object))
    with pytest.raises(BadReinforcement, match="bad_embeddings"):
        drs.decode_embeddings(buf.getvalue(), "npz")
    assert EXECUTED == []


@pytest.mark.parametrize("fmt", drs.EMBEDDING_FORMATS)
@pytest.mark.parametrize("data", [b"", b"not an archive", gzip.compress(b"junk")])
def test_garbage_embeddings_are_bad(fmt, data):
    with pytest.raises(BadReinforcement) as e:
        drs.decode_embeddings(data, fmt)
    assert e.value.reason == "bad_embeddings"


def test_pth_gz_that_is_not_a_dict_is_bad():
    buf = io.BytesIO()
    torch.save([torch.zeros(2, 2)], buf)
    with pytest.raises(BadReinforcement, match="not a mapping"):
        drs.decode_embeddings(gzip.compress(buf.getvalue()), "pth.gz")


# -------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fmt", drs.EMBEDDING_FORMATS)
def test_valid_sample(fmt):
    r = drs.reinforcement_from_sample(_members(fmt), dim=DIM)
    assert (r.n_aug, r.n_syn, r.dim) == (N_AUG, N_SYN, DIM)
    assert r.syn_text == CAPTIONS and r.param_aug == PARAMS


def test_npz_is_preferred_over_pth_gz():
    sample = {**_members("pth.gz", _embeddings(seed=1)), **_members("npz", _embeddings(seed=2))}
    r = drs.reinforcement_from_sample(sample)
    assert isinstance(r.image_emb, np.ndarray) and np.array_equal(r.image_emb, _embeddings(seed=2)["image_emb"])


def test_already_decoded_members_are_accepted():
    embs = _embeddings()
    npz = np.load(io.BytesIO(drs.encode_embeddings(embs, "npz")))  # what wds's default npz decoder yields
    sample = {"syn.json": {"syn_text": CAPTIONS}, "paug.json": {"param_aug": PARAMS}, "npz": npz}
    assert np.array_equal(drs.reinforcement_from_sample(sample).text_emb, embs["text_emb"])


def _nan_image(embs):
    embs["image_emb"][1, 2] = np.nan
    return embs


BAD = {
    "missing_member": lambda: {k: v for k, v in _members().items() if k != "syn.json"},
    "missing_field": lambda: _members(embs={"image_emb": _embeddings()["image_emb"]}),
    "empty": lambda: _members(embs=_embeddings(n_syn=0), captions=[]),
    "wrong_ndim": lambda: _members(embs={**_embeddings(), "image_emb": np.zeros((N_AUG, 2, 4), np.float32)}),
    "aug_count_mismatch": lambda: _members(embs=_embeddings(n_aug=N_AUG + 1)),
    "syn_count_mismatch": lambda: _members(embs=_embeddings(n_syn=N_SYN - 1)),
    "dim_mismatch": lambda: _members(embs={**_embeddings(), "text_emb": _embeddings(dim=DIM + 1)["text_emb"]}),
    "non_finite": lambda: _members(embs=_nan_image(_embeddings())),
    "bad_syn": lambda: {**_members(), "syn.json": json.dumps({"syn_text": [1, 2]}).encode()},
    "bad_paug": lambda: {**_members(), "paug.json": b"{not json"},
    "bad_embeddings": lambda: {**_members(), "npz": b"\x00" * 10},
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_samples_raise_with_their_reason(reason):
    with pytest.raises(BadReinforcement) as e:
        drs.reinforcement_from_sample(BAD[reason]())
    assert e.value.reason == reason


def test_every_reason_is_tested_and_unknown_reasons_are_refused():
    assert set(BAD) == set(drs.REASONS)
    with pytest.raises(ValueError, match="unknown reason"):
        BadReinforcement("weird")


def test_expected_dim_is_checked():
    with pytest.raises(BadReinforcement, match="dim_mismatch"):
        drs.reinforcement_from_sample(_members(), dim=DIM * 2)


def test_a_shard_is_read_and_bad_samples_are_counted(tmp_path):
    import webdataset as wds

    members = {"000": _members("npz"), "001": BAD["aug_count_mismatch"](), "002": _members("pth.gz"),
               "003": BAD["missing_member"]()}
    path = tmp_path / "00000000.tar"
    with tarfile.open(path, "w") as tar:
        for key, sample in members.items():
            for ext, data in {"txt": b"a caption", **sample}.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    kept, skipped = [], Counter()
    for s in wds.DataPipeline(wds.SimpleShardList(str(path)), wds.tarfile_to_samples()):
        try:
            kept.append((s["__key__"], drs.reinforcement_from_sample(s, dim=DIM)))
        except BadReinforcement as e:
            skipped[e.reason] += 1
    assert [k for k, _ in kept] == ["000", "002"]
    assert skipped == {"aug_count_mismatch": 1, "missing_member": 1}


# ------------------------------------------------------------------------------------------------ picking


def _r(fmt="npz"):
    return drs.reinforcement_from_sample(_members(fmt))


@pytest.mark.parametrize("fmt", drs.EMBEDDING_FORMATS)
def test_pick_returns_the_matching_rows(fmt):
    r = _r(fmt)
    p = drs.pick(r, aug_idx=2, syn_idx=1)
    assert (p.aug_idx, p.syn_idx, p.param_aug, p.syn_text) == (2, 1, PARAMS[2], CAPTIONS[1])
    for got, want in ((p.image_emb, r.image_emb[2]), (p.text_emb, r.text_emb[0]), (p.syn_text_emb, r.text_emb[2])):
        want = want.float() if isinstance(want, torch.Tensor) else torch.from_numpy(want)
        assert got.dtype == torch.float32 and got.shape == (DIM,) and torch.equal(got, want)
    # explicit indices wrap around (sequential sampling by epoch)
    assert (drs.pick(r, aug_idx=N_AUG + 1, syn_idx=N_SYN).aug_idx, drs.pick(r, aug_idx=0, syn_idx=N_SYN).syn_idx) \
        == (1, 0)


@pytest.mark.parametrize("make_rng", [lambda s: s, np.random.default_rng,
                                      lambda s: torch.Generator().manual_seed(s)])
def test_pick_is_deterministic_given_the_rng(make_rng):
    r = _r()
    first = [(p.aug_idx, p.syn_idx) for p in (drs.pick(r, make_rng(7)) for _ in range(3))]
    again = [(p.aug_idx, p.syn_idx) for p in (drs.pick(r, make_rng(7)) for _ in range(3))]
    assert first == again
    seen = {drs.pick(r, make_rng(seed)).aug_idx for seed in range(60)}
    assert seen == set(range(N_AUG))


def test_pick_draws_aug_then_syn_from_one_generator():
    r, rng = _r(), np.random.default_rng(3)
    p = drs.pick(r, rng)
    ref = np.random.default_rng(3)
    assert (p.aug_idx, p.syn_idx) == (ref.integers(N_AUG), ref.integers(N_SYN))


def test_pick_never_samples_unseeded():
    with pytest.raises(ValueError, match="rng"):
        drs.pick(_r(), aug_idx=0)
    with pytest.raises(TypeError, match="Generator"):
        drs.pick(_r(), rng="seed")
