"""Report plots (PNG): region fractions by outcome, fraction vs confidence, reliability, ROC, counterfactual flips.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly: nothing touches pyplot's global state
or the process-wide backend. Every plot states its n. A plot whose inputs are absent is skipped with a note.
"""
from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..stats import Estimate
from ..summary_types import AuditSummary
from ..thresholds import class_score, fmt_threshold
from .inputs import ReportInputs

OUTCOME_COLOURS = {"correct": "#2a9d8f", "wrong": "#e76f51"}
DPI = 100

__all__ = ["make_plots", "reliability_bins", "region_fractions", "fraction_vs_confidence", "confidence_axis",
           "reliability", "roc", "counterfactual"]


def _fig(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _val(e):
    """An Estimate's value (or a bare number) as float; NaN when absent."""
    if isinstance(e, Estimate):
        e = e.value
    try:
        return float(e) if e is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _outcome(df: pd.DataFrame) -> pd.Series:
    return df["correct"].astype(bool).map({True: "correct", False: "wrong"})


def region_fractions(inp: ReportInputs, path: Path) -> tuple[Path | None, str]:
    """Box + strip plot of each region's frac (share of CAM mass) split by correct / wrong."""
    import seaborn as sns
    df = inp.per_image
    regs = [r for r in inp.kinds if f"frac_{r}" in df and np.isfinite(df[f"frac_{r}"].to_numpy(float)).any()]
    if not regs:
        return None, "region fractions: no region with a mask in per_image.csv"
    long = pd.concat([pd.DataFrame({"region": f"{r}\n({inp.kinds[r]})", "frac": df[f"frac_{r}"].astype(float),
                                    "outcome": _outcome(df)}) for r in regs], ignore_index=True).dropna()
    fig = _fig(max(5.0, 1.8 * len(regs) + 2), 4.2)
    ax = fig.add_subplot()
    order = [f"{r}\n({inp.kinds[r]})" for r in regs]
    hue_order = [h for h in ("correct", "wrong") if (long["outcome"] == h).any()]
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert` to bxp
        warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
        sns.boxplot(data=long, x="region", y="frac", hue="outcome", order=order, hue_order=hue_order,
                    palette=OUTCOME_COLOURS, showfliers=False, ax=ax, boxprops={"alpha": 0.55})
    sns.stripplot(data=long, x="region", y="frac", hue="outcome", order=order, hue_order=hue_order,
                  palette=OUTCOME_COLOURS, dodge=True, size=3, alpha=0.7, ax=ax, legend=False)
    nc, nw = int(df["correct"].astype(bool).sum()), int((~df["correct"].astype(bool)).sum())
    ax.set_title(f"Share of Grad-CAM evidence in each region, by outcome\n(n = {len(df)}: {nc} correct, {nw} wrong; "
                 f"regions without a mask dropped per image)", fontsize=10)
    ax.set_xlabel("")
    ax.set_ylabel("fraction of CAM mass in region")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([f"{o}\nn={int(long['region'].eq(o).sum())}" for o in order])
    return _save(fig, path), ""


def confidence_axis(conf: pd.Series) -> tuple[pd.Series, bool]:
    """(confidences to draw, logit axis?). A saturated model (median confidence > 0.99) is drawn on a logit
    axis: on a linear one every point sits at "1.0000" under an offset label. Confidences of exactly 0 or 1
    (float rounding) are then drawn at 1e-7 from the edge."""
    cf = conf[np.isfinite(conf)]
    logit = bool(len(cf)) and float(np.median(cf)) > 0.99
    return (conf.clip(1e-7, 1 - 1e-7) if logit else conf), logit


def fraction_vs_confidence(inp: ReportInputs, path: Path) -> tuple[Path | None, str]:
    """One scatter per region: top-1 confidence (x) vs the region's evidence fraction (y), coloured by outcome."""
    df = inp.per_image
    regs = [r for r in inp.kinds if f"frac_{r}" in df and np.isfinite(df[f"frac_{r}"].to_numpy(float)).any()]
    if not regs:
        return None, "fraction vs confidence: no region with a mask in per_image.csv"
    cols = min(3, len(regs))
    rows = -(-len(regs) // cols)
    fig = _fig(4.0 * cols, 3.4 * rows)
    out = _outcome(df)
    conf, logit = confidence_axis(df["confidence"].astype(float))
    for i, r in enumerate(regs):
        ax = fig.add_subplot(rows, cols, i + 1)
        f = df[f"frac_{r}"].astype(float)
        ok = np.isfinite(f) & np.isfinite(conf)
        for o, colour in OUTCOME_COLOURS.items():
            m = ok & (out == o)
            if m.any():
                ax.scatter(conf[m], f[m], s=14, alpha=0.75, c=colour, label=f"{o} ({int(m.sum())})",
                           edgecolors="none")
        reg = inp.summary.regions.get(r)
        rho = _val(reg.stats.get("spearman_conf_all") if reg is not None else None)
        ax.set_title(f"{r} ({inp.kinds[r]}), n = {int(ok.sum())}" + (f", ρ = {rho:.2f}" if math.isfinite(rho) else ""),
                     fontsize=10)
        if logit:
            ax.set_xscale("logit")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels crowd a narrow logit range
            ax.set_xlabel("top-1 confidence (logit scale)")
        else:
            ax.ticklabel_format(axis="x", useOffset=False)
            ax.set_xlabel("top-1 confidence")
        ax.set_ylabel(f"fraction in {r}")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path), ""


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Equal-width bins of [0, 1] over top-1 confidence: (table with lo, hi, n, accuracy, mean_conf; ECE).

    ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b| (Guo et al. 2017); NaN when N = 0. The last bin is
    closed ([0.9, 1.0]).
    """
    conf = np.asarray(conf, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    ok = np.isfinite(conf)
    conf, correct = conf[ok], correct[ok]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=False), 0, n_bins - 1)
    rows = []
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else math.nan
        mc = float(conf[m].mean()) if n else math.nan
        if n:
            ece += n / len(conf) * abs(acc - mc)
        rows.append({"lo": edges[b], "hi": edges[b + 1], "n": n, "accuracy": acc, "mean_conf": mc})
    return pd.DataFrame(rows), (ece if len(conf) else math.nan)


def reliability(inp: ReportInputs, path: Path) -> tuple[Path | None, str]:
    df = inp.per_image
    tab, ece = reliability_bins(df["confidence"].to_numpy(float), df["correct"].to_numpy(bool))
    n = int(tab["n"].sum())
    if n == 0:
        return None, "reliability: no finite confidence"
    fig = _fig(5.2, 4.6)
    ax = fig.add_subplot()
    centres = (tab["lo"] + tab["hi"]) / 2
    has = tab["n"] > 0
    ax.bar(centres[has], tab["accuracy"][has], width=0.095, color="#457b9d", alpha=0.85, label="accuracy")
    # the gap spans accuracy..mean confidence; drawn as a hatched outline so that an under-confident bin's gap
    # (confidence below accuracy) does not blend with the accuracy bar into a colour the legend does not show
    gap_lo = np.minimum(tab["mean_conf"], tab["accuracy"])[has]
    ax.bar(centres[has], (tab["mean_conf"] - tab["accuracy"]).abs()[has], bottom=gap_lo, width=0.095,
           fill=False, edgecolor="#e63946", hatch="///", lw=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for c, a, k in zip(centres[has], tab["accuracy"][has], tab["n"][has]):
        ax.text(c, min(a, 0.93) + 0.02, f"n={k}", ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("top-1 confidence (10 equal-width bins)")
    ax.set_ylabel("accuracy in bin")
    e = inp.summary.calibration.ece
    ci = f" [{e.lo:.3f}, {e.hi:.3f}]" if math.isfinite(e.value) and math.isfinite(e.lo) else ""
    ax.set_title(f"Reliability diagram, ECE = {ece:.3f}{ci} (n = {n})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path), ""


def _op_points(summary: AuditSummary) -> tuple[list[dict], str]:
    """[{label, fpr, tpr}] from the summary's operating points (audit.thresholds.operating_points)."""
    op = summary.operating_points
    if op is None:
        return [], ""
    pts = []
    for p in op.points:
        sens, spec = _val(p.sensitivity), _val(p.specificity)
        if math.isfinite(sens) and math.isfinite(spec):
            t, thr = _val(p.target_sensitivity), _val(p.threshold)
            lab = ((f"target sens {t:.2f}" if math.isfinite(t) else "point")
                   + (f" (t = {fmt_threshold(thr, p.threshold_logodds)})" if math.isfinite(thr) else ""))
            pts.append({"label": lab, "fpr": 1 - spec, "tpr": sens})
    top1 = op.top1
    if top1 is not None:
        sens, spec = _val(top1.sensitivity), _val(top1.specificity)
        if math.isfinite(sens) and math.isfinite(spec):
            pts.append({"label": "top-1 (argmax)", "fpr": 1 - spec, "tpr": sens})
    return pts, str(op.tuning or "")


def roc(inp: ReportInputs, path: Path) -> tuple[Path | None, str]:
    from sklearn.metrics import roc_auc_score, roc_curve
    pos = inp.positive
    df = inp.per_image
    if pos is None:
        return None, "ROC: no positive class configured"
    if f"p_{pos}" not in df:
        return None, f"ROC: column p_{pos} not in per_image.csv"
    score = class_score(df, pos)[0]  # log-odds: the images at P = 1.0 in float32 are still ranked
    y = (df["label"].astype(str) == pos).to_numpy()
    ok = np.isfinite(score)
    score, y = score[ok], y[ok]
    if y.all() or (~y).all():
        return None, f"ROC: undefined, the audited images are all {'positive' if y.all() else 'negative'}"
    fpr, tpr, _ = roc_curve(y, score)
    auc = roc_auc_score(y, score)
    fig = _fig(5.2, 4.8)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color="#1d3557", lw=1.8, label=f"ROC (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    pts, tuning = _op_points(inp.summary)
    markers = "osD^vP*X"
    for i, p in enumerate(pts):
        ax.plot(p["fpr"], p["tpr"], markers[i % len(markers)], ms=7, label=f"{p['label']}: sens {p['tpr']:.2f}, "
                f"spec {1 - p['fpr']:.2f}")
    ax.set_xlabel("1 − specificity (false-positive rate)")
    ax.set_ylabel(f"sensitivity for {pos}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(f"ROC of P({pos}) vs truth, n = {len(y)} ({int(y.sum())} positive)"
                 + ("\n" + textwrap.fill(f"operating points tuned by {tuning}", 70) if pts and tuning else ""),
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path), ""


def counterfactual(inp: ReportInputs, path: Path) -> tuple[Path | None, str]:
    cf = inp.summary.counterfactual
    if cf is None or not cf.regions:
        return None, ""
    names, vals, los, his, ns = [], [], [], [], []
    for r, e in cf.regions.items():
        fr = e.flip_rate
        v = _val(fr)
        names.append(f"{r}\nn={e.n}")
        vals.append(v if math.isfinite(v) else 0.0)
        lo, hi = _val(fr.lo), _val(fr.hi)
        los.append(v - lo if math.isfinite(lo) and math.isfinite(v) else 0.0)
        his.append(hi - v if math.isfinite(hi) and math.isfinite(v) else 0.0)
        ns.append(math.isfinite(v))
    if not names:
        return None, "counterfactual: no region entries"
    fig = _fig(max(4.5, 1.4 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, vals, yerr=[los, his], capsize=4, color=["#e76f51" if d else "#cccccc" for d in ns])
    for xi, d, v, hi in zip(x, ns, vals, his):
        if d:
            ax.text(xi + 0.08, v + hi + 0.02, f"{100 * v:.0f}%", ha="left", fontsize=8)
        else:
            ax.text(xi, 0.02, "n/a\n(too few)", ha="center", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of predictions that flip")
    n_tot = cf.cost.n_edited
    sub = "(Wilson 95% CI" + (f"; {n_tot} region edits, one per image and region present)" if n_tot is not None else ")")
    ax.set_title("Counterfactual: prediction flips when the region is filled in\n" + textwrap.fill(sub, 60), fontsize=10)
    return _save(fig, path), ""


PLOTS = {"region_fractions": region_fractions, "fraction_vs_confidence": fraction_vs_confidence,
         "reliability": reliability, "roc": roc, "counterfactual": counterfactual}


def make_plots(inp: ReportInputs, folder: Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """Write every applicable plot to `folder` (default out_dir/plots/): ({name: path}, notes on skipped plots)."""
    folder = folder or inp.out_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths, notes = {}, []
    for name, fn in PLOTS.items():
        target = folder / f"{name}.png"
        p, note = fn(inp, target)
        if p is not None:
            paths[name] = p
        else:
            if target.exists():
                target.unlink()  # a stale plot from an earlier rendering
            if note:
                notes.append(note)
    return paths, notes
