"""`mode inspect`: the site's content against the work dir and the ensemble report, hostile captions, bad
arguments, and a real headless Chromium loading its pages (skipped where Debian's chromium is absent)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mode.core.errors import UserError
from mode.core.layout import Pool, WorkDir
from mode.evaluation import ensemble, evaluate
from mode.evaluation import inspect_site as I

from ..conftest import PYTHON, run


def _attrs(html: str, tag: str, name: str) -> list[str]:
    return re.findall(rf'<{tag}[^>]*\b{name}="([^"]*)"', html)


@pytest.fixture(scope="module")
def site(clean_work, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "site"
    I.run(str(clean_work), str(clean_work.parent / "shards"), str(out), per_expert=10, per_fine=3)
    return out


def test_overview_and_expert_pages_hold_the_work_dirs_counts(site, clean_work):
    counts = json.loads((WorkDir(clean_work).assign_dir / "summary.json").read_text())["counts"]
    f2c = np.load(WorkDir(clean_work).fine_to_coarse)
    index = (site / "index.html").read_text()
    assert [int(s) for s in _attrs(index, "tr", "data-size")] == counts["coarse"]
    for k, n in enumerate(counts["coarse"]):
        page = (site / f"expert_{k}.html").read_text()
        assert _attrs(page, "p", "data-size") == [str(n)]
        fines = sorted(int(f) for f in _attrs(page, "h3", "data-fine"))
        assert fines == [f for f in range(len(f2c)) if f2c[f] == k]
        assert [int(s) for s in _attrs(page, "h3", "data-size")] == sorted(
            (counts["fine"][f] for f in fines), reverse=True)
        thumbs = _attrs(page, "img", "src")
        assert thumbs and all((site / t).is_file() and (site / t).stat().st_size > 0 for t in thumbs)
        grid = page.split("<h2>Sample</h2>")[1].split("<h2>Fine clusters</h2>")[0]
        assert grid.count("<img") == min(10, n)
    data = (site / "search_data.js").read_text()
    samples = json.loads(data.removeprefix("const SAMPLES = ").rstrip().rstrip(";"))
    assert samples and all({"c", "t", "e", "f"} <= set(s) for s in samples)
    assert all(int(f2c[s["f"]]) == s["e"] for s in samples)  # a sampled pair's fine cluster is in its expert


def test_rerun_writes_the_same_site_and_keeps_thumbnails(site, clean_work):
    before = {p: p.stat().st_mtime_ns for p in (site / "thumbs").rglob("*.jpg")}
    html = {p.name: p.read_text() for p in site.glob("*.html")}
    I.run(str(clean_work), str(clean_work.parent / "shards"), str(site), per_expert=10, per_fine=3)
    assert {p: p.stat().st_mtime_ns for p in (site / "thumbs").rglob("*.jpg")} == before  # written once
    assert {p.name: p.read_text() for p in site.glob("*.html")} == html  # seeded: the same sample


def test_hostile_captions_are_escaped(clean_work, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(clean_work, work)
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    for path in sorted((work / "captions").glob("*.parquet")):
        t = pq.read_table(path)
        caps = [evil] * t.num_rows
        pq.write_table(t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(caps)), path)
    out = tmp_path / "site"
    I.run(str(work), str(clean_work.parent / "shards"), str(out), per_expert=4, per_fine=1)
    page = (out / "expert_0.html").read_text()
    assert "&lt;script&gt;" in page and "<script>alert" not in page and "onerror=alert" not in page.replace(
        "&lt;img src=x onerror=alert(1)&gt;", "")
    assert "</script>" not in (out / "search_data.js").read_text()


def test_bad_arguments_are_one_line(clean_work, tmp_path):
    shards = str(clean_work.parent / "shards")
    with pytest.raises(UserError, match="overlaps the shards' folder"):
        I.run(str(clean_work), shards, str(clean_work.parent / "shards" / "site"))
    with pytest.raises(UserError, match="overlaps the work dir"):
        I.run(str(clean_work), shards, str(clean_work / "site"))
    with pytest.raises(UserError, match="no assignment|assign"):
        I.run(str(tmp_path / "nowork"), shards, str(tmp_path / "s"))
    res = run([PYTHON, "-m", "mode", "inspect", "--work-dir", str(clean_work), "--shards", str(tmp_path),
               "--out", str(tmp_path / "s2")])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.fixture(scope="module")
def report(toy_pool, clean_work, tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    tasks = Pool(toy_pool).eval_tasks_dir
    specs = [evaluate.ModelSpec.parse(f"e{k}=ViT-Toy-8") for k in range(3)]
    evaluate.run(specs, str(tasks), str(root / "eval"), device="cpu")
    ensemble.run(str(clean_work), str(tasks), str(root / "eval"), ["e0", "e1", "e2"], str(root / "report"))
    return root


def test_tasks_page_explains_the_weights(report, toy_pool, clean_work, tmp_path):
    tasks = Pool(toy_pool).eval_tasks_dir
    out = tmp_path / "site"
    res = run([PYTHON, "-m", "mode", "inspect", "--work-dir", str(clean_work), "--shards",
               str(clean_work.parent / "shards"), "--out", str(out), "--tasks", str(tasks), "--eval-out",
               str(report / "eval"), "--report", str(report / "report")])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == f"site: {(out / 'index.html').resolve()}"
    weights = json.loads((report / "report" / "weights.json").read_text())["weights"]
    page = (out / "tasks.html").read_text()
    got = re.findall(r'data-task="([^"]+)" data-expert="(\d)" data-weight="([^"]+)"', page)
    assert {(t, int(e)): float(w) for t, e, w in got} == {(t, e): w for t, ws in weights.items()
                                                            for e, w in enumerate(ws)}
    # why: each class's nearest fine cluster is the one mode_scores uses
    from mode.evaluation import tasks as T

    task = next(t for t in T.find_tasks(tasks) if t.key == "toy_shapes")
    wd = WorkDir(clean_work)
    meta = json.loads(wd.features_meta.read_text())
    emb = ensemble.class_embeddings(task, meta["encoder"]).astype(np.float64)
    fine = np.load(wd.fine_centroids).astype(np.float64)
    nearest = ((emb[:, None] - fine[None]) ** 2).sum(-1).argmin(1)
    section = page.split('<h2 id="toy_shapes">')[1].split("<h2")[0]
    assert [int(f) for f in re.findall(r'#fine-(\d+)"', section)] == nearest.tolist()
    assert "e0" in (out / "index.html").read_text()  # the labels' averages


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("name", ["index.html", "expert_0.html"])
def test_headless_chromium_renders_pages_with_every_image(site, clean_work, tmp_path, name):
    from PIL import Image

    url = (site / name).resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert re.search(r'data-broken-images="0"', body), body  # every image loaded
    counts = json.loads((WorkDir(clean_work).assign_dir / "summary.json").read_text())["counts"]
    if name == "index.html":
        assert [int(s) for s in _attrs(dom, "tr", "data-size")] == counts["coarse"]  # rendered DOM, not the file
    else:
        assert images == (site / name).read_text().count("<img") > 0
        assert _attrs(dom, "p", "data-size") == [str(counts["coarse"][0])]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,800", url], capture_output=True,
                   timeout=120, check=True)
    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert im.size == (1000, 800) and len(colours) > 20  # not a blank page


def _tar(path, samples):
    """A tar of (member name, bytes) pairs, in order."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png(mode_, value, size=(20, 10)):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode_, size, value).save(buf, "PNG")
    return buf.getvalue()


