"""`report.html`: one self-contained page (PNG images as base64 data URIs, inline CSS, no JS, no external resources).

Every piece of text from the run (names, paths, notes) goes through `html.escape`.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import math
from datetime import datetime, timezone
from pathlib import Path

from ..stats import fmt_estimate, is_finite, small_text
from ..summary import lift_alarm, target_floor
from ..summary_types import RegionSummary
from ..thresholds import fmt_threshold
from .gallery import CONCENTRATION_LEGEND, GalleryGroup, concentration_text, words_for
from .inputs import ReportInputs

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;
 padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{margin-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.92em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.pass{background:#d8f3dc;color:#1b4332;font-weight:bold}
.fail{background:#ffd6d6;color:#9d0208;font-weight:bold}
.undef{background:#fff3bf;color:#7a5c00}
.verdict{display:inline-block;padding:6px 14px;border-radius:4px;font-size:1.2em;margin:6px 0}
.meta{color:#555;font-size:0.92em} .note{color:#7a5c00;font-size:0.9em}
.alarm{border-left:4px solid #9d0208;background:#fff0f0;padding:4px 12px;margin:8px 0}
.plots img{max-width:100%;border:1px solid #eee;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:290px;border:1px solid #ddd;padding:4px;background:#fafafa}
figure img{display:block;max-width:100%;margin:0 auto}
figcaption{font-size:0.8em;margin-top:4px}
code{background:#f3f3f3;padding:0 3px}
""".strip()


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _num(v, digits: int = 2, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{100 * f:.0f}%" if pct else f"{f:.{digits}f}"


def fmt_est(e, pct: bool = False, digits: int = 2) -> str:
    """An estimate (`Estimate` or its dict) in HTML: `audit.stats.fmt_estimate` with ", " between the bounds
    ("0.61 [0.58, 0.64]")."""
    return fmt_estimate(e, pct=pct, digits=digits, sep=", ")

def est_or_na(e, pct: bool = False, digits: int = 2) -> str:
    """`fmt_est`, but a missing estimate reads "n/a" (not "—")."""
    return "n/a" if e is None else fmt_est(e, pct=pct, digits=digits)


def _label(v) -> str:
    """A name cell: "n/a" for None/NaN."""
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else str(v)


def _count(v) -> str:
    """A count cell: "n/a" for None/NaN, else the integer."""
    return str(int(float(v))) if is_finite(v) else "n/a"


def _table(head: list[str], rows: list[list[tuple[str, str]]], left: int = 1) -> str:
    """rows: [[(cell_html_already_escaped, css_class), ...], ...]; the first `left` columns are left-aligned."""
    h = "".join(f'<th class="l">{esc(c)}</th>' if i < left else f"<th>{esc(c)}</th>" for i, c in enumerate(head))
    body = []
    for r in rows:
        cells = []
        for i, (txt, cls) in enumerate(r):
            classes = " ".join(x for x in (cls, "l" if i < left else "") if x)
            cells.append(f'<td class="{classes}">{txt}</td>' if classes else f"<td>{txt}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _method_text(m) -> str:
    """A method description for the page: a {part: text} mapping (discover's) as "<b>part</b>: text" lines,
    anything else as escaped text."""
    if isinstance(m, dict):
        return "<br>".join(f"<b>{esc(k)}</b>: {esc(v)}" for k, v in m.items())
    return esc("" if m is None else m)


def _p_text(p) -> str:
    """A p-value: 3 decimals, "< 0.001" below that (never "0.000")."""
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def _c(x, cls: str = "") -> tuple[str, str]:
    return esc(x), cls


def _header(inp: ReportInputs) -> str:
    s = inp.summary
    run, data, cam = s.run, s.data, s.cam
    res = "×".join(str(x) for x in (cam.resolution or inp.cams.shape[1:]))
    parts = [f"<h1>Spurious-correlation audit: {esc(inp.run_name)}</h1>",
             '<p class="meta">',
             f"model <code>{esc(run.model)}</code> · checkpoint {esc(run.checkpoint)}"
             + (f" (sha256 {esc(str(run.checkpoint_sha256)[:12])}…)" if run.checkpoint_sha256 else ""),
             f"<br>data {esc(data.manifest)} · split {esc(data.split)} · n = {esc(data.n)}"
             + (f" · skipped {esc(data.n_skipped)}" if data.n_skipped else "")
             + (f" · all-zero CAMs {esc(data.n_zero_cam)}" if data.n_zero_cam else ""),
             f"<br>{esc(cam.method)} at <code>{esc(inp.layer)}</code> ({esc(res)}), explaining the "
             f"{esc(cam.target)} class · classes {esc(', '.join(inp.classes))}"
             + (f" · positive class <b>{esc(inp.positive)}</b>" if inp.positive else ""),
             f"<br>rendered {esc(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))} from "
             f"{esc(inp.out_dir)}</p>"]
    if data.split_note:
        parts.append(f'<p class="note">Split: {esc(data.split_note)}</p>')
    if data.grid_note:
        parts.append(f'<p class="meta">Grid: {esc(data.grid_note)}</p>')
    if data.bit_depth_note:
        parts.append(f'<p class="note">Bit depth: {esc(data.bit_depth_note)}</p>')
    if cam.note:
        parts.append(f'<p class="note">Layer: {esc(cam.note)}</p>')
    v = s.verdict
    if str(v).lower() == "none":
        parts.append('<div class="verdict undef">No sign-off gates configured</div>')
    else:
        cls = {"pass": "pass", "fail": "fail"}.get(str(v).lower(), "undef")
        parts.append(f'<div class="verdict {cls}">Verdict: {esc(str(v).upper())}</div>')
        head = s.verdict_headline
        if head:
            parts.append(f'<p class="verdict-why">{esc(head[0].upper() + head[1:])}.</p>')
    parts.append(_hidden(inp))
    return "\n".join(p for p in parts if p)


def _accuracy(inp: ReportInputs) -> str:
    s = inp.summary
    out = [f"<h2>Accuracy</h2><p>Top-1 accuracy {esc(fmt_est(s.accuracy, pct=True))} (Wilson 95% CI)"]
    cal = s.calibration
    ece, floor = cal.ece, cal.ece_if_calibrated
    floor_s = (f"; a perfectly calibrated model with these confidences would read {floor:.3f} on average"
               if math.isfinite(floor) and not ece.too_small else "")
    out.append(f" · expected calibration error {esc(fmt_est(ece, digits=3))} "
               f"(n = {esc(ece.n)}, {esc(cal.n_bins)} equal-width bins{floor_s})")
    hce = s.high_conf_errors
    out.append(f" · high-confidence errors (≥ {esc(hce.threshold)}): {esc(fmt_est(hce.rate, pct=True))}")
    if s.off_target is not None:
        ot = s.off_target
        out.append(f" · off-target evidence: {esc(fmt_est(ot.rate, pct=True))} of {esc(ot.rate.n)} ({esc(ot.rule)}"
                   + (f"; undefined for {esc(ot.n_undefined)} without a defined score" if ot.n_undefined else "")
                   + ")")
    out.append("</p>")
    pc = s.per_class
    if pc:
        rows = [[_c(c), _c(e.n), _c(fmt_est(e.recall, pct=True))] for c, e in pc.items()]
        out.append(_table(["class", "n", "recall [95% CI]"], rows))
    return "".join(out)


def _regions(inp: ReportInputs) -> str:
    regs = inp.summary.regions
    if not regs:
        return "<h2>Where the evidence lies</h2><p class=\"note\">No regions configured.</p>"
    rows = []
    alarm, floor = lift_alarm(inp.summary), target_floor(inp.summary)
    for r, e in regs.items():
        st = e.stats  # {statistic: Estimate}; a statistic not computed reads "—"
        med = st["median_all"].value if "median_all" in st else math.nan
        cls = ""
        if e.kind == "artifact" and e.median_lift > alarm:  # NaN (null) compares False
            cls = "fail"
        elif e.kind == "target" and is_finite(med):
            cls = "pass" if med >= floor else "undef"
        rows.append([_c(r), _c(e.kind), _c(f"{e.n_present} / {e.n_missing}"),
                     _c(fmt_est(st.get("median_all")), cls), _c(_lift_text(e)),
                     _c(_num(e.median_area)), _c(fmt_est(st.get("diff_median"))),
                     _c(fmt_est(st.get("spearman_conf_all"))), _c(fmt_est(st.get("auroc_error"))),
                     _c(fmt_est(e.pointing_game, pct=True))])
    return ("<h2>Where the evidence lies</h2><p>Share of Grad-CAM mass in each region (median over images, "
            "bootstrap 95% CI). Lift = share of evidence ÷ share of area (1 = no preference).</p>"
            + _table(["region", "kind", "n present / missing", "median frac", "median lift [95% CI]", "median area",
                      "correct − wrong", "ρ(conf)", "AUROC err", "pointing game"], rows, left=2)
            + _missing_note(regs))


def _lift_text(e: RegionSummary) -> str:
    """"0.83× [0.82, 0.84]": the median lift with its bootstrap CI (the figure max_artifact_lift gates); two
    decimals below 10 (one decimal read 0.8× [0.8, 0.8] for a CI of 0.825–0.843), one above."""
    lift, est = e.median_lift, e.lift
    if est.too_small:  # as the terminal: a small group is called small, not given a number
        return small_text(est)
    if math.isnan(lift):  # null in summary.json
        return "—"
    lo, hi = est.lo, est.hi
    ok = math.isfinite(lo) and math.isfinite(hi)
    d = 2 if abs(lift) < 10 else 1
    return f"{lift:.{d}f}×" + (f" [{lo:.{d}f}, {hi:.{d}f}]" if ok else "")


def _missing_note(regs: dict[str, RegionSummary]) -> str:
    """Why regions are missing on some images (summary `missing_reasons`): their fractions are left out."""
    items = [f"<b>{esc(r)}</b>: " + ", ".join(f"{esc(why)} ({esc(k)})" for why, k in e.missing_reasons.items())
             for r, e in regs.items() if e.missing_reasons]
    if not items:
        return ""
    return ("<p class=\"note\">Undefined on some images (left out of the statistics, not counted as 0): "
            + "; ".join(items) + ".</p>")


def _gates(inp: ReportInputs) -> str:
    gates = inp.summary.gates
    if not gates:
        return ""
    rows = []
    for g in gates:
        vs = _num(g.value, 3)  # NaN (null: not measured) → "n/a"
        if g.ci is not None and len(g.ci) == 2 and all(is_finite(x) for x in g.ci):
            vs += f" [{_num(g.ci[0], 3)}, {_num(g.ci[1], 3)}]"
        res = {True: ("pass", "pass"), False: ("FAIL", "fail")}.get(g.passed, ("undefined", "undef"))
        rows.append([_c(g.name), _c(vs), _c(g.threshold), _c(res[0], res[1]),
                     _c("" if g.n is None else g.n), _c(g.note or "", "l")])
    return "<h2>Sign-off gates</h2>" + _table(["gate", "value [95% CI]", "threshold", "result", "n", "note"], rows)


def _counts(p) -> str:
    """"tp / fn / tn / fp" of an operating point ("None" where a count is null)."""
    return " / ".join(str(getattr(p, k)) for k in ("tp", "fn", "tn", "fp"))


def _operating_points(inp: ReportInputs) -> str:
    op = inp.summary.operating_points
    if op is None:
        return ""
    rows = []
    for p in op.points:
        rows.append([_c(_num(p.target_sensitivity)), _c(fmt_threshold(p.threshold, p.threshold_logodds)),
                     _c(fmt_est(p.sensitivity, pct=True)), _c(fmt_est(p.specificity, pct=True)),
                     _c(fmt_est(p.ppv, pct=True)), _c(fmt_est(p.npv, pct=True)), _c(_counts(p))])
    top1 = op.top1
    if top1 is not None:
        rows.append([_c("top-1"), _c("argmax"), _c(fmt_est(top1.sensitivity, pct=True)),
                     _c(fmt_est(top1.specificity, pct=True)), _c(fmt_est(top1.ppv, pct=True)),
                     _c(fmt_est(top1.npv, pct=True)), _c(_counts(top1))])
    if not rows:
        return ""
    split = f" '{op.validation_split}'" if op.validation_split else ""
    head = (f"<h2>Operating points for {esc(inp.positive or 'the positive class')}</h2><p>Thresholds tuned by "
            f"{esc(op.tuning)}{esc(split)}; n = {esc(op.n)} ({esc(op.n_pos)} "
            "positive). Predicted positive when P ≥ threshold.</p>")
    if op.warning:
        head += f'<p class="note">{esc(op.warning)}</p>'
    rule = ""
    if op.rule and any(is_finite(p.threshold) for p in op.points):
        rule = f'<p class="meta">Thresholds: {esc(op.rule)}.</p>'
    return head + _table(["target sensitivity", "threshold", "sensitivity", "specificity", "PPV", "NPV",
                          "TP / FN / TN / FP"], rows, left=0) + rule


def _counterfactual(inp: ReportInputs) -> str:
    cf = inp.summary.counterfactual
    if cf is None:
        return ""
    rows = [[_c(r), _c(e.n), _c(fmt_est(e.flip_rate, pct=True)), _c(fmt_est(e.mean_delta, digits=3))]
            for r, e in cf.regions.items()]
    att = [a for a in cf.attribution if a.decision != "own effect"]
    att_html = ("<p><b>Whose flips:</b> one artifact region lies inside another (filling the outer one removes the "
                "inner one too)</p><ul>" + "".join(f"<li>{esc(a.text)}.</li>" for a in att) + "</ul>"
                if att else "")
    return (f"<h2>Counterfactual check</h2><p>{esc(cf.method)}</p>"
            + _table(["region", "n tested", "flip rate [95% CI]", "mean ΔP [95% CI]"], rows) + att_html + _hidden(inp))


def _hidden(inp: ReportInputs) -> str:
    """The counterfactual check's "shortcut the maps do not show" findings (summary counterfactual.hidden)."""
    cf = inp.summary.counterfactual
    items = "".join(f"<li><b>{esc(h.region)}</b>: {esc(h.text)}.</li>" for h in (cf.hidden if cf else []))
    return f'<div class="alarm"><b>Shortcut the maps do not show</b><ul>{items}</ul></div>' if items else ""


ISIC_OVERALL = (("balanced_accuracy", "balanced accuracy"), ("accuracy", "accuracy"),
                ("auc_mean", "mean AUC"), ("pauc_mean", "mean pAUC"), ("auc_above_mean", "mean AUC, Sens > {tpr}"))


def _isic_metrics(inp: ReportInputs) -> str:
    m = inp.summary.isic_metrics  # free-form (audit/thresholds.py): read as the dict it is
    if not isinstance(m, dict) or not m:
        return ""
    tpr = m.get("min_tpr")
    tpr_s = _num(tpr, pct=True) if is_finite(tpr) else "min_tpr"
    rows = []
    for key, label in ISIC_OVERALL:
        if key not in m:
            continue
        e = m[key]
        label = label.format(tpr=tpr_s)
        n = e.get("n", m.get("n")) if isinstance(e, dict) else m.get("n")
        note = e.get("note") if isinstance(e, dict) else ""
        rows.append([_c(f"{label} ({key})"), _c(est_or_na(e, digits=3)), _c(_count(n)), _c(note or "", "l")])
    classes = [c for c in (m.get("classes") or []) if isinstance(c, str)]
    for k in ("auc", "pauc", "auc_above"):   # classes named only in the per-class dicts
        for c in (m.get(k) or {}) if isinstance(m.get(k), dict) else ():
            if c not in classes:
                classes.append(c)
    npc = m.get("n_per_class") if isinstance(m.get("n_per_class"), dict) else {}
    crow = []
    for c in classes:
        cells = [_c(c), _c(_count(npc.get(c)))]
        # a per-class metric is small because of its positives or negatives, not the total n: name both
        small = (f"small n_pos={_count(npc.get(c))}, n_neg={_count(float(m['n']) - float(npc[c]))}"
                 if is_finite(npc.get(c)) and is_finite(m.get("n")) else None)
        for k in ("auc", "pauc", "auc_above"):
            d = m.get(k) if isinstance(m.get(k), dict) else {}
            e = d.get(c)
            cells.append(_c(small if small and isinstance(e, dict) and e.get("too_small")
                            else est_or_na(e, digits=3)))
        crow.append(cells)
    if not rows and not crow:
        return ""
    out = ["<h2>ISIC challenge metrics</h2><p>Prediction = argmax; percentile bootstrap 95% CIs (images resampled "
           f"jointly), n = {esc(_count(m.get('n')))}. <code>pauc</code>: ROC area in the band TPR ≥ {esc(tpr_s)} "
           f"(ISIC 2024 pAUC, range 0 to {esc(_num(1 - float(tpr), 2) if is_finite(tpr) else '1 − min_tpr')}); "
           f"<code>auc_above</code>: “AUC, Sens &gt; {esc(tpr_s)}” of ISIC 2018–2020 (range 0 to 1). "
           "Classes with too few positives or negatives are called small.</p>"]
    if rows:
        out.append(_table(["metric", "value [95% CI]", "n", "note"], rows))
    if crow:
        out.append(_table(["class", "n positive", "AUC (auc)", f"pAUC, TPR ≥ {tpr_s} (pauc)",
                           f"AUC, Sens > {tpr_s} (auc_above)"], crow))
    return "".join(out)


def _by_artifact(inp: ReportInputs) -> str:
    ba = inp.summary.by_artifact  # free-form (audit.association.model_by_artifact): read as the dict it is
    if not isinstance(ba, dict) or not ba:
        return ""
    subsets = [(a, name, e.get(name)) for a, e in ba.items() if isinstance(e, dict) for name in ("with", "without")]
    subsets = [(a, name, d if isinstance(d, dict) else {}) for a, name, d in subsets]
    if not subsets:
        return ""
    sens = any("sensitivity" in d or "specificity" in d for _, _, d in subsets)
    rows = []
    for a, name, d in subsets:
        r = [_c(a), _c(name), _c(_count(d.get("n"))), _c(est_or_na(d.get("accuracy"), pct=True))]
        if sens:
            r += [_c(est_or_na(d.get("sensitivity"), pct=True)), _c(est_or_na(d.get("specificity"), pct=True))]
        rows.append(r)
    head = ["artifact / flag", "subset", "n", "accuracy"]
    what = "Top-1 accuracy"
    if sens:
        head += ["sensitivity", "specificity"]
        what += f" and top-1 sensitivity / specificity for {esc(inp.positive or 'the positive class')}"
    unknown = [f"{esc(a)} ({esc(e['n_unknown'])})" for a, e in ba.items() if isinstance(e, dict) and e.get("n_unknown")]
    note = (f'<p class="note">Presence unknown (detector failed; in neither subset): {", ".join(unknown)}.</p>'
            if unknown else "")
    return (f"<h2>With vs without each artifact</h2><p>{what} on the images with vs without each detected artifact "
            "or 0/1 metadata flag (Wilson 95% CI).</p>" + _table(head, rows, left=2) + note)


def _accuracy_by_group(inp: ReportInputs) -> str:
    abg = inp.summary.accuracy_by_group
    if not abg:
        return ""
    rows = []
    for col, groups in abg.items():
        for g, e in groups.items():
            acc = dataclasses.replace(e.accuracy, too_small=bool(e.too_small), n=e.n)
            rows.append([_c(_label(col)), _c(_label(g)), _c(_count(e.n)), _c(est_or_na(acc, pct=True))])
    if not rows:
        return ""
    return ("<h2>Accuracy by group</h2><p>Top-1 accuracy within each group of the <code>--by</code> columns (Wilson "
            "95% CI); groups below the minimum size are called small, not given a number.</p>"
            + _table(["by", "group", "n", "accuracy"], rows, left=2))


BY_GROUP_STATS = {"median_all": "median frac", "diff_median": "correct − wrong", "spearman_conf_all": "ρ(conf)",
                  "auroc_error": "AUROC err"}


def _by_group(inp: ReportInputs) -> str:
    bg = inp.summary.by_group
    if bg is None:
        return ""
    recs = [r for r in bg.rows if isinstance(r, dict)]  # tidy rows, free-form: read as dicts
    if not recs:
        return ""
    rows = []
    for r in recs:
        region = _label(r.get("region"))
        region = region[len("frac_"):] if region.startswith("frac_") else region
        stat = str(r.get("stat", "?"))
        value = fmt_est({k: r.get(k) for k in ("value", "lo", "hi", "n", "too_small", "note")})
        p = r.get("p")
        rows.append([_c(region), _c(_label(r.get("group_col"))), _c(_label(r.get("group"))),
                     _c(f"{BY_GROUP_STATS[stat]} ({stat})" if stat in BY_GROUP_STATS else stat),
                     _c(value), _c(_count(r.get("n"))), _c(_p_text(p) if is_finite(p) else "")])
    by = ", ".join(str(c) for c in bg.columns)
    return ("<h2>Evidence by group</h2><p>Region statistics within each group"
            + (f" of {esc(by)}" if by else "")
            + " (bootstrap 95% CI). Groups below the minimum size are called small, not given a number; a group "
              "in which a region never occurs (n = 0) is left out.</p>"
            + _table(["region", "by", "group", "statistic", "value [95% CI]", "n", "p"], rows, left=4))


def _discover(inp: ReportInputs) -> str:
    d = inp.summary.discover  # free-form (audit/discover.py): read as the dict it is
    if not isinstance(d, dict) or not d.get("ranking"):
        return ""
    items = "".join(f"<li>{esc(r.get('text', ''))}</li>" for r in d["ranking"][:8])
    groups = {(g["kind"], g["id"]): g for k in ("clusters", "slices") for g in (d.get(k) or {}).get("groups", [])}
    figs = []
    for r in d["ranking"][:3]:  # the mean unit-mass map of the most suspicious groups (their prototypes: gallery)
        png = ((groups.get((r["kind"], r["id"])) or {}).get("map") or {}).get("png")
        if png and (inp.out_dir / png).is_file():
            figs.append(f'<figure><img src="{data_uri(inp.out_dir / png)}" alt="mean map {esc(r["kind"])} '
                        f'{esc(r["id"])}"><figcaption>mean map of {esc(r["kind"])} {esc(r["id"])} (n={r["n"]}, '
                        f'suspicion {r["suspicion"]:.2f})</figcaption></figure>')
    grid = f'<div class="grid">{"".join(figs)}</div>' if figs else ""
    return ("<h2>Discovered groups (no masks needed)</h2>"
            f"<p class=\"meta\">{_method_text(d.get('method'))}</p><ol>{items}</ol>{grid}"
            "<p class=\"meta\">Prototypes (the images nearest each group's centre) are in the gallery below.</p>")


def _sanity(inp: ReportInputs) -> str:
    s = inp.summary.sanity  # free-form (audit/sanity.py): read as the dict it is
    if not isinstance(s, dict):
        return ""
    rows = []
    for st in s.get("steps", []):
        rows.append([_c(st.get("mode")), _c(st.get("step")), _c(st.get("unit")),
                     _c(fmt_est(st.get("spearman"))), _c(fmt_est(st.get("ssim")))])
    return (f"<h2>Sanity check of the maps</h2><p>{esc(s.get('verdict_text', ''))}</p>"
            + _table(["mode", "step", "randomised up to", "Spearman ρ [95% CI]", "SSIM [95% CI]"], rows))


PLOT_TITLES = {"region_fractions": "Evidence per region by outcome",
               "fraction_vs_confidence": "Evidence fraction vs confidence",
               "reliability": "Calibration", "roc": "ROC of the positive class",
               "counterfactual": "Counterfactual flip rates"}


def _plots(plots: dict[str, Path]) -> str:
    if not plots:
        return ""
    out = ['<h2>Plots</h2><div class="plots">']
    for name, p in plots.items():
        out.append(f"<h3>{esc(PLOT_TITLES.get(name, name))}</h3>"
                   f'<img src="{data_uri(p)}" alt="{esc(name)} plot">')
    out.append("</div>")
    return "".join(out)


def _gallery(inp: ReportInputs, groups: list[GalleryGroup], blocky: bool) -> str:
    if not groups:
        return ""
    words = words_for(inp)
    out = ["<h2>Gallery</h2>",
           "<p>Grad-CAM overlays ("
           + ("raw layer grid, nearest neighbour" if blocky else "bilinear upsampling")
           + ", min-max per image for display only; red = most evidence). Outlines: "
           '<span style="color:#00a000;font-weight:bold">green = target</span>, '
           '<span style="color:#d000d0;font-weight:bold">magenta = artifact</span>.</p>',
           f'<p class="meta">{esc(words.legend())}</p>', f'<p class="meta">{esc(CONCENTRATION_LEGEND)}</p>']
    for g in groups:
        out.append(f"<h3>{esc(g.spec.title)}</h3><p class=\"meta\">{esc(g.spec.description)}; showing "
                   f"{len(g.items)} of {g.n_candidates}.</p>")
        if g.note:
            out.append(f'<p class="note">{esc(g.note)}</p>')
        if g.items:
            out.append('<div class="grid">')
            for it in g.items:
                top3 = ", ".join(f"{c} {p:.2f}" for c, p in it.top3)
                out.append(f'<figure><img src="{data_uri(it.path)}" alt="{esc(it.image_id)}">'
                           f"<figcaption><b>#{it.rank} {esc(it.image_id)}</b><br>{esc(it.caption)}<br>"
                           f"top-3: {esc(top3)}<br>{esc(concentration_text(it.peak_share, it.entropy, it.n_cells))}"
                           f"<br><i>{esc(it.reading)}</i>"
                           + (f'<br><span class="note">{esc(it.note)}</span>' if it.note else "")
                           + "</figcaption></figure>")
            out.append("</div>")
        if g.skipped:
            out.append('<ul class="note">' + "".join(f"<li>skipped {esc(i)}: {esc(w)}</li>" for i, w in g.skipped)
                       + "</ul>")
    return "".join(out)


def render_html(inp: ReportInputs, plots: dict[str, Path], groups: list[GalleryGroup], notes: list[str],
                blocky: bool = False) -> str:
    """The full page as a string."""
    body = [_header(inp), _accuracy(inp), _gates(inp), _regions(inp), _operating_points(inp),
            _isic_metrics(inp), _by_artifact(inp), _accuracy_by_group(inp), _by_group(inp), _counterfactual(inp),
            _sanity(inp), _discover(inp), _plots(plots), _gallery(inp, groups, blocky)]
    if notes:
        body.append("<h2>Notes</h2><ul class=\"note\">" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    title = f"Audit report: {inp.run_name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")
