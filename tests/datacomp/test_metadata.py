"""`mode metadata`: dataset2metadata's ymls on the toy pool, with its models' real code on random small weights
(tests/datacomp/d2m_tiny.py as custom_pypath), and its output read by `mode filter`."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mode.core.layout import Pool
from mode.core.shards import iter_tar

from ..conftest import PYTHON, run

TINY = Path(__file__).with_name("d2m_tiny.py")

# dataset2metadata's README ymls as written, but for input_tars, output_metadata_dir and custom_pypath
BASIC = """models: # model directives, specifying the models to instantiate
  - oai-clip-vit-b32
postprocess_columns: # postprocessing directives
  - oai-clip-vit-b32-score
postprocess_features: # saved in an npz format
  - oai-clip-vit-b32-image
  - oai-clip-vit-b32-text
additional_fields: # fields in a webdataset json to carry over into the metadata
  - uid
  - url
  - caption
  - original_width
  - original_height
  - sha256
nworkers: 2
batch_size: 512
device: 0
input_tars: "{tars}" # braceexpand suported, can also be s3 paths
output_metadata_dir: "{out}" # can be arbitrary path
custom_pypath: {custom} # if model, preprocessors, postprocessors not known, look in this python file for user provided custom implementation
reprocess: True # if true will process from scratch, else will just process tars not already processed
"""  # noqa: E501

# README's datacomp.yml as written, with the line dataset2metadata's own test_local_datacomp_names.yml adds
DATACOMP = """models: # model directives, specifying the models to instantiate
  - oai-clip-vit-b32
  - oai-clip-vit-l14
  - nsfw-detoxify
  - nsfw-image-oai-clip-vit-l-14
  - faces-scrfd10g
  - dedup-isc-ft-v107
postprocess_columns: # postprocessing directives
  - oai-clip-vit-b32-score
  - oai-clip-vit-l14-score
  - nsfw-detoxify-score
  - nsfw-image-score
  - face-boxes
  - dedup-isc-ft-v107-score
postprocess_features: # saved in an npz format
  - oai-clip-vit-b32-image
  - oai-clip-vit-b32-text
  - oai-clip-vit-l14-image
  - oai-clip-vit-l14-text
  - dedup-isc-ft-v107-image
additional_fields: # fields in a webdataset json to carry over into the metadata
  - uid
  - url
  - caption
  - original_width
  - original_height
  - sha256
