"""Outputs of `cli.py compare`: the terminal table, compare.json, compare.html and the disagreement gallery.

Everything here reads a `audit.compare.Comparison` (or its compare.json dict) and never recomputes a statistic.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .compare import Comparison
from .stats import fmt_estimate

__all__ = ["compare_renderable", "write_compare", "build_compare_gallery", "render_compare_html", "fmt_diff",
           "fmt_p", "GALLERY_GROUPS"]

#: gallery group → heading
GALLERY_GROUPS = {
    "candidate_wrong": "Candidate wrong, baseline right (most confident candidate first)",
    "candidate_right": "Candidate right, baseline wrong (most confident baseline first)",
    "onto_artifact": "Largest moves of evidence onto an artifact (share gained ≥ 0.05)",
}
#: the smallest rise of an artifact region's share of the evidence (candidate − baseline) the gallery shows
MIN_MOVE = 0.05
_STYLE = {"better": "green", "worse": "bold red", "no difference": "", "too small": "yellow", "undefined": "yellow",
          "pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow", "none": "dim"}
_GROUP_TITLE = {"performance": "performance", "regions": "evidence (Grad-CAM)", "counterfactual": "region removed",
                "calibration": "calibration"}


def _num(v, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def fmt_diff(d: dict, digits: int = 3) -> str:
    """"+0.125 [+0.031,+0.250]" for a difference Estimate dict (`audit.stats.fmt_estimate` with a sign)."""
    return fmt_estimate(d, digits=digits, sign=True)

def fmt_p(p) -> str:
    """"0.13", "0.004", "<0.001", "—" (no test)."""
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _value(e: dict, digits: int = 3) -> str:
    if e.get("too_small"):
        return f"small n={e.get('n')}"
    return _num(e.get("value"), digits)


def compare_renderable(d: dict, out_dir: str | None = None):
    """The meeting table (fits 100 columns): figure | n | baseline | candidate | difference [95% CI] | p | verdict,
    then the gates, the per-image changes and the verdict. d: compare.json's dict (`Comparison.to_dict()`)."""
    b, c, data = d["baseline"], d["candidate"], d["data"]
    head = Text.assemble(("Compare ", "bold"), (str(b["name"]), "bold cyan"), " (baseline) vs ",
                         (str(c["name"]), "bold cyan"), " (candidate)",
                         f"\n{data['n']} paired images" + (f" · split {data['split']}" if data.get("split") else "")
                         + (f" · positive class {data['positive']}" if data.get("positive") else "")
                         + (f" · own audits' verdicts {str(b.get('audit_verdict')).upper()} / "
                            f"{str(c.get('audit_verdict')).upper()}" if b.get("audit_verdict") else ""))
    t = Table(title="Paired figures: difference = candidate − baseline (95% CI)", title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col, j in (("figure", "left"), ("n", "right"), ("baseline", "right"), ("candidate", "right"),
                   ("difference [95% CI]", "right"), ("p", "right"), ("verdict", "left")):
        t.add_column(col, justify=j, no_wrap=True)
    group, small = None, []
    for f in d["figures"]:
        if f["verdict"] == "too small" and f["group"] in ("regions", "counterfactual"):
            small.append(f"{f['label']} (n={f['difference'].get('n')})")  # listed under the table, not as rows
            continue
        if f["group"] != group:
            group = f["group"]
            t.add_row(Text(_GROUP_TITLE.get(group, group), style="bold"))
        t.add_row(Text(f["label"]), str(f["difference"].get("n")), _value(f["baseline"]), _value(f["candidate"]),
                  Text(fmt_diff(f["difference"])), fmt_p(f.get("p")),
                  Text(f["verdict"], style=_STYLE.get(f["verdict"], "")))
    parts = [head, t]
    if small:
        parts.append(Text(f"Too small to compare (fewer than {d['method'].get('min_n', 10)} paired images): "
                          + ", ".join(small), style="yellow"))
    ch = d.get("changes") or {}
    if ch:
        def pct(k):
            e = ch.get(k) or {}
            if e.get("value") is None:
                return "n/a"
            return f"{100 * e['value']:.0f}% [{100 * e['lo']:.0f}%,{100 * e['hi']:.0f}%]"
        n_ch = (ch.get("prediction_changed") or {}).get("n")
        lines = [f"Per image (n={n_ch}): prediction changed {pct('prediction_changed')} · wrong → right "
                 f"{pct('fixed')}",
                 f"  right → wrong {pct('broken')}"]
        if "moved_off_target" in ch:
            lines.append(f"  maps off the target {pct('moved_off_target')} (back on {pct('moved_on_target')}; "
                         f"share < {ch['rule']['target_frac_below']:g})")
        if "moved_onto_artifact" in ch:
            lines.append(f"  maps onto an artifact {pct('moved_onto_artifact')} (off one {pct('moved_off_artifact')}; "
                         f"lift > {ch['rule']['artifact_lift_above']:g})")
        parts.append(Text("\n".join(lines)))
    gates = d.get("gates") or []
    if gates:
        g = Table(title="Non-inferiority gates (the CI bound must clear the margin)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
        for col, j in (("gate", "left"), ("margin", "right"), ("difference", "right"), ("bound", "right"),
                       ("", "left")):
            g.add_column(col, justify=j, no_wrap=True)
        for e in gates:
            g.add_row(Text(e["name"]), f"{e['margin']:g}", _num(e.get("difference"), 3, True), _num(e.get("bound"), 3, True),
                      Text(e["status"].upper() if e.get("decides", True) else "SMALL, skipped",
                           style=_STYLE.get(e["status"], "") if e.get("decides", True) else "dim"))
        parts.append(g)
    v = d.get("verdict", "none")
    decided = [e["name"] for e in gates if e.get("decides", True) and e["status"] == ("fail" if v == "fail" else "undefined")]
    why = f" (decided by {', '.join(decided[:4])}{' …' if len(decided) > 4 else ''})" if decided else ""
    parts.append(Text.assemble(("Verdict: ", "bold"), ((v.upper() if v != "none" else "no gates set"),
                                                       _STYLE.get(v, "")), why))
    for n in d.get("notes") or []:
        parts.append(Text(f"Note: {n}", style="yellow"))  # Text: names like lift[text] are not markup
    if out_dir:
        files = [f for f in ("compare.html", "compare.json", "pairs.csv", "gallery/") if (Path(out_dir) / f).exists()]
        parts.append(Text(f"Files: {out_dir}/ " + " · ".join(files), style="dim"))
    return Group(*parts)


# ----------------------------------------------------------------------------------------------------------------
# gallery

def _top3(row: dict, classes: list[str]) -> list[list]:
    ps = [(c, float(row.get(f"p_{c}", math.nan))) for c in classes]
    ps = [(c, p) for c, p in ps if math.isfinite(p)]
    return [[c, round(p, 4)] for c, p in sorted(ps, key=lambda cp: -cp[1])[:3]]


def _side(row: dict, inp) -> dict:
    pos = inp.positive
    p = float(row.get(f"p_{pos}", math.nan)) if pos else math.nan
    return {"pred": str(row.get("pred")), "confidence": round(float(row.get("confidence", math.nan)), 4),
            "p_positive": round(p, 4) if math.isfinite(p) else None, "top3": _top3(row, inp.classes),
            "correct": bool(row.get("correct"))}


def build_compare_gallery(c: Comparison, out: Path, n: int = 6) -> dict:
    """Write gallery/<group>/NN_<image_id>.png (baseline overlay | candidate overlay) for each of
    `GALLERY_GROUPS`, at most n per group (onto_artifact: images whose largest artifact share rose by ≥ MIN_MOVE);
    returns {group: [item]} with each item's image_id, truth, path
    (relative to out), both models' pred, confidence, P(positive), top-3 and, for onto_artifact, the region and
    the share it gained. Unreadable images are skipped and listed under "skipped"."""
    from PIL import Image

    from .report.overlay import overlay_image
    if c.inputs is None:
        raise ValueError("build_compare_gallery: the Comparison holds no audits (use audit.compare.compare_audits)")
    a, b = c.inputs
    pairs = c.per_image
    cands = {
        "candidate_wrong": pairs[pairs["correct_baseline"] & ~pairs["correct_candidate"]]
        .sort_values("confidence_candidate", ascending=False, kind="mergesort"),
        "candidate_right": pairs[~pairs["correct_baseline"] & pairs["correct_candidate"]]
        .sort_values("confidence_baseline", ascending=False, kind="mergesort"),
    }
    if "artifact_move" in pairs:
        cands["onto_artifact"] = pairs[pairs["artifact_move"] >= MIN_MOVE].sort_values(
            "artifact_move", ascending=False, kind="mergesort")
    rows_a = a.per_image.set_index(a.per_image["image_id"].astype(str))
    rows_b = b.per_image.set_index(b.per_image["image_id"].astype(str))
    root = out / "gallery"
    if root.is_dir():
        for old in root.glob("*/*.png"):
            old.unlink()
    res: dict = {}
    for g, df in cands.items():
        items, skipped = [], []
        for pr in df.to_dict("records"):
            if len(items) >= n:
                break
            iid = str(pr["image_id"])
            ra, rb = rows_a.loc[iid].to_dict(), rows_b.loc[iid].to_dict()
            ims = []
            for inp, row, who in ((a, ra, "baseline"), (b, rb, "candidate")):
                grid, masks, note = inp.load(row)
                if grid is None or iid not in inp.cam_index:
                    skipped.append([iid, note or "no CAM"])
                    break
                ims.append(overlay_image(grid, inp.cams[inp.cam_index[iid]], masks, inp.kinds,
                                         who))  # a minimal label: which side; the rest is in the report's text
            if len(ims) != 2:
                continue
            h = max(im.height for im in ims)
            both = Image.new("RGB", (ims[0].width + ims[1].width + 8, h), (255, 255, 255))
            both.paste(ims[0], (0, 0))
            both.paste(ims[1], (ims[0].width + 8, 0))
            folder = root / g
            folder.mkdir(parents=True, exist_ok=True)
            safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in iid)[:80]
            path = folder / f"{len(items) + 1:02d}_{safe}.png"
            both.save(path, compress_level=6)
            item = {"rank": len(items) + 1, "image_id": iid, "truth": str(pr["label"]),
                    "path": str(path.relative_to(out)), "baseline": _side(ra, a), "candidate": _side(rb, b)}
            if g == "onto_artifact":
                item["region"], item["share_gained"] = str(pr["artifact_moved_to"]), round(float(pr["artifact_move"]), 4)
            items.append(item)
        res[g] = {"n_candidates": int(len(df)), "items": items, "skipped": skipped}
    return res


# ----------------------------------------------------------------------------------------------------------------
# html

def render_compare_html(d: dict, out: Path) -> str:
    """compare.html as a string: self-contained (images as data URIs, inline CSS, no script); all text escaped."""
    from .report.html import CSS, data_uri, esc
    b, c, data = d["baseline"], d["candidate"], d["data"]
    cls = {"pass": "pass", "fail": "fail", "inconclusive": "undef", "none": "undef", "better": "pass",
           "worse": "fail", "too small": "undef", "undefined": "undef"}
    h = [f"<h1>Compare: {esc(b['name'])} (baseline) vs {esc(c['name'])} (candidate)</h1>",
         f"<p class=\"meta\">{esc(data['n'])} paired images · split {esc(data.get('split'))} · positive class "
         f"{esc(data.get('positive'))} · baseline {esc(b.get('model'))} ({esc(b['audit_dir'])}) · candidate "
         f"{esc(c.get('model'))} ({esc(c['audit_dir'])}) · their own audits' verdicts: "
         f"{esc(b.get('audit_verdict'))} / {esc(c.get('audit_verdict'))}</p>"]
    v = d.get("verdict", "none")
    h.append(f"<div class=\"verdict {cls.get(v, 'undef')}\">Verdict: {esc(v.upper() if v != 'none' else 'no gates set')}"
             "</div>")
    if d.get("gates"):
        rows = "".join(f"<tr><td class=\"l\">{esc(g['name'])}</td><td>{esc(g['margin'])}</td>"
                       f"<td>{esc(_num(g.get('difference'), 3, True))}</td><td>{esc(_num(g.get('bound'), 3, True))}</td>"
                       f"<td class=\"{cls.get(g['status'], 'undef')}\">{esc(g['status'])}</td>"
                       f"<td class=\"l\">{esc(g.get('note', ''))}</td></tr>" for g in d["gates"])
        h.append("<h2>Non-inferiority gates</h2><p class=\"meta\">A gate passes only when the 95% CI bound of the "
                 "difference on the bad side clears the margin.</p><table><tr><th class=\"l\">gate</th><th>margin</th>"
                 "<th>difference</th><th>bound</th><th>status</th><th class=\"l\">note</th></tr>" + rows + "</table>")
    h.append("<h2>Paired figures</h2><p class=\"meta\">difference = candidate − baseline, paired 95% CI; "
             f"{esc(d['method'].get('verdict_rule', ''))}</p>")
    rows = []
    group = None
    for f in d["figures"]:
        if f["group"] != group:
            group = f["group"]
            rows.append(f"<tr><th class=\"l\" colspan=\"8\">{esc(_GROUP_TITLE.get(group, group))}</th></tr>")
        rows.append(f"<tr><td class=\"l\">{esc(f['label'])}</td><td>{esc(f['difference'].get('n'))}</td>"
                    f"<td>{esc(_value(f['baseline']))}</td><td>{esc(_value(f['candidate']))}</td>"
                    f"<td>{esc(fmt_diff(f['difference']))}</td><td>{esc(fmt_p(f.get('p')))}</td>"
                    f"<td class=\"l\">{esc(f['test'])}</td>"
                    f"<td class=\"{cls.get(f['verdict'], '')}\">{esc(f['verdict'])}</td></tr>")
    h.append("<table><tr><th class=\"l\">figure</th><th>n</th><th>baseline</th><th>candidate</th>"
             "<th>difference [95% CI]</th><th>p</th><th class=\"l\">test</th><th>verdict</th></tr>"
             + "".join(rows) + "</table>")
    ch = d.get("changes") or {}
    if ch:
        names = {"prediction_changed": "prediction changed", "fixed": "wrong → right", "broken": "right → wrong",
                 "moved_off_target": "maps moved off the target", "moved_on_target": "maps moved back on the target",
                 "moved_onto_artifact": "maps moved onto an artifact", "moved_off_artifact": "maps moved off an artifact"}
        rows = "".join(f"<tr><td class=\"l\">{esc(lab)}</td><td>{esc(_pct(ch[k]))}</td><td>{esc(ch[k].get('n'))}</td></tr>"
                       for k, lab in names.items() if k in ch)
        h.append("<h2>Per-image changes</h2><table><tr><th class=\"l\">share of images</th><th>rate [95% CI]</th>"
                 "<th>n</th></tr>" + rows + "</table>")
    gal = d.get("gallery") or {}
    if gal:
        h.append("<h2>Disagreement gallery</h2><p class=\"meta\">Each picture: the baseline's Grad-CAM overlay "
                 "(left) and the candidate's (right).</p>")
        for g, title in GALLERY_GROUPS.items():
            e = gal.get(g)
            if not e:
                continue
            h.append(f"<h3>{esc(title)} · {esc(e['n_candidates'])} images</h3>")
            if not e["items"]:
                h.append("<p class=\"meta\">none</p>")
                continue
            figs = []
            for it in e["items"]:
                def side(s, who):
                    top = ", ".join(f"{c_} {p:.2f}" for c_, p in s["top3"])
                    pp = "n/a" if s.get("p_positive") is None else f"{s['p_positive']:.2f}"
                    return (f"<b>{who}</b>: {esc(s['pred'])} ({s['confidence']:.2f}) · "
                            f"P({esc(data.get('positive'))})={esc(pp)} · top-3 {esc(top)}")
                move = (f"<br>+{100 * it['share_gained']:.0f}% of the evidence on {esc(it['region'])}"
                        if "share_gained" in it else "")
                figs.append(f"<figure style=\"width:600px\"><img src=\"{data_uri(out / it['path'])}\" "
                            f"alt=\"{esc(it['image_id'])}\"><figcaption>{esc(it['image_id'])} · truth "
                            f"<b>{esc(it['truth'])}</b><br>{side(it['baseline'], 'baseline')}<br>"
                            f"{side(it['candidate'], 'candidate')}{move}</figcaption></figure>")
            h.append("<div class=\"grid\">" + "".join(figs) + "</div>")
    if d.get("notes"):
        h.append("<h2>Notes</h2><ul class=\"note\">" + "".join(f"<li>{esc(n)}</li>" for n in d["notes"]) + "</ul>")
    title = f"Compare: {b['name']} vs {c['name']}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(h) + "\n</body></html>\n")


def _pct(e: dict) -> str:
    if e.get("value") is None:
        return "n/a"
    return f"{100 * e['value']:.0f}% [{100 * e['lo']:.0f}%, {100 * e['hi']:.0f}%]"


def write_compare(c: Comparison, out: str | Path, gallery_n: int = 6, report: bool = True) -> dict[str, Path]:
    """Write out/compare.json, out/pairs.csv (one row per image: both predictions, the share moved per region)
    and, with report, the gallery and out/compare.html. Returns {name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pairs": out / "pairs.csv", "json": out / "compare.json"}
    c.per_image.to_csv(paths["pairs"], index=False)
    if report and c.inputs is not None:
        c.gallery = build_compare_gallery(c, out, n=gallery_n)
    d = c.to_dict()
    paths["json"].write_text(json.dumps(d, indent=2, allow_nan=False))
    if report:
        paths["html"] = out / "compare.html"
        paths["html"].write_text(render_compare_html(d, out), encoding="utf-8")
    return paths