def test_thumbnails_are_named_by_hash_and_checked_by_uid(tmp_path):
    """A key with `../` or an absolute path never becomes a path; a sample of another pool (same key, other
    uid) is one line; a 16-bit grey image keeps its grey level."""
    uid = "0" * 31 + "1"
    tar = tmp_path / "in" / "00000000.tar"
    tar.parent.mkdir()
    keys = ["../../escaped", str(tmp_path / "abs"), "grey16", "a#b?c"]
    grey = _png("I;16", 32768)
    _tar(tar, [m for k in keys for m in ((f"{k}.png", grey), (f"{k}.json", json.dumps({"uid": uid}).encode()))])
    out = tmp_path / "site"
    done = I.write_thumbnails(out, {"00000000": dict.fromkeys(keys, uid)}, {"00000000": str(tar)}, 16)
    assert len(done) == 4 and all(re.fullmatch(r"thumbs/[0-9a-f]{32}\.jpg", v) for v in done.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "site"]  # nothing written outside --out
    from PIL import Image

    with Image.open(out / done["00000000/grey16"]) as im:
        assert abs(np.asarray(im.convert("L"), np.float64).mean() - 127.5) < 3  # not clipped to white
    with pytest.raises(UserError, match="has uid 0+1, the work dir's captions say f+: pass the shards"):
        I.write_thumbnails(tmp_path / "site2", {"00000000": {"grey16": "f" * 32}}, {"00000000": str(tar)}, 16)


