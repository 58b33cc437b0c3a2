"""`mode inspect`: a static site for looking at a clustering before training on it, and at the routing after.

    mode inspect --work-dir W --shards S --out DIR [--subset F.npy] [--tasks T --eval-out E --report R]

writes DIR/index.html (opens from the file system, offline; plain HTML and CSS, a little JavaScript for the
caption search):

- index.html: the pipeline's summaries (the filter's kept rows when --subset names its output, the reshard's
  counts when S is a reshard, each prep step's processed/kept/skipped by reason), the experts' sizes and shares
  (with their out-of-cluster pairs when `mode route` ran), the fine clusters' size distribution, and a search
  over the captions of every sampled thumbnail;
- expert_<k>.html per expert: its most distinctive caption words (smoothed log-odds against all experts, over a
  seeded sample of captions), a grid of thumbnails with captions, and each of its fine clusters with its own;
- tasks.html with --report (what `mode ensemble` wrote): per task each expert's score, uniform / ensemble /
  dense, the weights, and, with --tasks, why: each class's nearest fine cluster (link), its distance, and the
  experts' MoDE scores (`mode.evaluation.ensemble.mode_scores`).

What it reads: the work dir's summaries, one pass over assign/*.parquet (keys and cluster ids) to draw the
sample, the captions of the sampled rows only (captions/<shard>.parquet of shards that hold one), and the tars of
those shards once, decoding only the sampled images. The sample is seeded (`--seed`): each row gets a priority
from a generator seeded by (seed, shard index), and each cluster shows its lowest priorities, so a rerun shows the
same samples. Thumbnails (JPEG, at most `--thumb-size` px) are written once, as DIR/thumbs/<hash>.jpg, the hash
of the tar (path, size, mtime), the sample's key and the size, so a rerun keeps those still wanted and a key never
becomes a path; each is checked to be the work dir's sample (its uid). DIR holds `.mode-inspect`: a folder without
it must be empty, and a rerun removes the pages and thumbnails it no longer writes.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from mode.core.errors import UserError, reading
from mode.core.layout import WorkDir
from mode.core.lock import holding
from mode.core.runner import read_complete_summary
from mode.core.shards import IMAGE_EXTS, atomic_write, expand, iter_tar, natural_key, overlaps, shard_ids
from mode.core.text import content_words
from mode.core.uids import NoUid, sample_uid

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """The sampled rows: parallel arrays, one entry per row kept by some cluster's sample."""

    priority: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fine: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    coarse: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def take(self, idx: np.ndarray) -> "Sample":
        return Sample(self.priority[idx], self.shard[idx], self.row[idx], self.fine[idx], self.coarse[idx])

    def cat(self, other: "Sample") -> "Sample":
        return Sample(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in
                        ("priority", "shard", "row", "fine", "coarse")))


