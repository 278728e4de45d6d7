"""Rich terminal rendering of an audit summary (reads `summary.json`'s dict; never recomputes anything)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .stats import fmt_estimate, is_finite
from .summary import ABSENT_REASONS, lift_alarm, target_floor
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
        lines.append(Text(f"  … {len(rows) - n} more ranked groups in discover/groups.csv", style="dim"))
    return Group(*lines)


def _ece_text(cal: dict) -> str:
    """" · ECE 0.08 [0.06,0.11] (a calibrated model reads ~0.04 at this n)": the estimate beside the floor that a
    perfectly calibrated model with these confidences reads on average from sampling noise alone."""
    e = cal.get("ece")
    if not e:
        return ""
    floor = cal.get("ece_if_calibrated")
    ok = not e.get("too_small") and isinstance(floor, (int, float)) and math.isfinite(floor)
    return f" · ECE {fmt_estimate(e)}" + (f" (a calibrated model reads ~{floor:.2f} at this n)" if ok else "")


def summary_renderable(s: dict, out_dir: str | None = None):
    d, acc = s["data"], s["accuracy"]
    head = Text.assemble(
        ("Audit ", "bold"), (str(s["run"].get("name")), "bold cyan"), f" · {s['run']['model']} · data {d['manifest']}",
        f" · split {d['split']} · n={d['n']}", (f" · skipped {d['n_skipped']} (unreadable: see errors.csv)" if d["n_skipped"] else ""),
        f"\nGrad-CAM at {s['cam']['layer']} ({'×'.join(map(str, s['cam']['resolution']))}), explaining "
        f"{s['cam']['target']} class · accuracy {fmt_estimate(acc, pct=True)}"
        + _ece_text(s.get("calibration") or {}))
    parts = [head]
    if d.get("split_note"):  # no split chose the rows: training images may be among them
        parts.append(Text(f"Split: {d['split_note']}", style="bold yellow"))
    if d.get("grid_note"):
        parts.append(Text(f"Grid: {d['grid_note']}", style="dim"))
    if d.get("bit_depth_note"):
        parts.append(Text(f"Bit depth: {d['bit_depth_note']}", style="yellow"))
    if (s.get("cam") or {}).get("note"):
        parts.append(Text(f"Layer: {s['cam']['note']}", style="bold yellow"))
    if s["run"].get("weights_note"):
        parts.append(Text(f"Weights: {s['run']['weights_note']}", style="yellow"))
    nz = int(d.get("n_zero_cam") or 0)
    if nz:
        parts.append(Text(f"All-zero Grad-CAM maps: {nz} of {d['n']} (no positive evidence at this layer for the "
                          "explained class; their fractions are undefined and left out)"
                          + (": choose another --layer" if nz == d["n"] else ""),
                          style="bold red" if nz == d["n"] else "yellow"))
    if s.get("regions"):
        t = Table(title="Where the evidence lies (share of Grad-CAM mass; 95% CI)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
        for col, j in (("region", "left"), ("n", "right"), ("median frac", "right"), ("lift", "right"),
                       ("correct − wrong", "right"), ("ρ(conf)", "right"), ("AUROC err", "right")):
            t.add_column(col, justify=j, no_wrap=True)
        alarm, floor = lift_alarm(s), target_floor(s)
        # the kind as a heading row above its regions, not a column: the CIs need the width at 100 columns
        other = sorted({e["kind"] for e in s["regions"].values()} - {"target", "artifact"})
        for kind in ("target", "artifact", *other):
            rows = [(r, e) for r, e in s["regions"].items() if e["kind"] == kind]
            if not rows:
                continue
            t.add_row(Text(f"{kind}s", style="bold"))
            for r, e in rows:
                st = e["stats"]
                le = e.get("lift") or {}
                lift = None if le.get("too_small") else (le.get("value") if le else e.get("median_lift"))
                style = ""
                if kind == "artifact" and lift is not None and lift > alarm:
                    style = "bold red"
                elif kind == "target":
                    med = st["median_all"].get("value")
                    style = "green" if med is not None and med >= floor else "yellow"
                t.add_row(Text(r), str(e["n_present"]), fmt_estimate(st["median_all"], compact=True),
                          ("small" if le.get("too_small") else "—") if lift is None else f"{lift:.1f}×",
                          fmt_estimate(st["diff_median"], compact=True), fmt_estimate(st["spearman_conf_all"], compact=True),
                          fmt_estimate(st["auroc_error"], compact=True), style=style)
        parts.append(t)
        undef = [(r, e) for r, e in s["regions"].items() if e.get("missing_reasons")]
        if undef:
            # why a region's n is short of the audit's: an absent artifact is expected, a lost mask is not
            alarming = any(e["kind"] == "target" or any(not why.startswith(ABSENT_REASONS)
                                                        for why in e["missing_reasons"])
                           for _, e in undef)
            parts.append(Text("Undefined fractions (left out, not counted as 0): " + " · ".join(
                f"{r} {e['n_missing']} of {e['n_present'] + e['n_missing']} [" + "; ".join(
                    f"{why}: {k}" for why, k in list(e["missing_reasons"].items())[:2]) + "]" for r, e in undef),
                style="yellow" if alarming else "dim"))
    hce = s.get("high_conf_errors") or {}
    if hce:
        ot = s.get("off_target") or {}
        off = (f" · off-target evidence: {fmt_estimate(ot['rate'], pct=True)} of {ot['rate'].get('n')}"
               if ot and s.get("regions") else "")  # no regions configured: no notion of off-target
        parts.append(Text(f"High-confidence errors (≥ {hce['threshold']}): {fmt_estimate(hce['rate'], pct=True)}"
                          f" of {d['n']}" + off))
        if hce.get("top"):
            t = Table(title="Errors, most confident first", title_justify="left", pad_edge=False)
            cf = any("flips_without" in r for r in hce["top"])  # the counterfactual check ran
            for c in ("image", "true", "pred", "conf", "off-target", *(["flips without"] if cf else [])):
                t.add_column(c, no_wrap=c != "flips without")
            for r in hce["top"][:5]:
                t.add_row(Text(str(r["image_id"])), Text(str(r["label"])), Text(str(r["pred"])), f"{r['confidence']:.2f}",
                          "yes" if r["off_target"] else "",
                          *([Text(", ".join(r.get("flips_without") or []) or "—")] if cf else []))
            parts.append(t)
    op = s.get("operating_points")
    if op and op.get("points"):
        tuned = (op.get("tuning") or "?") + (f" '{op['validation_split']}'" if op.get("validation_split") else "")
        ns = f"; n = {op['n']}, {op['n_pos']} positive" if op.get("n") is not None and op.get("n_pos") is not None else ""
        t = Table(title=f"Operating points for {op.get('positive_class')} (thresholds tuned on: {tuned}{ns})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for c in ("target sens", "threshold", "sensitivity", "specificity", "PPV", "NPV"):
            t.add_column(c, justify="right", no_wrap=True)
        for p in op["points"]:
            thr = p.get("threshold")
            t.add_row(f"{p['target_sensitivity']:.2f}", fmt_threshold(thr, p.get("threshold_logodds")),
                      *(fmt_estimate(p.get(k), compact=True) for k in ("sensitivity", "specificity", "ppv", "npv")))
        top1 = op.get("top1") or {}
        if top1:
            t.add_row("top-1", "argmax",
                      *(fmt_estimate(top1.get(k), compact=True) for k in ("sensitivity", "specificity", "ppv", "npv")))
        parts.append(t)
        if op.get("rule") and any(is_finite(p.get("threshold")) for p in op["points"]):
            parts.append(Text(f"Thresholds: {op['rule']}.", style="dim"))
        if op.get("warning"):
            parts.append(Text(f"warning: {op['warning']}", style="bold yellow"))
    cf = (s.get("counterfactual") or {}).get("regions")
    if cf:
        parts.append(Text("Counterfactual (artifact removed): " + " · ".join(
            f"{r} flips {fmt_estimate(e.get('flip_rate'), pct=True)} (n={e.get('n')})" for r, e in cf.items())))
    for a in (s.get("counterfactual") or {}).get("attribution") or []:
        if a.get("decision") in ("contained", "undetermined"):
            parts.append(Text(f"Whose flips: {a['text']}.", style="bold" if a["decision"] == "contained" else ""))
    for h in (s.get("counterfactual") or {}).get("hidden") or []:
        parts.append(Text(f"Shortcut the maps do not show: {h['text']}.", style="bold red"))
    san = s.get("sanity")
    if san:
        parts.append(Text(f"Sanity check: {san.get('verdict_text', '')}",
                          style="green" if san.get("verdict") == "pass" else "bold red"))
    if s.get("discover"):
        parts.append(discover_renderable(s["discover"], out_dir))
    if (s.get("cache") or {}).get("note"):
        parts.append(Text(s["cache"]["note"], style="dim"))
    if s.get("gates"):
        vd = s.get("verdict_detail") or {}
        style = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}.get(s.get("verdict"), "")
        if vd.get("headline"):
            parts.append(Text(f"Verdict: {str(s.get('verdict', '?')).upper()}: {vd['headline']}", style=style))
        t = Table(title=f"Sign-off gates: {s.get('verdict', '?').upper()}", title_justify="left", pad_edge=False)
        for c in ("gate", "value", "threshold", "result"):
            t.add_column(c)
        for g in s["gates"]:
            v = g.get("value")
            ci = g.get("ci")
            vs = "n/a" if v is None else f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")
            res = {True: Text("pass", "green"), False: Text("FAIL", "bold red"), None: Text("undefined", "yellow")}
            t.add_row(Text(g["name"]), Text(vs), Text(str(g["threshold"])), res[g.get("passed")])
        parts.append(t)
    if out_dir:
        files = [f for f in OUTPUT_FILES if (Path(out_dir) / f.rstrip("/")).exists()]
        parts.append(Text(f"Files: {out_dir}/" + (f" ({', '.join(files)})" if files else ""), style="dim"))
    return Group(*parts)


def print_summary(s: dict, out_dir: str | None = None, console: Console | None = None) -> None:
    (console or Console()).print(summary_renderable(s, out_dir))
