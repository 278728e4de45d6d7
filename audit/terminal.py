"""Rich terminal rendering of an audit summary (`audit.summary_types.AuditSummary`; never recomputes anything)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .stats import Estimate, fmt_estimate
from .summary import ABSENT_REASONS, lift_alarm, target_floor
from .summary_types import AuditSummary, Calibration, OperatingPoints
from .thresholds import fmt_threshold

# what an audit may write, in the order the summary lists what is there (--no-report writes no report files)
OUTPUT_FILES = ("report.html", "GALLERY.md", "gallery/", "plots/", "per_image.csv", "cams.npz", "summary.json",
                "config.resolved.yaml", "errors.csv")


def out_console(file=None, quiet: bool = False, width: int = 100) -> Console:
    """The console the summary is printed on (`file`: default stdout). On a terminal: its own width, colour. On
    anything else (a file, a pipe, CI logs): tables sized for `width` columns, colourless, and soft wrap, so that
    a text line is never broken inside a phrase (a viewer wraps it instead)."""
    stream = sys.stdout if file is None else file
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return Console(file=file, quiet=quiet, width=None if tty else width, soft_wrap=not tty)


def discover_renderable(d: dict, out_dir: str | None = None, n: int = 3):
    """The most suspicious discovered groups in words, with their prototypes (the images nearest each centre) and
    where their overlays are (gallery/discover_<kind>_<id>/ once the reports are rendered)."""
    rows = d.get("ranking") or []
    if not rows:
        return Text("Discovery: " + str(d.get("skipped") or "no group large enough to rank"), style="dim")
    lines = [Text("Discovered groups (no masks needed; most suspicious first)", style="bold")]
    for r in rows[:n]:
        style = "bold red" if r.get("flag") else ""
        lines.append(Text(f"• {r.get('text', '')}", style=style))
        protos = ", ".join(str(p) for p in (r.get("prototypes") or [])[:5])
        where = ""
        if out_dir:  # only what is there: `discover --no-report` renders no gallery
            gal, mean = (Path(out_dir) / "gallery" / f"discover_{r['kind']}_{r['id']}",
                         Path(out_dir) / "discover" / f"{r['kind']}_{r['id']}.png")
            where = (f" · overlays: {gal}/" if gal.is_dir() else f" · mean map: {mean}" if mean.is_file() else "")
        lines.append(Text(f"  prototypes: {protos}{where}", style="dim"))
    if len(rows) > n:
        k = len(rows) - n
        lines.append(Text(f"  … {k} more ranked group{'s' if k != 1 else ''} in discover/groups.csv", style="dim"))
    return Group(*lines)


def _ece_text(cal: Calibration) -> str:
    """" · ECE 0.08 [0.06,0.11] (a calibrated model reads ~0.04 at this n)": the estimate beside the floor that a
    perfectly calibrated model with these confidences reads on average from sampling noise alone."""
    floor = cal.ece_if_calibrated
    ok = not cal.ece.too_small and math.isfinite(floor)
    return f" · ECE {fmt_estimate(cal.ece)}" + (f" (a calibrated model reads ~{floor:.2f} at this n)" if ok else "")


def summary_renderable(s: AuditSummary, out_dir: str | None = None):
    d, cam = s.data, s.cam
    head = Text.assemble(
        ("Audit ", "bold"), (str(s.run.name), "bold cyan"), f" · {s.run.model} · data {d.manifest}",
        f" · split {d.split} · n={d.n}", (f" · skipped {d.n_skipped} (unreadable: see errors.csv)" if d.n_skipped else ""),
        f"\nGrad-CAM at {cam.layer} ({'×'.join(map(str, cam.resolution))}), explaining "
        f"{cam.target} class · accuracy {fmt_estimate(s.accuracy, pct=True)}" + _ece_text(s.calibration))
    parts = [head]
    if d.split_note:  # no split chose the rows: training images may be among them
        parts.append(Text(f"Split: {d.split_note}", style="bold yellow"))
    if d.grid_note:
        parts.append(Text(f"Grid: {d.grid_note}", style="dim"))
    if d.bit_depth_note:
        parts.append(Text(f"Bit depth: {d.bit_depth_note}", style="yellow"))
    if cam.note:
        parts.append(Text(f"Layer: {cam.note}", style="bold yellow"))
    if s.run.weights_note:
        parts.append(Text(f"Weights: {s.run.weights_note}", style="yellow"))
    nz = d.n_zero_cam
    if nz:
        parts.append(Text(f"All-zero Grad-CAM maps: {nz} of {d.n} (no positive evidence at this layer for the "
                          "explained class; their fractions are undefined and left out)"
                          + (": choose another --layer" if nz == d.n else ""),
                          style="bold red" if nz == d.n else "yellow"))
    if s.regions:
        parts += _regions_parts(s)
    hce = s.high_conf_errors
    ot = s.off_target
    off = (f" · off-target evidence: {fmt_estimate(ot.rate, pct=True)} of {ot.rate.n}"
           if ot and s.regions else "")  # no regions configured: no notion of off-target
    parts.append(Text(f"High-confidence errors (≥ {hce.threshold}): {fmt_estimate(hce.rate, pct=True)}"
                      f" of {d.n}" + off))
    if hce.top:
        t = Table(title="Errors, most confident first", title_justify="left", pad_edge=False)
        cf = any(r.flips_without is not None for r in hce.top)  # the counterfactual check ran
        for c in ("image", "true", "pred", "conf", "off-target", *(["flips without"] if cf else [])):
            t.add_column(c, no_wrap=c != "flips without")
        for r in hce.top[:5]:
            t.add_row(Text(r.image_id), Text(r.label), Text(r.pred), f"{r.confidence:.2f}",
                      "yes" if r.off_target else "", *([Text(", ".join(r.flips_without or []) or "—")] if cf else []))
        parts.append(t)
    op = s.operating_points
    if op and op.points:
        parts += _operating_parts(op)
    if s.counterfactual is not None:
        c = s.counterfactual
        if c.regions:
            parts.append(Text("Counterfactual (artifact removed): " + " · ".join(
                f"{r} flips {fmt_estimate(e.flip_rate, pct=True)} (n={e.n})" for r, e in c.regions.items())))
        for a in c.attribution:
            if a.decision in ("contained", "undetermined"):
                parts.append(Text(f"Whose flips: {a.text}.", style="bold" if a.decision == "contained" else ""))
        for h in c.hidden:
            parts.append(Text(f"Shortcut the maps do not show: {h.text}.", style="bold red"))
    san = s.sanity
    if san:
        parts.append(Text(f"Sanity check: {san.get('verdict_text', '')}",
                          style="green" if san.get("verdict") == "pass" else "bold red"))
    if s.discover:
        parts.append(discover_renderable(s.discover, out_dir))
    if s.cache and s.cache.note:
        parts.append(Text(s.cache.note, style="dim"))
    if s.gates:
        parts += _gate_parts(s)
    if out_dir:
        files = [f for f in OUTPUT_FILES if (Path(out_dir) / f.rstrip("/")).exists()]
        parts.append(Text(f"Files: {out_dir}/" + (f" ({', '.join(files)})" if files else ""), style="dim"))
    return Group(*parts)


def _regions_parts(s: AuditSummary) -> list:
    """The region table, kinds as heading rows, and the line saying why fractions are undefined."""
    t = Table(title="Where the evidence lies (share of Grad-CAM mass; 95% CI)", title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col, j in (("region", "left"), ("n", "right"), ("median frac", "right"), ("lift", "right"),
                   ("correct − wrong", "right"), ("ρ(conf)", "right"), ("AUROC err", "right")):
        t.add_column(col, justify=j, no_wrap=True)
    alarm, floor = lift_alarm(s), target_floor(s)
    nan = Estimate(math.nan)
    # the kind as a heading row above its regions, not a column: the CIs need the width at 100 columns
    other = sorted({e.kind for e in s.regions.values()} - {"target", "artifact"})
    for kind in ("target", "artifact", *other):
        rows = [(r, e) for r, e in s.regions.items() if e.kind == kind]
        if not rows:
            continue
        t.add_row(Text(f"{kind}s", style="bold"))
        for r, e in rows:
            st = e.stats
            lift = None if e.lift.too_small or not math.isfinite(e.lift.value) else e.lift.value
            style = ""
            if kind == "artifact" and lift is not None and lift > alarm:
                style = "bold red"
            elif kind == "target":
                med = st.get("median_all", nan).value
                style = "green" if math.isfinite(med) and med >= floor else "yellow"
            t.add_row(Text(r), str(e.n_present), fmt_estimate(st.get("median_all", nan), compact=True),
                      ("small" if e.lift.too_small else "—") if lift is None else f"{lift:.1f}×",
                      *(fmt_estimate(st.get(k, nan), compact=True)
                        for k in ("diff_median", "spearman_conf_all", "auroc_error")), style=style)
    out: list = [t]
    undef = [(r, e) for r, e in s.regions.items() if e.missing_reasons]
    if undef:
        # why a region's n is short of the audit's: an absent artifact is expected, a lost mask is not
        alarming = any(e.kind == "target" or any(not why.startswith(ABSENT_REASONS) for why in e.missing_reasons)
                       for _, e in undef)
        out.append(Text("Undefined fractions (left out, not counted as 0): " + " · ".join(
            f"{r} {e.n_missing} of {e.n_present + e.n_missing} [" + "; ".join(
                f"{why}: {k}" for why, k in list(e.missing_reasons.items())[:2]) + "]" for r, e in undef),
            style="yellow" if alarming else "dim"))
    return out


def _operating_parts(op: OperatingPoints) -> list:
    """The operating-point table (and the argmax row), the threshold rule and any tuning warning."""
    tuned = op.tuning + (f" '{op.validation_split}'" if op.validation_split else "")
    t = Table(title=f"Operating points for {op.positive_class} (thresholds tuned on: {tuned}; n = {op.n}, "
                    f"{op.n_pos} positive)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("target sens", "threshold", "sensitivity", "specificity", "PPV", "NPV"):
        t.add_column(c, justify="right", no_wrap=True)
    for p in op.points:
        t.add_row(f"{p.target_sensitivity:.2f}", fmt_threshold(p.threshold, p.threshold_logodds),
                  *(fmt_estimate(e, compact=True) for e in (p.sensitivity, p.specificity, p.ppv, p.npv)))
    if op.top1:
        t.add_row("top-1", "argmax", *(fmt_estimate(e, compact=True)
                                       for e in (op.top1.sensitivity, op.top1.specificity, op.top1.ppv, op.top1.npv)))
    out: list = [t]
    if op.rule and any(math.isfinite(p.threshold) for p in op.points):
        out.append(Text(f"Thresholds: {op.rule}.", style="dim"))
    if op.warning:
        out.append(Text(f"warning: {op.warning}", style="bold yellow"))
    return out


def _gate_parts(s: AuditSummary) -> list:
    """The verdict's headline and the gate table."""
    style = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}.get(s.verdict, "")
    out: list = []
    if s.verdict_headline:
        out.append(Text(f"Verdict: {s.verdict.upper()}: {s.verdict_headline}", style=style))
    t = Table(title=f"Sign-off gates: {s.verdict.upper()}", title_justify="left", pad_edge=False)
    for c in ("gate", "value", "threshold", "result"):
        t.add_column(c)
    res = {True: Text("pass", "green"), False: Text("FAIL", "bold red"), None: Text("undefined", "yellow")}
    for g in s.gates:
        ci = f" [{g.lo:.3f}, {g.hi:.3f}]" if math.isfinite(g.lo) and math.isfinite(g.hi) else ""
        vs = "n/a" if not math.isfinite(g.value) else f"{g.value:.3f}" + ci
        t.add_row(Text(g.name), Text(vs), Text(str(g.threshold)), res[g.passed])
    out.append(t)
    return out