def lowest_per_group(group: np.ndarray, priority: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest priorities of every group value (all of a group's rows when it has fewer)."""
    if len(group) == 0 or k <= 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((priority, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    return order[rank < k]


def draw_sample(assign_files: list[Path], per_coarse: int, per_fine: int, seed: int) -> Sample:
    """One pass over the assignment: each coarse cluster's `per_coarse` and each fine cluster's `per_fine`
    lowest-priority rows (see the module docstring), merged file by file so memory stays bounded."""
    kept = Sample()
    for i, path in enumerate(tqdm(assign_files, desc="inspect: sample", unit="shard")):
        with reading(path, "assignment parquet"):
            t = pq.read_table(path, columns=["fine", "coarse"])
        fine = t.column("fine").to_numpy().astype(np.int64)
        coarse = t.column("coarse").to_numpy().astype(np.int64)
        priority = np.random.default_rng([seed, i]).random(len(fine))
        rows = Sample(priority, np.full(len(fine), i), np.arange(len(fine)), fine, coarse)
        both = kept.cat(rows)
        keep = np.union1d(lowest_per_group(both.coarse, both.priority, per_coarse),
                          lowest_per_group(both.fine, both.priority, per_fine))
        kept = both.take(keep)
    return kept


def captions_of(work: WorkDir, ids: list[str], sample: Sample) -> tuple[list[str], list[str], list[str]]:
    """(keys, captions, uids) of the sampled rows, read from captions/<shard>.parquet of the shards that hold one."""
    keys, caps, uids = [""] * len(sample.row), [""] * len(sample.row), [""] * len(sample.row)
    for s in np.unique(sample.shard):
        path = work.captions(ids[s])
        with reading(path, "captions parquet"):
            t = pq.read_table(path, columns=["uid", "key", "caption"])
        u, k, c = (t.column(n).to_pylist() for n in ("uid", "key", "caption"))
        for j in np.flatnonzero(sample.shard == s):
            r = int(sample.row[j])
            if r >= len(k):
                raise UserError(f"{path} has {len(k)} rows but the assignment has row {r}: rerun the prep steps")
            keys[j], caps[j], uids[j] = str(k[r]), "" if c[r] is None else str(c[r]), str(u[r])
    return keys, caps, uids


def tar_identity(tar: str) -> str:
    """The tar as it is now: real path, size and mtime (a remade pool gets new thumbnails)."""
    st = os.stat(tar)
    return f"{os.path.realpath(tar)}\0{st.st_size}\0{st.st_mtime_ns}"


def thumb_name(tar_ident: str, key: str, size: int) -> str:
    """thumbs/<hash>.jpg of the tar's identity, the key and the size; never the key itself."""
    ident = "\0".join((tar_ident, key, str(size)))
    return f"thumbs/{hashlib.sha256(ident.encode()).hexdigest()[:32]}.jpg"


def write_thumbnails(out: Path, wanted: dict[str, dict[str, str]], tar_of: dict[str, str], size: int
                     ) -> dict[str, str]:
    """Thumbnails of the wanted {key: uid} per shard id, each tar read once; returns {shard/key: relative path}
    of those written or already there. Images that do not decode are left out (and counted in the log); a sample
    whose uid is not the work dir's means other shards than the work dir's: a UserError."""
    done, bad = {}, Counter()
    for shard_id in tqdm(sorted(wanted, key=natural_key), desc="inspect: thumbnails", unit="tar"):
        ident = tar_identity(tar_of[shard_id])  # one stat per tar, not per sampled key
        names = {key: thumb_name(ident, key, size) for key in wanted[shard_id]}
        todo = {key for key, name in names.items() if not (out / name).exists()}  # else written by an earlier run
        done.update({f"{shard_id}/{key}": name for key, name in names.items() if key not in todo})
        if not todo:
            continue
        errors = Counter()
        for key, members in iter_tar(tar_of[shard_id], errors):
            if key not in todo:
                continue
            try:
                uid = sample_uid(members)
            except NoUid:
                uid = None
            if uid != wanted[shard_id][key]:
                raise UserError(f"{tar_of[shard_id]}: sample {key!r} has uid {uid}, the work dir's captions say "
                                f"{wanted[shard_id][key]}: pass the shards the work dir was made from")
            data = next((members[e] for e in IMAGE_EXTS if e in members), None)
            try:
                _thumbnail(data, size, out / names[key])
                done[f"{shard_id}/{key}"] = names[key]
            except Exception:  # noqa: BLE001 - any undecodable image is a counted skip
                bad["bad_image"] += 1
        bad.update(errors)
    if bad:
        log.warning(f"inspect: thumbnails skipped: {dict(bad)}")
    return done


def _thumbnail(data: bytes, size: int, path: Path) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16/32-bit grey: convert("RGB") would clip
            a = np.asarray(im, np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
            im = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), "L")
        im = im.convert("RGB")
        im.thumbnail((size, size))
        with atomic_write(path) as f:
            im.save(f, "JPEG", quality=80)


def distinctive_words(captions_by_expert: dict[int, list[str]], top: int = 12, prior: float = 0.5,
                      min_count: int = 2) -> dict[int, list[tuple[str, float, int]]]:
    """Per expert, its words with the highest smoothed log-odds ratio against all experts' captions together:
    log((c_kw + a) / (n_k + a V)) - log((c_w + a) / (n + a V)); words seen fewer than `min_count` times in the
    expert are left out. Returns [(word, score, count)]."""
    counts = {k: Counter(w for c in caps for w in set(content_words(c))) for k, caps in captions_by_expert.items()}
    total = Counter()
    for c in counts.values():
        total.update(c)
    vocab, n = max(1, len(total)), sum(total.values())
    out = {}
    for k, c in counts.items():
        nk = sum(c.values())
        scored = [(w, math.log((cw + prior) / (nk + prior * vocab))
                   - math.log((total[w] + prior) / (n + prior * vocab)), cw) for w, cw in c.items() if cw >= min_count]
        out[k] = sorted(scored, key=lambda x: (-x[1], x[0]))[:top]
    return out


# ------------------------------------------------------------------------------------------ HTML

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#234;color:#fff;padding:10px 20px}header a{color:#cde;margin-right:14px}
main{padding:10px 20px;max-width:1200px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{width:120px;font-size:11px;background:#fff;border:1px solid #ddd;padding:3px}
.card img{display:block;max-width:114px;max-height:114px;margin:auto}
.bar{fill:#4a7}.bar2{fill:#c84}.words span{display:inline-block;background:#e4eef8;margin:2px;padding:1px 5px}
#results .card{display:inline-block;margin:3px}input[type=search]{width:320px;padding:4px}
"""

JS = """
function search(q){
  q=q.trim().toLowerCase(); const box=document.getElementById('results'); box.innerHTML='';
  if(q.length<2){document.getElementById('count').textContent='';return;}
  const hits=SAMPLES.filter(s=>s.c.toLowerCase().includes(q));
  document.getElementById('count').textContent=hits.length+' of '+SAMPLES.length+' sampled captions';
  for(const s of hits.slice(0,200)){
    const d=document.createElement('div'); d.className='card';
    const a=document.createElement('a'); a.href='expert_'+s.e+'.html#fine-'+s.f;
    const i=document.createElement('img'); i.src=s.t; i.alt=''; a.appendChild(i); d.appendChild(a);
    const p=document.createElement('div'); p.textContent=s.c+' (expert '+s.e+', fine '+s.f+')'; d.appendChild(p);
    box.appendChild(d);
  }
}
window.addEventListener('load',()=>{
  const imgs=[...document.images];
  document.body.dataset.images=imgs.length;
  document.body.dataset.brokenImages=imgs.filter(i=>!i.complete||i.naturalWidth===0).length;
});
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


class Html(str):
    """A fragment this module built (a link, an escaped list): `table` puts it in as it is."""


def page(title: str, body: str, nav: list[tuple[str, str]], scripts: tuple[str, ...] = ()) -> str:
    links = "".join(f'<a href="{esc(h)}">{esc(t)}</a>' for h, t in nav)
    tags = "".join(f'<script src="{esc(s)}"></script>' for s in scripts)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<link rel=\"stylesheet\" href=\"style.css\">{tags}</head><body><header><b>mode inspect</b> "
            f"{links}</header><main><h1>{esc(title)}</h1>{body}</main></body></html>\n")


def bar_chart(values: list[float], labels: list[str], width: int = 640, height: int = 160, css: str = "bar",
              links: list[str] | None = None) -> str:
    """An inline SVG bar chart (no library, no script)."""
    if not values:
        return ""
    top = max(max(values), 1e-12)
    w = width / len(values)
    bars = []
    for i, (v, lab) in enumerate(zip(values, labels)):
        h = (height - 20) * v / top
        rect = (f'<rect class="{css}" x="{i * w + 1:.1f}" y="{height - 20 - h:.1f}" width="{max(w - 2, 1):.1f}" '
                f'height="{h:.1f}"><title>{esc(lab)}: {esc(v)}</title></rect>')
        bars.append(f'<a href="{esc(links[i])}">{rect}</a>' if links else rect)
        if len(values) <= 24:
            bars.append(f'<text x="{i * w + w / 2:.1f}" y="{height - 5}" font-size="10" text-anchor="middle">'
                        f'{esc(lab)}</text>')
    return f'<svg width="{width}" height="{height}" role="img">{"".join(bars)}</svg>'


def table(header: list[str], rows: list[list], attrs: list[str] | None = None) -> str:
    """A table; every cell is escaped (`fmt`) unless it is `Html`; `attrs` are written as they are."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr{(' ' + attrs[i]) if attrs else ''}>"
                   + "".join(f"<td>{c if isinstance(c, Html) else fmt(c)}</td>" for c in r) + "</tr>"
                   for i, r in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else esc(v)


def cards(items: list[dict]) -> str:
    return '<div class="grid">' + "".join(
        f'<div class="card" data-key="{esc(it["key"])}"><img src="{esc(it["thumb"])}" alt="" loading="eager">'
        f"<div>{esc(it['caption'][:140])}</div></div>" for it in items if it.get("thumb")) + "</div>"


# ------------------------------------------------------------------------------------------ the site

def _summary(path: Path) -> dict | None:
    if not path.exists():
        return None
    with reading(path, "step summary (json)"):
        return json.loads(path.read_text())


def _pipeline_section(work: WorkDir, shards_spec: str, subset: str | None) -> str:
    rows = []
    if subset:
        info = _summary(Path(subset + ".json") if not subset.endswith(".json") else Path(subset))
        if info is None:
            raise UserError(f"--subset {subset}: no {subset}.json next to it (written by `mode filter`)")
        rows.append([f"filter {info.get('filter')}", info.get("rows"), info.get("kept"),
                     _reasons(info.get("skipped"))])
    for d in expand_dirs(shards_spec):
        meta = _summary(Path(d) / "meta.json")
        if meta and "output_count" in meta:
            rows.append([f"reshard ({Path(d).name})", meta.get("processed_count"), meta.get("output_count"), "-"])
    for step, folder in (("captions", work.captions_dir), ("assign", work.assign_dir), ("route", work.route_dir)):
        s = _summary(WorkDir.summary(folder))
        if s:
            done = "" if s.get("complete") else f" (incomplete: {s.get('shards_done')} of {s.get('shards_total')})"
            rows.append([step + done, s.get("processed"), s.get("kept"), _reasons(s.get("skipped"))])
    cluster = _summary(WorkDir.summary(work.clusters_dir)) or {}
    cfg = cluster.get("config", {})
    text = table(["step", "in", "kept", "skipped by reason"], rows)
    if cfg:
        text += (f"<p>clustering: {esc(cfg.get('fine'))} fine -> {esc(cfg.get('coarse'))} coarse, metric "
                 f"{esc(cfg.get('metric'))}, balanced {esc(cfg.get('balance'))}, seed {esc(cfg.get('seed'))}, "
                 f"{esc(cluster.get('features'))} features sampled</p>")
    return text


def _reasons(skipped) -> str:
    return ", ".join(f"{k} {v}" for k, v in skipped.items()) if isinstance(skipped, dict) and skipped else "-"


def expand_dirs(spec: str) -> list[str]:
    return [p for p in spec.split("::") if Path(p).is_dir()]


def run(work_dir: str, shards: str, out: str, tasks: str | None = None, eval_out: str | None = None,
        report: str | None = None, subset: str | None = None, per_expert: int = 24, per_fine: int = 6,
        word_sample: int = 400, thumb_size: int = 112, seed: int = 0) -> Path:
    """Write the site; returns the path of its index.html."""
    work, out_dir = WorkDir(Path(work_dir)), Path(out)
    counts = read_complete_summary(work.assign_dir, "assign", "inspecting the clusters")["counts"]
    coarse_sizes, fine_sizes = counts["coarse"], counts["fine"]
    paths = expand(shards)
    ids_of = shard_ids(paths)
    tar_of = {i: p for p, i in ids_of.items()}
    for p in paths:
        if overlaps(out_dir, Path(p).parent):
            raise UserError(f"--out {out} overlaps the shards' folder {Path(p).parent}: pick another folder")
    if overlaps(out_dir, work.root):
        raise UserError(f"--out {out} overlaps the work dir {work.root}: pick another folder")
    assign_files = sorted(work.assign_dir.glob("*.parquet"), key=lambda p: natural_key(p.name))
    ids = [p.stem for p in assign_files]
    missing = [i for i in ids if i not in tar_of]
    if missing:
        raise UserError(f"the work dir's shard {missing[0]} is not among --shards {shards} "
                        f"({len(missing)} of {len(ids)} missing): pass the shards the work dir was made from")
    weights = read_report(report, work, len(coarse_sizes)) if report else None
    claim_site(out_dir)
    with holding(out_dir, "inspect", "`mode inspect` into this --out"):
        sample = draw_sample(assign_files, max(per_expert, word_sample), per_fine, seed)
        keys, caps, uids = captions_of(work, ids, sample)
        order = np.lexsort((sample.priority, sample.coarse))
        shown = {}  # sample index -> shown (thumbnail wanted)
        by_coarse: dict[int, list[int]] = {}
        for j in order:
            by_coarse.setdefault(int(sample.coarse[j]), []).append(int(j))
        for k, js in by_coarse.items():
            for j in js[:per_expert]:
                shown[j] = True
        by_fine: dict[int, list[int]] = {}
        for j in lowest_per_group(sample.fine, sample.priority, per_fine):
            by_fine.setdefault(int(sample.fine[j]), []).append(int(j))
        for f_, js in by_fine.items():
            js.sort(key=lambda j: sample.priority[j])
            for j in js:
                shown[j] = True
        wanted: dict[str, dict[str, str]] = {}
        for j in shown:
            wanted.setdefault(ids[sample.shard[j]], {})[keys[j]] = uids[j]
        thumbs = write_thumbnails(out_dir, wanted, tar_of, thumb_size)

        def item(j):
            return {"key": keys[j], "caption": caps[j], "thumb": thumbs.get(f"{ids[sample.shard[j]]}/{keys[j]}"),
                    "fine": int(sample.fine[j]), "expert": int(sample.coarse[j])}

        words = distinctive_words({k: [caps[j] for j in js[:word_sample]] for k, js in by_coarse.items()})
        route = _summary(WorkDir.summary(work.route_dir))
        route = route if route and route.get("complete") else None  # a partial route's counts are not the pool's
        f2c = np.load(work.fine_to_coarse) if work.fine_to_coarse.exists() else None
        nav = [("index.html", "overview")] + [(f"expert_{k}.html", f"expert {k}") for k in range(len(coarse_sizes))]
        has_tasks = report is not None
        if has_tasks:
            nav.append(("tasks.html", "tasks"))
        files = {"style.css": CSS, "app.js": JS}
        search = [{"c": it["caption"], "t": it["thumb"], "e": it["expert"], "f": it["fine"]}
                  for it in (item(j) for j in sorted(shown)) if it["thumb"]]
        files["search_data.js"] = "const SAMPLES = " + json.dumps(search).replace("</", "<\\/") + ";\n"
        files["index.html"] = _index(work, shards, subset, coarse_sizes, fine_sizes, route, words, nav, eval_out,
                                     report)
        for k in range(len(coarse_sizes)):
            fines = [f for f in range(len(fine_sizes)) if f2c is not None and int(f2c[f]) == k]
            files[f"expert_{k}.html"] = _expert_page(k, coarse_sizes, fine_sizes, fines, route, words.get(k, []),
                                                     [item(j) for j in by_coarse.get(k, [])[:per_expert]],
                                                     {f: [item(j) for j in by_fine.get(f, [])] for f in fines}, nav)
        if has_tasks:
            files["tasks.html"] = _tasks_page(work, report, weights, tasks, nav)
        for name, text in files.items():
            with atomic_write(out_dir / name, "w") as f:
                f.write(text)
        _remove_stale(out_dir, set(files), set(thumbs.values()))
    return out_dir / "index.html"


MARKER = ".mode-inspect"


def claim_site(out_dir: Path) -> None:
    """--out is a new or empty folder (then marked as a site) or a site this command wrote: never a user's."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file: pick a folder")
    if (out_dir / MARKER).exists():
        return
    entries = out_dir.iterdir() if out_dir.is_dir() else ()
    names = {p.name for p in entries if not p.name.startswith((".lock-", ".tmp-"))}
    ours = {"index.html", "tasks.html", "style.css", "app.js", "search_data.js", "thumbs"}
    older = {"search_data.js", "thumbs"} <= names and all(n in ours or re.fullmatch(r"expert_\d+\.html", n)
                                                              for n in names)  # a site of a version before the mark
    if names and not older:
        raise UserError(f"--out {out_dir} holds files that `mode inspect` did not write: pick a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("a site written by `mode inspect`; its pages and thumbs/ are replaced by a rerun\n")


def _remove_stale(out_dir: Path, pages: set[str], thumbs: set[str]) -> None:
    """Pages and thumbnails of an earlier run that this one did not write (fewer experts, no report, a new pool)."""
    for p in [*out_dir.glob("expert_*.html"), out_dir / "tasks.html", *out_dir.glob("thumbs/*.jpg")]:
        rel = p.relative_to(out_dir).as_posix()
        if p.is_file() and rel not in pages and rel not in thumbs:
            p.unlink()


def read_report(report: str, work: WorkDir, n_experts: int) -> dict:
    """weights.json of `mode ensemble --report`, checked: well formed, and weighted with this work dir's
    clustering (a report of another one would explain the wrong experts)."""
    rep = Path(report)
    weights = _summary(rep / "weights.json")
    if weights is None or not (rep / "ensemble.csv").exists():
        raise UserError(f"--report {report}: no weights.json and ensemble.csv there (written by `mode ensemble`)")
    experts, per_task = weights.get("experts") if isinstance(weights, dict) else None, None
    if isinstance(weights, dict) and isinstance(weights.get("weights"), dict):
        per_task = weights["weights"]
    if (not isinstance(experts, list) or per_task is None
            or any(not isinstance(w, list) or len(w) != len(experts) or
                   not all(isinstance(x, (int, float)) for x in w) for w in per_task.values())):
        raise UserError(f"--report {report}: weights.json is not what `mode ensemble` writes: run it again")
    if len(experts) != n_experts:
        raise UserError(f"--report {report} weighs {len(experts)} experts; the work dir has {n_experts}: "
                        "pass the report made with this work dir")
    made_with = weights.get("clustering")
    if made_with is not None and made_with != work.clustering_id():
        raise UserError(f"--report {report} was weighted with another clustering than --work-dir {work.root}: "
                        "pass the report made with this work dir")
    return weights


def _index(work, shards, subset, coarse_sizes, fine_sizes, route, words, nav, eval_out, report) -> str:
    total = sum(coarse_sizes)
    rows, attrs = [], []
    for k, n in enumerate(coarse_sizes):
        ooc = route["out_of_cluster"][k] if route else None
        top = ", ".join(w for w, _, _ in words.get(k, [])[:6])
        rows.append([Html(f'<a href="expert_{k}.html">expert {k}</a>'), n, f"{n / total:.1%}" if total else "-",
                     "-" if ooc is None else ooc, top])
        attrs.append(f'data-expert="{k}" data-size="{n}"')
    body = "<h2>Pipeline</h2>" + _pipeline_section(work, shards, subset)
    body += (f"<h2>Experts</h2><p>{len(coarse_sizes)} experts, {total} pairs, {len(fine_sizes)} fine clusters.</p>"
             + bar_chart([float(n) for n in coarse_sizes], [str(k) for k in range(len(coarse_sizes))],
                         links=[f"expert_{k}.html" for k in range(len(coarse_sizes))])
             + table(["expert", "pairs", "share", "out-of-cluster pairs (route)", "distinctive words"], rows, attrs))
    sizes = sorted(fine_sizes, reverse=True)
    body += ("<h2>Fine clusters</h2>"
             f"<p>sizes from {min(sizes)} to {max(sizes)} (median {int(np.median(sizes))}), largest first:</p>"
             + bar_chart([float(s) for s in sizes], [str(s) for s in sizes], css="bar2"))
    if eval_out and report:
        body += _label_averages(Path(eval_out), Path(report))
    body += ('<h2>Search the sampled captions</h2><input type="search" id="q" placeholder="a word of a caption" '
             'oninput="search(this.value)"> <span id="count"></span><div id="results"></div>')
    return page("Clusters and experts", body, nav, ("search_data.js", "app.js"))


def _label_averages(eval_out: Path, report: Path) -> str:
    weights = _summary(report / "weights.json") or {}
    rows = []
    for label in weights.get("experts", []):
        agg = _summary(eval_out / label / "aggregate.json")
        if isinstance(agg, dict):
            rows.append([label, agg.get("Average"), agg.get("tasks")])
    return ("<h2>Evaluation averages</h2>" + table(["label", "average (DataComp's aggregate)", "over tasks (of 38)"],
                                                   rows)) if rows else ""


def _expert_page(k, coarse_sizes, fine_sizes, fines, route, words, grid, fine_items, nav) -> str:
    n = coarse_sizes[k]
    ooc = route["out_of_cluster"][k] if route else None
    share = f", {ooc / route['sizes'][k]:.1%} of its routed shards are out-of-cluster pairs" if route else ""
    body = (f'<p data-expert="{k}" data-size="{n}" data-fine-count="{len(fines)}">{n} pairs '
            f"({n / max(1, sum(coarse_sizes)):.1%} of the pool), {len(fines)} fine clusters{share}.</p>")
    body += ('<h2>Distinctive caption words</h2><p class="words">'
             + "".join(f'<span title="log-odds {s:.2f}, in {c} sampled captions">{esc(w)}</span>'
                       for w, s, c in words) + "</p>")
    body += f"<h2>Sample</h2>{cards(grid)}"
    body += "<h2>Fine clusters</h2>"
    for f in sorted(fines, key=lambda f: -fine_sizes[f]):
        body += (f'<h3 id="fine-{f}" data-fine="{f}" data-size="{fine_sizes[f]}">fine cluster {f}: '
                 f"{fine_sizes[f]} pairs</h3>{cards(fine_items.get(f, []))}")
    return page(f"Expert {k}", body, nav, ("app.js",))


def _tasks_page(work: WorkDir, report: str, weights: dict, tasks: str | None, nav) -> str:
    import csv

    rep = Path(report)
    with reading(rep / "ensemble.csv", "ensemble report (csv)"):
        rows = list(csv.DictReader((rep / "ensemble.csv").read_text(encoding="utf-8").splitlines()))
    experts = weights["experts"]
    cols = [c for c in rows[0] if c not in ("task", "num_classes")] if rows else []
    body = (f"<p>weighting: {esc(weights.get('weighting'))}</p>"
            + table(["task", "classes", *cols], [[r.get("task"), r.get("num_classes"), *(r.get(c) for c in cols)]
                                                 for r in rows]))
    why = _why(work, tasks, weights) if tasks else {}
    for key, w in weights["weights"].items():
        body += f'<h2 id="{esc(key)}">{esc(key)}</h2>'
        body += table(["expert", "weight", *(["MoDE score"] if key in why else [])],
                      [[Html(f'<a href="expert_{i}.html">{esc(e)}</a>'), f"{w[i]:.4f}",
                        *([f"{why[key]['scores'][i]:.4g}"] if key in why else [])] for i, e in enumerate(experts)],
                      [f'data-task="{esc(key)}" data-expert="{i}" data-weight="{w[i]}"' for i in range(len(experts))])
        if key in why:
            body += table(["class", "nearest fine cluster", "distance", "expert"],
                          [[c, Html(f'<a href="expert_{k}.html#fine-{f}">{f}</a>'), f"{d:.3f}", k]
                           for c, f, d, k in why[key]["classes"]])
    return page("Tasks and routing", body, nav, ("app.js",))


def _why(work: WorkDir, tasks: str, weights: dict) -> dict:
    """Per classification task: each class's nearest fine centroid, its distance and expert, and the experts'
    MoDE scores, with the clustering's own caption encoder (as `mode ensemble` computes them)."""
    from mode.evaluation import tasks as T
    from mode.evaluation.ensemble import class_embeddings, mode_scores

    meta = json.loads(work.features_meta.read_text())
    fine, f2c = np.load(work.fine_centroids).astype(np.float64), np.load(work.fine_to_coarse)
    out = {}
    for task in T.find_tasks(tasks):
        if task.key not in weights["weights"] or task.kind != "classification":
            continue
        emb = class_embeddings(task, meta["encoder"], meta.get("pooling", "model")).astype(np.float64)
        d2 = (emb ** 2).sum(1)[:, None] - 2 * emb @ fine.T + (fine ** 2).sum(1)[None]
        nearest = d2.argmin(axis=1)
        dist = np.sqrt(np.maximum(d2[np.arange(len(emb)), nearest], 0))
        out[task.key] = {"scores": mode_scores(emb, fine, f2c).tolist(),
                         "classes": [(c, int(f), float(d), int(f2c[f])) for c, f, d in
                                     zip(task.classnames, nearest, dist)]}
    return out


# ------------------------------------------------------------------------------------------ `mode inspect`

def add_arguments(p: argparse.ArgumentParser) -> None:
    from mode.core.step import positive_int, seed_int

    p.add_argument("--work-dir", required=True, help="the clustering work dir (made by the prep steps)")
    p.add_argument("--shards", required=True, help="the shards the work dir was made from (for thumbnails)")
    p.add_argument("--out", required=True, help="folder for the site (index.html, expert_<k>.html, thumbs/)")
    p.add_argument("--subset", default=None, help="the filter's subset .npy (its .npy.json is shown)")
    p.add_argument("--tasks", default=None, help="evaluation tasks: explain each task's weights by its classes")
    p.add_argument("--eval-out", default=None, help="what `mode evaluate --out` wrote (labels' averages)")
    p.add_argument("--report", default=None, help="what `mode ensemble --report` wrote (scores and weights)")
    p.add_argument("--per-expert", type=positive_int, default=24, help="thumbnails per expert")
    p.add_argument("--per-fine", type=positive_int, default=6, help="thumbnails per fine cluster")
    p.add_argument("--word-sample", type=positive_int, default=400, help="captions per expert for its words")
    p.add_argument("--thumb-size", type=positive_int, default=112, help="largest thumbnail side, px")
    p.add_argument("--seed", type=seed_int, default=0)


def main(args: argparse.Namespace) -> None:
    if (args.tasks or args.eval_out) and not args.report:
        raise UserError("--tasks and --eval-out explain an ensemble: pass --report (what `mode ensemble` wrote)")
    index = run(args.work_dir, args.shards, args.out, args.tasks, args.eval_out, args.report, args.subset,
                args.per_expert, args.per_fine, args.word_sample, args.thumb_size, args.seed)
    print(f"site: {index.resolve()}")