nworkers: 2
batch_size: 512
device: 0
input_tars: "{tars}" # braceexpand suported, can also be s3 paths
output_metadata_dir: "{out}" # can be arbitrary path
custom_pypath: {custom} # if model, preprocessors, postprocessors not known, look in this python file for user provided custom implementation
reprocess: True # if true will process from scratch, else will just process tars not already processed
use_datacomp_keys: True
"""  # noqa: E501


def _env(tmp_path):
    return {"D2M_TINY_DIR": str(tmp_path / "weights")}


def _yml(tmp_path, text, out, tars, name="d2m.yml"):
    path = tmp_path / name
    path.write_text(text.format(tars=tars, out=out, custom=TINY))
    return path


def _tars(toy_pool, n=None):
    shards = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[:n]
    if len(shards) == 1:
        return shards, str(shards[0])
    return shards, f"{shards[0].parent}/{{{','.join(p.stem for p in shards)}}}.tar"


def _tar_rows(shard):
    return [json.loads(m["json"]) for _, m in iter_tar(shard)]


def test_basic_yml_as_written(toy_pool, tmp_path):
    """README's basic.yml: CLIP B/32 score and features, json fields, one parquet + npz per shard in tar order;
    its `device: 0` runs on the CPU here; the score is the dot product of the stored normalised features."""
    shards, spec = _tars(toy_pool, 2)
    out = tmp_path / "out"
    res = run([PYTHON, "-m", "mode", "metadata", "--yml", str(_yml(tmp_path, BASIC, out, spec))],
              env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "metadata: complete" in res.stdout
    for shard in shards:
        table = pq.read_table(out / f"{shard.stem}.parquet")
        assert table.column_names == ["oai-clip-vit-b32-score", "uid", "url", "caption", "original_width",
                                      "original_height", "sha256"]
        rows = _tar_rows(shard)
        assert table.column("uid").to_pylist() == [r["uid"] for r in rows]
        assert table.column("original_width").to_pylist() == [r["original_width"] for r in rows]
        feats = np.load(out / f"{shard.stem}.npz")
        img, txt = feats["oai-clip-vit-b32-image"], feats["oai-clip-vit-b32-text"]
        assert img.shape == txt.shape == (len(rows), 512) and img.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(table.column("oai-clip-vit-b32-score").to_numpy(), (img * txt).sum(1),
                                   atol=1e-5)


def test_datacomp_yml_feeds_mode_filter(toy_pool, tmp_path):
    """The DataComp models with use_datacomp_keys: DataComp's names, scores in range, an image copied into the
    eval-set references scores ~1 on dedup, and `mode filter` runs on the output as on a DataComp pool."""
    import torch

    shards, spec = _tars(toy_pool, 1)
    out = tmp_path / "out"
    os.environ["D2M_TINY_DIR"] = str(tmp_path / "weights")
    try:
        import importlib.util

        s = importlib.util.spec_from_file_location("tiny_here", TINY)
        tiny = importlib.util.module_from_spec(s)
        s.loader.exec_module(tiny)
        from mode.datacomp.d2m import dedup_image

        isc = tiny.TinyIsc("cpu")  # writes the random weights and references the job then reads
        key, members = next(iter_tar(shards[0]))
        from PIL import Image

        with torch.inference_mode():
            copy = isc.embed(dedup_image(Image.open(io.BytesIO(members["jpg"])).convert("RGB"))[None])
        refs = torch.load(isc.references(), weights_only=True)
        torch.save(torch.cat([refs, copy]), isc.references())
    finally:
        del os.environ["D2M_TINY_DIR"]
    res = run([PYTHON, "-m", "mode", "metadata", "--yml", str(_yml(tmp_path, DATACOMP, out, spec))],
              env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    table = pq.read_table(out / f"{shards[0].stem}.parquet")
    assert table.column_names == ["clip_b32_similarity_score", "clip_l14_similarity_score", "nsfw-detoxify-score",
                                  "nsfw-image-score", "face_bboxes", "dedup", "uid", "url", "text", "original_width",
                                  "original_height", "sha256"]
    assert str(table.schema.field("face_bboxes").type) == "list<element: list<element: double>>"
    boxes = [b for per_image in table.column("face_bboxes").to_pylist() for b in per_image]
    assert boxes and all(len(b) == 4 and all(0 <= v <= 1 for v in b) for b in boxes)  # random weights: any shape
    feats = np.load(out / f"{shards[0].stem}.npz")
    assert sorted(feats.files) == ["b32_img", "b32_txt", "dedup-isc-ft-v107-image", "l14_img", "l14_txt"]
    assert feats["l14_img"].shape[1] == 768 and feats["dedup-isc-ft-v107-image"].shape[1] == 256
    for name in ("nsfw-detoxify-score", "nsfw-image-score"):
        values = table.column(name).to_numpy()
        assert ((values >= 0) & (values <= 1)).all()
    dedup = table.column("dedup").to_numpy()
    assert dedup[0] == pytest.approx(1.0, abs=1e-4)  # the image copied into the references
    refs = torch.load(tmp_path / "weights" / "refs.pt", weights_only=True).numpy()
    np.testing.assert_allclose(dedup, (feats["dedup-isc-ft-v107-image"] @ refs.T).max(1), atol=1e-5)
    np.testing.assert_allclose(table.column("clip_l14_similarity_score").to_numpy(),
                               (feats["l14_img"] * feats["l14_txt"]).sum(1), atol=1e-5)
    subset = tmp_path / "kept.npy"
    res = run([PYTHON, "-m", "mode", "filter", "--name", "clip_score", "--arch", "l14", "--fraction", "0.5",
               "--metadata-dir", str(out), "--save-path", str(subset)])
    assert res.returncode == 0, res.stderr[-2000:]
    rows = sum(pq.read_metadata(out / f"{s.stem}.parquet").num_rows for s in shards)
    assert len(np.load(subset)) == rows // 2 + 1  # DataComp's fraction rule over every written row
    # image_based: DataComp's nearest-centroid filter over the written l14_img features
    rng = np.random.default_rng(0)
    cent = rng.standard_normal((8, 768)).astype(np.float32)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    np.save(tmp_path / "centroids.npy", cent)
    nearest = (feats["l14_img"] @ cent.T).argmax(1)
    target = int(np.bincount(nearest).argmax())
    torch.save({"image_features": torch.from_numpy(cent[[target] * 3]).half()}, tmp_path / "in1k.pt")
    res = run([PYTHON, "-m", "mode", "filter", "--name", "image_based", "--metadata-dir", str(out), "--save-path",
               str(tmp_path / "image.npy"), "--centroids", str(tmp_path / "centroids.npy"), "--target-features",
               str(tmp_path / "in1k.pt"), "--fasttext-model", "packaged"])
    assert res.returncode == 0, res.stderr[-2000:]
    from mode.core.uids import pairs_to_hex

    kept = set(pairs_to_hex(np.load(tmp_path / "image.npy")))
    assert kept and kept <= {u for u, c in zip(table.column("uid").to_pylist(), nearest) if c == target}


def test_resume_reprocess_and_bad_samples(toy_pool, tmp_path):
    """A shard whose outputs are gone is the only one redone; `reprocess` redoes all; samples without an image,
    caption or json field are counted by reason and left out; two decoding workers give the same rows."""
    shards, _ = _tars(toy_pool, 2)
    bad = tmp_path / "bad" / "00000009.tar"
    bad.parent.mkdir()
    with tarfile.open(shards[0]) as src, tarfile.open(bad, "w") as dst:
        for i, member in enumerate(src.getmembers()[:30]):
            data = src.extractfile(member).read()
            if member.name.endswith(".jpg") and i < 3:
                data = b"not an image"
            if member.name.endswith(".txt") and 3 <= i < 6:
                continue
            if member.name.endswith(".json") and 6 <= i < 9:
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "sha256"}).encode()
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    base = [PYTHON, "-m", "mode", "metadata", "--models", "oai-clip-vit-b32", "--postprocess-columns",
            "oai-clip-vit-b32-score", "--postprocess-features", "oai-clip-vit-b32-image", "--additional-fields",
            "uid,sha256", "--batch-size", "16", "--device", "cpu", "--custom-pypath", str(TINY),
            "--output-metadata-dir", str(out)]
    spec = "::".join(str(p) for p in [*shards, bad])
    res = run([*base, "--nworkers", "0", "--input-tars", spec], env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / ".mode-metadata" / "summary.json").read_text())
    assert summary["skipped"] == {"bad_image": 1, "no_caption": 1, "missing_json_field": 1}
    assert pq.read_metadata(out / "00000009.parquet").num_rows == 10 - 3
    first = {p.name: p.read_bytes() for p in out.glob("0000000[01].*")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("0000000[01].*")}
    (out / "00000001.npz").unlink()
    res = run([*base, "--nworkers", "2", "--input-tars", spec], env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("00000000.*")} == \
        {k: v for k, v in mtimes.items() if k.startswith("00000000")}  # complete: not redone
    assert {p.name: p.read_bytes() for p in out.glob("0000000[01].*")} == first  # 2 workers, same bytes
    res = run([*base, "--nworkers", "0", "--input-tars", spec, "--reprocess"], env=_env(tmp_path))
    assert res.returncode == 0
    assert (out / "00000000.parquet").stat().st_mtime_ns != mtimes["00000000.parquet"]


@pytest.mark.parametrize("edit, message", [
    ({"tars_per_group": 4}, "unknown field 'tars_per_group'"),
    ({"models": ["oai-clip-vit-b16"]}, "models: unknown name 'oai-clip-vit-b16'"),
    ({"models": ["nsfw-image-oai-clip-vit-l-14"], "postprocess_columns": ["nsfw-image-score"]},
     "'nsfw-image-oai-clip-vit-l-14' needs 'oai-clip-vit-l14': add it to models"),
    ({"postprocess_columns": ["oai-clip-vit-l14-score"]}, "computed by model 'oai-clip-vit-l14'"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"output_metadata_dir": "s3://bucket/meta"}, "must be a local folder"),
    ({"device": "tpu"}, "--device 'tpu'"),
    ({"reprocess": "false"}, "reprocess must be true or false, got 'false'"),  # once read as true
    ({"use_datacomp_keys": "no"}, "use_datacomp_keys must be true or false"),
    ({"custom_pypath": 5}, "custom_pypath must be the path of a Python file, got 5"),
    ({"custom_pypath": True}, "custom_pypath must be the path of a Python file, got True"),
    ({"additional_fields": ["uid", "caption", "text"], "use_datacomp_keys": True},
     "'caption' and 'text' would both be the parquet column 'text'"),
    ({"additional_fields": ["uid", "sha256", "uid"]}, "'uid' is listed twice"),
])
def test_bad_yml_is_one_line(toy_pool, tmp_path, edit, message):
    import yaml

    _, spec = _tars(toy_pool, 1)
    values = yaml.safe_load(BASIC.format(tars=spec, out=tmp_path / "out", custom=TINY))
    values.pop("custom_pypath")
    values.update(edit)
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(values))
    res = run([PYTHON, "-m", "mode", "metadata", "--yml", str(path)], env=_env(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert message in res.stderr


def test_run_mode_metadata_recomputes_a_toy_pool_and_filters_it(tmp_path):
    """`run_mode.sh metadata POOL OUT`: dataset2metadata's DataComp set over the pool's shards (random small models
    offline), then DataComp's basic filter keeps exactly what it keeps on the pool's own metadata, for the samples
    the shards hold."""
    from mode.core.uids import pairs_to_hex
    from mode.datacomp import filters
    from mode.toy.pool import ensure_pool

    from ..conftest import REPO

    pool = tmp_path / "pool"
    ensure_pool(str(pool), samples=200, shards=1, seed=3, eval_per_class=2)
    out = tmp_path / "meta"
    res = run(["bash", str(REPO / "run_mode.sh"), "metadata", str(pool), str(out)],
              env={**_env(tmp_path), "CUSTOM": str(TINY), "DEVICE": "cpu"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    table = pq.read_table(out / "00000000.parquet")
    assert {"clip_b32_similarity_score", "clip_l14_similarity_score", "face_bboxes", "dedup", "text"} <= \
        set(table.column_names)
    in_tars = set(table.column("uid").to_pylist())
    assert len(in_tars) == len(_tar_rows(Pool(pool).shards_dir / "00000000.tar"))
    filters.run("basic_filter", str(Pool(pool).metadata_dir), str(tmp_path / "ref.npy"),
                filters.FilterParams(fasttext_model="packaged"))
    expected = set(pairs_to_hex(np.load(tmp_path / "ref.npy"))) & in_tars
    assert set(pairs_to_hex(np.load(tmp_path / "meta_basic.npy"))) == expected
    assert len(np.load(tmp_path / "meta_clip30.npy")) == int(len(in_tars) * 0.3) + 1


def test_hostile_inputs_are_one_line(toy_pool, tmp_path):
    """A custom_pypath that does not import, a model whose weights cannot be had, a pickle that runs code: one
    line each, nothing executed; an output folder inside the input shards is refused."""
    import torch

    from mode.core.errors import UserError
    from mode.datacomp import d2m

    shard = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[0]
    base = [PYTHON, "-m", "mode", "metadata", "--models", "oai-clip-vit-b32", "--postprocess-columns",
            "oai-clip-vit-b32-score", "--nworkers", "0", "--batch-size", "8", "--device", "cpu", "--input-tars",
            str(shard), "--output-metadata-dir", str(tmp_path / "out")]
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    (tmp_path / "offline.py").write_text(
        "from mode.datacomp import d2m\n\n\nclass NoWeights(d2m.OaiClipVitB32):\n    def __init__(self, device):\n"
        "        raise OSError('weights not found at their URL')\n\n\n"
        "model_lookup = {'oai-clip-vit-b32': NoWeights}\n")
    for custom, said in (("syntax.py", "custom_pypath"), ("offline.py", "model 'oai-clip-vit-b32' could not be")):
        res = run([*base, "--custom-pypath", str(tmp_path / custom)], env=_env(tmp_path))
        last = res.stderr.strip().splitlines()[-1]  # (after the progress bar)
        assert res.returncode == 2 and "Traceback" not in res.stderr and said in last, res.stderr[-2000:]
    res = run([*base[:-1], str(shard.parent / "meta"), "--custom-pypath", str(TINY)], env=_env(tmp_path))
    assert res.returncode == 2 and "overlap" in res.stderr and not (shard.parent / "meta").exists()
    theirs = tmp_path / "pool_metadata"  # a pool's own metadata folder: its files are not ours to replace
    theirs.mkdir()
    (theirs / f"{shard.stem}.parquet").write_bytes(b"the pool's metadata")
    res = run([*base[:-1], str(theirs), "--custom-pypath", str(TINY)], env=_env(tmp_path))
    assert res.returncode == 2 and "did not write" in res.stderr, res.stderr[-2000:]
    assert (theirs / f"{shard.stem}.parquet").read_bytes() == b"the pool's metadata"

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"norm.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="not a loadable NSFW classifier checkpoint"):
        d2m.load_weights(tmp_path / "evil.pt", "NSFW classifier")
    assert not (tmp_path / "pwned").exists()


def test_json_fields_a_parquet_cannot_hold():
    """A json field is stored as dataset2metadata's pandas -> pyarrow writer stores it: numbers, strings, lists,
    objects; a lone surrogate, an int past 64 bits, a list of strings and numbers or an empty object is a counted
    bad_json_field; in one shard, the values of another type than the rest of their column are the odd ones out."""
    from mode.datacomp import metadata

    assert [metadata._storable(v) for v in ("a", 3, 2.5, True, None, ["x"], {"a": 1}, [[0.1, 0.2]], [])] == [True] * 9
    assert not any(metadata._storable(v) for v in ("\ud800", 2**70, [1, "a"], {}, {"a": {}}, [{}]))
    assert metadata._odd_ones("s.tar", "uid", ["a", None, "b"]) == []
    assert metadata._odd_ones("s.tar", "uid", ["a", 3, "b", None, "c"]) == [1]
    assert metadata._odd_ones("s.tar", "w", [1, 2.5, "x", 3, True]) == [2, 4]  # ints and floats: one column
    assert metadata._odd_ones("s.tar", "boxes", [[[0.1, 0.2]], [], [1], ["a"], [2]]) == [0, 3]
    assert metadata._odd_ones("s.tar", "o", [{"a": 1}, {"b": "x"}, None]) == []
    assert metadata._odd_ones("s.tar", "o", [{"a": 1}, {"a": "x"}, {"a": 2, "b": [1.5]}]) == [1]


def _tiny(tmp_path, monkeypatch):
    """d2m_tiny as a module, its weights under tmp_path."""
    import importlib.util

    monkeypatch.setenv("D2M_TINY_DIR", str(tmp_path / "weights"))
    spec = importlib.util.spec_from_file_location(f"tiny_{tmp_path.name}", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detoxify_scores_its_class_names_only(tmp_path, monkeypatch):
    """The multilingual checkpoint has 16 outputs and 7 class names; Detoxify.predict, which dataset2metadata takes
    the max over, reports the class names only, so outputs past them (here larger) do not count."""
    import torch

    tiny = _tiny(tmp_path, monkeypatch)

    class Detoxify16(tiny.TinyDetoxify):
        outputs = 16

    det = Detoxify16("cpu")
    texts = ["a photo of a woman", "a red car", "x"]
    with torch.no_grad():
        probs = torch.sigmoid(det.model(**det.tokenizer(texts, return_tensors="pt", padding=True)).logits)
    assert probs.shape == (3, 16) and (probs[:, 7:].max(1).values > probs[:, :7].max(1).values).all()
    predict = {name: probs[:, i].tolist() for i, name in enumerate(tiny.CLASSES)}  # what Detoxify.predict returns
    expected = torch.tensor(list(predict.values())).max(0).values
    torch.testing.assert_close(det(texts), expected)
    assert det(texts).max() < 0.9 < probs[:, 7:].min()


def test_clip_score_in_the_features_dtype():
    """On CUDA the CLIP features are fp16 and dataset2metadata's score is their fp16 einsum: the same rounding
    here (an fp32 product differs in most rows), written as float64."""
    import torch

    from mode.datacomp import d2m, metadata

    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(2000, 512, generator=gen), dim=1)
    txt = torch.nn.functional.normalize(img + 1.2 * torch.randn(2000, 512, generator=gen), dim=1)
    img, txt = img.half(), txt.half()
    score = d2m.COLUMNS["oai-clip-vit-b32-score"]({"oai-clip-vit-b32": (img, txt)})
    assert score.dtype == torch.float16
    torch.testing.assert_close(score, torch.einsum("bn,bn->b", img, txt), rtol=0, atol=0)
    fp32 = (img.float() * txt.float()).sum(1)
    assert (score.float() != fp32).float().mean() > 0.5 and (score.float() - fp32).abs().max() < 1e-3
    column = metadata._column("s.tar", "oai-clip-vit-b32-score", metadata._as_column(score, "score", 2000))
    assert str(column.type) == "double" and column.to_pylist() == score.float().tolist()


def _edited_tar(src, dst, n, edit=lambda i, members: members):
    """The first n samples of src in a new tar, each sample's {extension: bytes} through edit(i, members)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w") as out:
        for i, (key, members) in enumerate(iter_tar(src)):
            if i == n:
                break
            for ext, data in edit(i, dict(members)).items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return [_uid(m) for _, m in iter_tar(dst)]