def print_summary(s: AuditSummary, out_dir: str | None = None, console: Console | None = None) -> None:
    (console or Console()).print(summary_renderable(s, out_dir))


# ---------------------------------------------------------------------------------------------- multi-label audit

def _or_na(v, d: int = 2) -> str:
    """`fmt_estimate`, but a missing value (None) reads "n/a"."""
    return "n/a" if v is None else fmt_estimate(v, digits=d)


def findings_table(s: dict, width: int = 100) -> list[str]:
    """A multi-label summary's findings × figures table (summary.json's `comparison` rows,
    `audit.multilabel.comparison_rows`) as text lines of at most `width` (≥ 90) columns."""
    def value(e):
        return e.get("value") if isinstance(e, dict) else e

    comp = s.get("comparison") or []
    ts = _or_na(comp[0].get("target_sensitivity") if comp else None)
    head = (f"{'finding':<15} {'n':>5} {'pos':>4} {'AUROC [95% CI]':<16} {'se@' + ts:>7} {'sp@' + ts:>7} "
            f"{'FN':>4} {'target':>6} {'artifact lift':<14} {'flips':>5} {'gate':>4}")
    lines = [head[:width]]
    for r in comp:
        art = f"{r['top_artifact']} {_or_na(r['top_lift'], 1)}" if r["top_artifact"] else "-"
        auroc = _or_na(r["auroc"])
        line = (f"{r['finding'][:15]:<15} {r['n']:>5} {r['n_pos']:>4} {auroc:<16} "
                f"{_or_na(value(r['sensitivity'])):>7} {_or_na(value(r['specificity'])):>7} {r['false_negatives']:>4} "
                f"{_or_na(r['target_frac']):>6} {art[:14]:<14} {_or_na(r['top_flip_rate']):>5} "
                f"{(r['gates'] or '-'):>4}")
        lines.append(line[:width])
    return lines


