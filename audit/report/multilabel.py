"""Reports of a multi-label audit: a gallery per finding (GALLERY.md, gallery/<finding>/<group>/*.png) and
report.html with the findings comparison table and one section per finding. A pure function of the audit's
files (per_image.csv, per_finding.csv, cams.npz, summary.json, config.resolved.yaml) and the images on disk."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunDirError
from ..preprocess import InputSpec
from .html import esc, est_or_na, fmt_est
from .inputs import ReportInputs, _read_yaml
from .overlay import overlay_image

#: Gallery groups of each finding: (key, title, selection).
ML_GROUPS = (("false_negatives", "False negatives (positive, not flagged), most confident miss first"),
             ("high_conf_false_positives", "High-confidence false positives, most confident first"),
             ("artifact_evidence", "Highest evidence share on an artifact region (maps of flagged or positive cases)"))


@dataclass
class MLItem:
    finding: str
    group: str
    image_id: str
    path: Path | None
    caption: str
    note: str = ""


@dataclass
class MLInputs:
    out_dir: Path
    summary: dict
    long: pd.DataFrame
    images: pd.DataFrame
    cams: np.ndarray
    inp: ReportInputs
    notes: list[str] = field(default_factory=list)


def read_multilabel_dir(out_dir: str | Path) -> MLInputs:
    """Parse a multi-label audit folder; RunDirError naming a missing or unreadable file."""
    out = Path(out_dir)
    need = ("per_image.csv", "per_finding.csv", "cams.npz", "summary.json", "config.resolved.yaml")
    missing = [f for f in need if not (out / f).is_file()]
    if missing:
        raise RunDirError(f"{out}: missing {', '.join(missing)} (expected a multi-label audit's folder)")
    summary = json.loads((out / "summary.json").read_text())
    config = _read_yaml(out / "config.resolved.yaml")
    long = pd.read_csv(out / "per_finding.csv", dtype={"image_id": str})
    images = pd.read_csv(out / "per_image.csv", dtype={"image_id": str})
    with np.load(out / "cams.npz", allow_pickle=False) as z:
        cams = np.asarray(z["cam"], np.float32)
    run = config.get("run") or {}
    sd = dict(run.get("input") or {})
    for k in ("mean", "std"):
        if k in sd:
            sd[k] = tuple(sd[k])
    kinds = {str(k): str(v) for k, v in (config.get("regions") or {}).items()}
    # the shared ReportInputs (overlays, options, kinds) without a summary: the single-label `AuditSummary` does
    # not describe a multi-label audit, whose summary.json stays the dict MLInputs.summary
    inp = ReportInputs(out_dir=out, per_image=images, cams=cams, cam_index={}, layer=str(config.get("layer")),
                       summary=None, config=config, classes=list(summary.get("findings", {})), positive=None,
                       kinds=kinds, region_cfg=dict((config.get("options") or {}).get("regions") or {}),
                       spec=InputSpec(**sd))
    return MLInputs(out, summary, long, images, cams, inp)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))[:80]


def gallery_candidates(long: pd.DataFrame, finding: str, kinds: dict[str, str], high_conf: float
                       ) -> dict[str, pd.DataFrame]:
    """The rows of per_finding.csv of each gallery group of one finding, in display order (maps only)."""
    d = long[(long["finding"] == finding) & (long["map"] >= 0)]
    pred = d["pred"].astype(str).str.lower().isin(["true", "1", "1.0"])
    fn = d[(d["label"] == 1) & ~pred].sort_values("p", kind="stable")
    fp = d[(d["label"] == 0) & pred & (d["confidence"] >= high_conf)].sort_values("p", ascending=False,
                                                                                    kind="stable")
    arts = [f"frac_{r}" for r, k in kinds.items() if k == "artifact" and f"frac_{r}" in d]
    if arts:
        score = d[arts].max(axis=1, skipna=True)
        art = d.assign(_s=score)[score.notna()].sort_values("_s", ascending=False, kind="stable").drop(columns="_s")
    else:
        art = d.iloc[0:0]
    return {"false_negatives": fn, "high_conf_false_positives": fp, "artifact_evidence": art}


def _caption(row: dict, kinds: dict[str, str]) -> str:
    lab = row["label"]
    truth = "unlabelled" if not np.isfinite(lab) else ("positive" if lab == 1 else "negative")
    parts = [f"{row['finding']}: p={row['p']:.3f} ({'flagged' if str(row['pred']).lower() in ('true', '1') else 'not flagged'}), truth {truth}"]
    for r in kinds:
        v = row.get(f"frac_{r}")
        if v is not None and np.isfinite(v):
            parts.append(f"{r} {100 * v:.0f}%")
    return " · ".join(parts)


def build_multilabel_gallery(ml: MLInputs, n_per_group: int = 4, blocky: bool = False) -> list[MLItem]:
    """Write gallery/<finding>/<group>/<rank>_<image_id>.png; returns every item (written or skipped)."""
    items: list[MLItem] = []
    kinds = ml.inp.kinds
    hc = float((ml.inp.options or {}).get("high_conf") or 0.9)
    img_rows = {str(r["image_id"]): r for r in ml.images.to_dict("records")}
    root = ml.out_dir / "gallery"
    for f in ml.summary.get("findings", {}):
        for key, rows in gallery_candidates(ml.long, f, kinds, hc).items():
            for row in rows.head(n_per_group).to_dict("records"):
                iid = str(row["image_id"])
                grid, masks, note = ml.inp.load(img_rows.get(iid, {}))
                cap = _caption(row, kinds)
                if grid is None:
                    items.append(MLItem(f, key, iid, None, cap, note))
                    continue
                im = overlay_image(grid, ml.cams[int(row["map"])], masks, kinds, "", blocky=blocky)  # caption: text
                folder = root / _safe(f) / key
                folder.mkdir(parents=True, exist_ok=True)
                rank = sum(1 for it in items if it.finding == f and it.group == key) + 1
                path = folder / f"{rank:02d}_{_safe(iid)}.png"
                im.save(path)
                items.append(MLItem(f, key, iid, path, cap, note))
    return items


def gallery_md(ml: MLInputs, items: list[MLItem]) -> str:
    lines = [f"# Gallery per finding ({ml.out_dir.name})", "",
             "Raw Grad-CAM of each finding's own logit, upsampled; green outlines: target regions, magenta: "
             "artifact regions.", ""]
    for f in ml.summary.get("findings", {}):
        lines += [f"## {f}", ""]
        for key, title in ML_GROUPS:
            its = [i for i in items if i.finding == f and i.group == key]
            lines += [f"### {title}", ""]
            if not its:
                lines += ["(none)", ""]
                continue
            for it in its:
                if it.path is None:
                    lines.append(f"- {it.image_id}: skipped ({it.note})")
                else:
                    lines.append(f"![{it.image_id}]({it.path.relative_to(ml.out_dir).as_posix()})  \n{it.caption}")
            lines.append("")
    return "\n".join(lines)


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def multilabel_html(ml: MLInputs, items: list[MLItem]) -> str:
    """report.html: the comparison table, then one section per finding (labels and n, AUROC, decision threshold,
    operating points, regions with lift, counterfactual flips, gates, gallery)."""
    s = ml.summary
    d = s["data"]
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>multi-label audit</title><style>"
         "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
         ".fail{color:#b00}.pass{color:#070}img{max-width:260px;margin:4px}.grid{display:flex;flex-wrap:wrap}"
         "figure{margin:4px;width:270px;font-size:0.8em}</style></head><body>",
         f"<h1>Multi-label audit: {len(s['findings'])} findings</h1>",
         f"<p>n = {d['n']} images ({esc(d['split'])} split of {esc(d['manifest'])}); labels: 1 positive, 0 negative, "
         f"blank missing, -1 read as {esc(d['uncertain'])}; thresholds tuned on {esc(d['tuning'])}. "
         f"Grad-CAM at {esc(s['cam']['layer'])} {s['cam']['resolution']}, head {esc(', '.join(s['cam']['head']))}, "
         f"{s['cam']['n_maps']} maps ({esc(s['cam']['maps'])}). Gates: <b>{esc(str(s.get('verdict', 'none')).upper())}</b>"
         + (f": {esc((s.get('verdict_detail') or {}).get('headline'))}" if (s.get("verdict_detail") or {}).get("headline")
            else "") + ".</p>", *([f"<p class='fail'>Split: {esc(d['split_note'])}</p>"] if d.get("split_note") else []),
         "<h2 id='comparison'>Findings compared</h2><table>"]
    ts = est_or_na(s["comparison"][0]["target_sensitivity"]) if s.get("comparison") else "n/a"
    h.append(_row(["finding", "n labelled", "positives", "AUROC [95% CI]", f"sensitivity @{ts}",
                   f"specificity @{ts}", "false negatives", "target share", "top artifact lift", "top flip rate",
                   "gates"], "th"))
    for r in s.get("comparison", []):
        h.append(_row([f"<a href='#f-{_safe(r['finding'])}'>{esc(r['finding'])}</a>", str(r["n"]), str(r["n_pos"]),
                       esc(est_or_na(r["auroc"])), esc(est_or_na(r["sensitivity"])), esc(est_or_na(r["specificity"])),
                       str(r["false_negatives"]), est_or_na(r["target_frac"]),
                       esc(f"{r['top_artifact']} {est_or_na(r['top_lift'], digits=1)}" if r["top_artifact"] else "-"),
                       esc(f"{r['top_flip_region']} {est_or_na(r['top_flip_rate'])}" if r["top_flip_region"] else "-"),
                       f"<span class='{r['gates'] or ''}'>{esc(r['gates'] or '-')}</span>"]))
    h.append("</table>")
    for f, e in s["findings"].items():
        h.append(f"<h2 id='f-{_safe(f)}'>{esc(f)}</h2><p>{esc(e['labelled_note'])}; {e['n_missing']} missing, "
                 f"{e['n_uncertain']} uncertain (-1). Decision threshold p ≥ {est_or_na(e['threshold'], digits=3)}. "
                 f"AUROC {esc(fmt_est(e['auroc']))}.</p>")
        dec = e["decision"]
        h.append(f"<p>At the decision threshold: sensitivity {esc(fmt_est(dec['sensitivity']))}, specificity "
                 f"{esc(fmt_est(dec['specificity']))}; false negatives {dec['fn']} of {e['n_pos']}; high-confidence "
                 f"errors {esc(fmt_est(e['high_conf_errors']['rate'], pct=True))}.</p>")
        op = e.get("operating_points") or {}
        if op.get("points"):
            h.append(f"<h3>Operating points ({esc(op.get('tuning'))})</h3><table>"
                     + _row(["target sensitivity", "threshold p", "sensitivity", "specificity", "PPV", "NPV"], "th"))
            for p in op["points"]:
                h.append(_row([est_or_na(p["target_sensitivity"]), est_or_na(p["threshold"], digits=3), esc(fmt_est(p["sensitivity"])),
                               esc(fmt_est(p["specificity"])), esc(fmt_est(p["ppv"])), esc(fmt_est(p["npv"]))]))
            h.append("</table>")
        if e.get("regions"):
            h.append("<h3>Evidence by region</h3><table>" + _row(
                ["region", "kind", "n maps", "median share", "median lift", "ρ(share, confidence)",
                 "AUROC(share → error)"], "th"))
            for r, x in e["regions"].items():
                link = x.get("link") or {}
                h.append(_row([esc(r), x["kind"], str(x["n_present"]), esc(fmt_est(x["median_frac"])),
                               esc(fmt_est(x["lift"])), esc(fmt_est(link.get("spearman_conf_all"))),
                               esc(fmt_est(link.get("auroc_error")))]))
            h.append("</table>")
        if e.get("counterfactual"):
            h.append("<h3>Counterfactual: region removed</h3><table>" + _row(
                ["region", "n tested", "flips", "flip rate", "mean Δp"], "th"))
            for r, x in e["counterfactual"].items():
                h.append(_row([esc(r), str(x["n"]), str(x["n_flips"]), esc(fmt_est(x["flip_rate"])),
                               esc(fmt_est(x["mean_delta"]))]))
            h.append("</table>")
        gs = [g for g in s.get("gates", []) if g["name"].split("[")[1].rstrip("]") == f]
        if gs:
            h.append("<h3>Gates</h3><table>" + _row(["gate", "value", "threshold", "result"], "th"))
            for g in gs:
                res = {True: "pass", False: "fail", None: "not measured"}[g["passed"]]
                h.append(_row([esc(g["name"]), est_or_na(g["value"]), est_or_na(g["threshold"]),
                               f"<span class='{res}'>{res}</span>"]))
            h.append("</table>")
        its = [i for i in items if i.finding == f and i.path is not None]
        if its:
            h.append("<h3>Gallery</h3>")
            for key, title in ML_GROUPS:
                g = [i for i in its if i.group == key]
                if g:
                    h.append(f"<h4>{esc(title)}</h4><div class='grid'>" + "".join(
                        f"<figure><img src='{esc(i.path.relative_to(ml.out_dir).as_posix())}' "
                        f"alt='{esc(i.image_id)}'><figcaption>{esc(i.image_id)}<br>{esc(i.caption)}</figcaption>"
                        "</figure>" for i in g) + "</div>")
    h.append("</body></html>")
    return "\n".join(h)


def render_multilabel_reports(out_dir: str | Path, n_per_group: int = 4, blocky: bool = False) -> dict[str, Path]:
    """Write GALLERY.md, gallery/<finding>/<group>/*.png and report.html of a multi-label audit folder."""
    if not isinstance(n_per_group, int) or n_per_group < 0:
        raise ValueError(f"n_per_group: expected a non-negative integer, got {n_per_group!r}")
    ml = read_multilabel_dir(out_dir)
    items = build_multilabel_gallery(ml, n_per_group, blocky)
    md = ml.out_dir / "GALLERY.md"
    md.write_text(gallery_md(ml, items), encoding="utf-8")
    page = ml.out_dir / "report.html"
    page.write_text(multilabel_html(ml, items), encoding="utf-8")
    return {"html": page, "gallery_md": md, "gallery": ml.out_dir / "gallery"}
