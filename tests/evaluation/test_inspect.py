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