def print_multilabel_summary(s: dict, out_dir: str | None = None, console: Console | None = None) -> None:
    """Terminal summary of a multi-label audit (its summary.json dict, docs/multilabel.md): the data line, the
    findings × figures table, the verdict with its headline and the gates that did not pass, the files."""
    con = console or Console(width=100)
    d = s["data"]
    con.print(f"multi-label audit: {len(s['findings'])} findings, n = {d['n']} images ({d['split']} split), "
              f"labels: blank = missing, -1 = {d['uncertain']}; thresholds tuned on {d['tuning']}", markup=False)
    if d.get("split_note"):
        con.print(f"Split: {d['split_note']}", markup=False, style="bold yellow")
    con.print(f"Grad-CAM at {s['cam']['layer']} {s['cam']['resolution']}, head: {', '.join(s['cam']['head'])}; "
              f"{s['cam']['n_maps']} maps ({s['cam']['maps']})", markup=False)
    for ln in findings_table(s):
        con.print(ln, markup=False, highlight=False)
    con.print("n = images labelled for the finding; se/sp at the threshold tuned for that sensitivity; target: "
              "median evidence share; small = n below min_n", markup=False)
    failed = [g for g in s.get("gates", []) if g["passed"] is not True]
    if s.get("verdict") not in (None, "none"):
        head = (s.get("verdict_detail") or {}).get("headline", "")
        con.print(f"gates: {s['verdict'].upper()} ({len(s['gates']) - len(failed)} of {len(s['gates'])} pass)"
                  + (f": {head}" if head else ""), markup=False)
        for g in failed[:12]:
            word = "FAIL" if g["passed"] is False else "UNDEFINED"
            con.print(f"  {word} {g['name']}: {_or_na(g['value'])} vs {g['threshold']} {g.get('note') or ''}",
                      markup=False)
    if out_dir:
        con.print(f"files: {out_dir}/ (per_image.csv, per_finding.csv, cams.npz, summary.json, report.html)",
                  markup=False)