def test_out_must_be_new_empty_or_a_site_and_reruns_drop_stale_pages(site, clean_work, tmp_path):
    shards = str(clean_work.parent / "shards")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my page")
    with pytest.raises(UserError, match="holds files that `mode inspect` did not write"):
        I.run(str(clean_work), shards, str(mine))
    assert (mine / "index.html").read_text() == "my page"
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    (copy / ".mode-inspect").unlink()  # a site of the version before the mark is taken as one
    (copy / "expert_9.html").write_text("an expert of an earlier clustering")
    (copy / "thumbs" / ("0" * 32 + ".jpg")).write_bytes(b"old")
    I.run(str(clean_work), shards, str(copy), per_expert=10, per_fine=3)
    assert not (copy / "expert_9.html").exists() and not (copy / "thumbs" / ("0" * 32 + ".jpg")).exists()
    assert (copy / ".mode-inspect").exists()
    (copy / "notes.txt").write_text("the user's")  # in a marked site: kept by a rerun
    I.run(str(clean_work), shards, str(copy), per_expert=10, per_fine=3)
    assert (copy / "notes.txt").exists()
    assert sorted(p.name for p in copy.glob("*.html")) == sorted(p.name for p in site.glob("*.html"))


def test_summaries_are_escaped_and_a_partial_route_is_not_shown(clean_work, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(clean_work, work)
    evil = '<img src=x onerror="alert(1)">'
    subset = tmp_path / "s.npy"
    subset.with_suffix(".npy.json").write_text(json.dumps({"filter": evil, "rows": evil, "kept": 1,
                                                           "skipped": {evil: evil}}))
    route = WorkDir(work).summary(WorkDir(work).route_dir)  # `mode route` stopped after 1 of 2 shards
    route.parent.mkdir(parents=True, exist_ok=True)
    route.write_text(json.dumps({"complete": False, "shards_done": 1, "shards_total": 2, "processed": 5, "kept": 5,
                                 "out_of_cluster": [99999, 99999, 99999], "sizes": [1, 1, 1]}))
    out = tmp_path / "site"
    I.run(str(work), str(clean_work.parent / "shards"), str(out), subset=str(subset), per_expert=2, per_fine=1)
    index = (out / "index.html").read_text()
    assert "onerror=" not in index.replace("onerror=&quot;", "") and index.count("&lt;img src=x") == 4
    assert "<td>route (incomplete: 1 of 2)</td>" in index and "99999" not in index


def test_a_report_of_another_clustering_or_malformed_is_one_line(report, clean_work, tmp_path):
    shards = str(clean_work.parent / "shards")
    bad = tmp_path / "report"
    shutil.copytree(report / "report", bad)
    weights = json.loads((bad / "weights.json").read_text())
    for changed, message in (({**weights, "clustering": "0" * 64}, "weighted with another clustering"),
                             ({**weights, "experts": [*weights["experts"], "e3"],
                               "weights": {t: [*w, 0.0] for t, w in weights["weights"].items()}},
                              "weighs 4 experts; the work dir"),
                             ({"experts": weights["experts"]}, "not what `mode ensemble` writes")):
        (bad / "weights.json").write_text(json.dumps(changed))
        with pytest.raises(UserError, match=message):
            I.run(str(clean_work), shards, str(tmp_path / "site"), report=str(bad))


@pytest.mark.parametrize("labels,message", [(["e0", "uniform", "e2"], "'uniform' is a column of the report"),
                                            (["e0", "e0", "e2"], "'e0' is listed twice")])
def test_ensemble_refuses_labels_that_would_overwrite_columns(labels, message, report, toy_pool, clean_work,
                                                              tmp_path):
    tasks = Pool(toy_pool).eval_tasks_dir
    with pytest.raises(UserError, match=message):
        ensemble.run(str(clean_work), str(tasks), str(report / "eval"), labels, str(tmp_path / "r"))