def _uid(members):
    try:
        return json.loads(members["json"])["uid"]
    except ValueError:
        return None


def _metadata(tmp_path, *args):
    res = run([PYTHON, "-m", "mode", "metadata", "--batch-size", "4", "--device", "cpu", "--custom-pypath", str(TINY),
               *args], env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((Path(args[args.index("--output-metadata-dir") + 1]) / ".mode-metadata" /
                       "summary.json").read_text())


def test_every_sample_needs_a_decodable_image_and_caption(toy_pool, tmp_path, monkeypatch):
    """As dataset2metadata's loader: a cut JPEG decodes (its LOAD_TRUNCATED_IMAGES, in the decoding workers too);
    a sample without a decodable image or a caption, or with a json member that does not parse, is a counted skip
    even when the models read only the text and no json field is asked for."""
    from PIL import Image, ImageFile

    shard = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[0]

    def edit(i, members):
        if i in (1, 4):
            members["jpg"] = members["jpg"][: len(members["jpg"]) * 2 // 3]
        if i == 6:
            del members["jpg"]
        if i == 7:
            members["jpg"] = b"not an image"
        if i == 8:
            del members["txt"]
        if i == 5:
            members["json"] = b'{"uid": "cut'
        return members

    uids = _edited_tar(shard, tmp_path / "in" / "00000000.tar", 10, edit)
    cut = dict(iter_tar(tmp_path / "in" / "00000000.tar"))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(list(cut.values())[1]["jpg"])).load()
    for workers, fields in (("0", ["--additional-fields", "uid"]), ("2", ["--additional-fields", "uid"]), ("0", [])):
        out = tmp_path / f"out{workers}{len(fields)}"
        summary = _metadata(tmp_path, "--models", "nsfw-detoxify", "--postprocess-columns", "nsfw-detoxify-score",
                            *fields, "--nworkers", workers, "--input-tars",
                            str(tmp_path / "in" / "00000000.tar"), "--output-metadata-dir", str(out))
        assert summary["skipped"] == {"no_image": 1, "bad_image": 1, "no_caption": 1, "bad_json": 1}
        table = pq.read_table(out / "00000000.parquet")
        assert table.num_rows == 6
        if fields:
            assert table.column("uid").to_pylist() == uids[:5] + [uids[9]] and uids[5] is None


def _custom(tmp_path, body: str) -> Path:
    """A custom_pypath file: d2m_tiny's models plus `body`."""
    path = tmp_path / "custom.py"
    path.write_text(f"import sys\nfrom functools import partial\n\nimport numpy as np\nimport torch\n\n"
                    f"sys.path.insert(0, {str(TINY.parent)!r})\n"
                    "from d2m_tiny import model_lookup, postprocess_feature_lookup  # noqa: E402,F401\n\n"
                    "preprocessor_lookup = {}\n" + body)
    return path


def test_a_column_of_vectors_is_a_list_per_row(toy_pool, tmp_path):
    """A custom postprocess column of shape [B, 2] is one [a, b] list per row, as dataset2metadata's writer keeps
    it (once flattened, its first B values written); a column of another length than the batch is one line."""
    shard = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[0]
    custom = _custom(tmp_path, "\n\ndef two(cache, model):\n    img, txt = cache[model]\n"
                     "    s = torch.einsum('bn,bn->b', img, txt)\n    return torch.stack([s, -s], 1).cpu()\n\n\n"
                     "postprocess_parquet_lookup = {'two': partial(two, model='oai-clip-vit-b32'),\n"
                     "                              'half': lambda cache: cache['oai-clip-vit-b32'][0][::2, 0]}\n")
    args = ["--models", "oai-clip-vit-b32", "--nworkers", "0", "--input-tars", str(shard), "--custom-pypath",
            str(custom)]
    _metadata(tmp_path, *args, "--postprocess-columns", "oai-clip-vit-b32-score,two", "--output-metadata-dir",
              str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / f"{shard.stem}.parquet")
    assert str(table.schema.field("two").type) == "list<element: double>"
    score = table.column("oai-clip-vit-b32-score").to_pylist()
    assert len(score) == len(_tar_rows(shard)) > 4
    assert table.column("two").to_pylist() == [[s, -s] for s in score]
    res = run([PYTHON, "-m", "mode", "metadata", "--batch-size", "4", "--device", "cpu", *args,
               "--postprocess-columns", "half", "--output-metadata-dir", str(tmp_path / "out2")], env=_env(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "postprocess_columns 'half': 2 values for a batch of 4 samples" in res.stderr


def test_home_in_yml_paths(toy_pool, tmp_path):
    """output_metadata_dir and custom_pypath starting with ~ in a yml (no shell to expand them) are under $HOME,
    as dataset2metadata's fsspec paths, not a folder named ~ in the working directory."""
    import shutil

    import yaml

    shard = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[0]
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    home.mkdir()
    shutil.copy(TINY, home / "tiny.py")
    yml = tmp_path / "home.yml"
    yml.write_text(yaml.safe_dump({"models": ["oai-clip-vit-b32"], "postprocess_columns": ["oai-clip-vit-b32-score"],
                                   "nworkers": 0, "batch_size": 64, "device": "cpu", "input_tars": str(shard),
                                   "output_metadata_dir": "~/meta", "custom_pypath": "~/tiny.py"}))
    res = run([PYTHON, "-m", "mode", "metadata", "--yml", str(yml)], cwd=cwd,
              env={**_env(tmp_path), "HOME": str(home)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert pq.read_metadata(home / "meta" / f"{shard.stem}.parquet").num_rows == len(_tar_rows(shard))
    assert list(cwd.iterdir()) == []


def test_json_fields_as_dataset2metadata_writes_them(toy_pool, tmp_path):
    """additional_fields holding lists (face_bboxes) and objects are written as list and struct columns; a numeric
    uid among strings, or an empty object, is a counted skip (the run goes on to the next shard, features aligned);
    a reprocess that writes no features removes the shard's npz of the earlier run."""
    shards = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[:2]

    def edit(i, members):
        meta = {**json.loads(members["json"]), "info": {"i": i, "tags": ["a"] * (i % 3)}}
        meta.update({2: {"uid": 12345}, 5: {"face_bboxes": [[0.1, 0.2, 0.3, 0.4]]}, 9: {"face_bboxes": {}}}.get(i, {}))
        return {**members, "json": json.dumps(meta).encode()}

    uids = _edited_tar(shards[0], tmp_path / "in" / "00000000.tar", 12, edit)
    second = _edited_tar(shards[1], tmp_path / "in" / "00000001.tar", 5, lambda i, m: edit(i + 20, m))
    out = tmp_path / "out"
    args = ["--additional-fields", "uid,face_bboxes,info", "--nworkers", "0", "--input-tars",
            f"{tmp_path}/in/{{00000000,00000001}}.tar", "--output-metadata-dir", str(out)]
    summary = _metadata(tmp_path, *args, "--models", "oai-clip-vit-b32", "--postprocess-columns",
                        "oai-clip-vit-b32-score", "--postprocess-features",
                        "oai-clip-vit-b32-image,oai-clip-vit-b32-text")
    assert summary["complete"] and summary["skipped"] == {"mixed_json_field": 1, "bad_json_field": 1}
    table = pq.read_table(out / "00000000.parquet")
    kept = [i for i in range(12) if i not in (2, 9)]
    assert table.column("uid").to_pylist() == [uids[i] for i in kept]
    assert str(table.schema.field("face_bboxes").type) == "list<element: list<element: double>>"
    assert table.column("face_bboxes").to_pylist() == [[[0.1, 0.2, 0.3, 0.4]] if i == 5 else [] for i in kept]
    assert table.column("info").to_pylist() == [{"i": i, "tags": ["a"] * (i % 3)} for i in kept]
    feats = np.load(out / "00000000.npz")
    img, txt = feats["oai-clip-vit-b32-image"], feats["oai-clip-vit-b32-text"]
    assert len(img) == 10
    np.testing.assert_allclose(table.column("oai-clip-vit-b32-score").to_numpy(), (img * txt).sum(1), atol=1e-5)
    assert pq.read_table(out / "00000001.parquet").column("uid").to_pylist() == second
    _metadata(tmp_path, *args, "--models", "nsfw-detoxify", "--postprocess-columns", "nsfw-detoxify-score",
              "--reprocess")
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["00000000.parquet", "00000001.parquet"]
    assert pq.read_table(out / "00000000.parquet").column_names == ["nsfw-detoxify-score", "uid", "face_bboxes",
                                                                     "info"]


def test_reprocess_with_new_settings_over_ranks(toy_pool, tmp_path):
    """New settings over an earlier run's output: without reprocess one line saying what to do (mode metadata has
    no --work-dir); with it, each rank redoes its shards, the first one forgetting the others' stale ones, and the
    run is complete once every rank has run."""
    shards = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[:2]
    for i, shard in enumerate(shards):
        _edited_tar(shard, tmp_path / "in" / f"0000000{i}.tar", 4)
    out = tmp_path / "out"
    args = ["--models", "oai-clip-vit-b32", "--postprocess-columns", "oai-clip-vit-b32-score", "--nworkers", "0",
            "--input-tars", f"{tmp_path}/in/{{00000000,00000001}}.tar", "--output-metadata-dir", str(out)]
    assert _metadata(tmp_path, *args)["complete"]
    new = [*args, "--additional-fields", "uid", "--world-size", "2"]
    res = run([PYTHON, "-m", "mode", "metadata", "--batch-size", "4", "--device", "cpu", "--custom-pypath", str(TINY),
               *new, "--rank", "0"], env=_env(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert "set reprocess: true (--reprocess) on every rank" in res.stderr and "--work-dir" not in res.stderr
    first = _metadata(tmp_path, *new, "--rank", "0", "--reprocess")
    assert (first["shards_done"], first["complete"]) == (1, False)
    assert pq.read_table(out / "00000000.parquet").column_names == ["oai-clip-vit-b32-score", "uid"]
    assert not (out / ".mode-metadata" / "00000001.stats.json").exists()  # stale: forgotten, to be redone
    second = _metadata(tmp_path, *new, "--rank", "1", "--reprocess")
    assert (second["shards_done"], second["complete"], second["kept"]) == (2, True, 8)
    assert pq.read_table(out / "00000001.parquet").column_names == ["oai-clip-vit-b32-score", "uid"]


PROBE = '''
import json

SEEN = {seen!r}


class Probe:
    """What a custom model is built with and called with, written to SEEN."""

    name = "probe"
    raw_inputs = ["image", "text", "image", "text"]
    preprocessors = ["width", "np-len", "pair", "identity"]
    dependencies = []
    to_device = False

    def __init__(self, device):
        self.seen = {{"device": repr(device)}}

    def record(self, *inputs):
        self.seen[self.name] = [type(x).__name__ for x in inputs]
        self.seen[self.name + "-first"] = [type(x[0]).__name__ for x in inputs]
        with open(SEEN + self.name, "w") as f:
            json.dump(self.seen, f)

    def __call__(self, widths, lengths, pairs, texts):
        self.record(widths, lengths, pairs, texts)
        assert widths.shape == (len(texts),) and lengths.shape == (len(texts), 1)
        return torch.as_tensor(widths, dtype=torch.float64)


class ProbeOnDevice(Probe):
    name = "probe-device"
    raw_inputs = ["image"]
    preprocessors = ["pair"]
    to_device = True

    def __call__(self, pair):
        self.record(*pair)
        return pair[1][:, 0]


model_lookup = {{"probe": Probe, "probe-device": ProbeOnDevice}}
preprocessor_lookup = {{"width": lambda im: im.size[0], "np-len": lambda t: np.array([len(t)]),
                       "pair": lambda im: (torch.zeros(1, 3), torch.full((1, 2), float(im.size[0])))}}
postprocess_parquet_lookup = {{"width": lambda out: out["probe"], "width-device": lambda out: out["probe-device"]}}
postprocess_feature_lookup = {{}}
'''


def test_custom_models_get_what_dataset2metadata_gives_them(toy_pool, tmp_path):
    """A custom model is built with the yml's device (here `0` on a machine without CUDA: `cpu`; `0` itself on
    CUDA) and called with its inputs batched as webdataset's default_collation_fn batches them: numbers and numpy
    arrays as one numpy array, tensors stacked, strings and tuples as lists; a to_device model's list of tuples
    transposed and concatenated, as dataset2metadata moves it."""
    from mode.datacomp import d2m

    assert [d2m.model_device(0, "cuda:0"), d2m.model_device(1, "cuda:3"), d2m.model_device("cuda:1", "cuda:1"),
            d2m.model_device(0, "cpu"), d2m.model_device("cpu", "cpu")] == [0, 3, "cuda:1", "cpu", "cpu"]
    shard = sorted(Pool(toy_pool).shards_dir.glob("*.tar"))[0]
    custom = tmp_path / "probe.py"
    custom.write_text("import numpy as np\nimport torch\n" + PROBE.format(seen=str(tmp_path / "seen-")))
    out = tmp_path / "out"
    _metadata(tmp_path, "--models", "probe,probe-device", "--postprocess-columns", "width,width-device",
              "--nworkers", "0", "--device", "0", "--custom-pypath", str(custom), "--input-tars", str(shard),
              "--output-metadata-dir", str(out))
    seen = json.loads((tmp_path / "seen-probe").read_text())
    assert seen == {"device": "'cpu'", "probe": ["ndarray", "ndarray", "list", "list"],
                    "probe-first": ["int64", "ndarray", "tuple", "str"]}
    on_device = json.loads((tmp_path / "seen-probe-device").read_text())
    assert on_device["probe-device"] == ["Tensor", "Tensor"]
    from PIL import Image

    widths = [Image.open(io.BytesIO(m["jpg"])).size[0] for _, m in iter_tar(shard)]
    table = pq.read_table(out / f"{shard.stem}.parquet")
    assert table.column("width").to_pylist() == table.column("width-device").to_pylist() == widths
