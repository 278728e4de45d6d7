"""Paired comparison of two audits of the same images: the candidate model against the baseline it replaces.

`compare_audits(baseline_dir, candidate_dir, gates=...)` reads two finished audit folders (per_image.csv,
summary.json, cams.npz, config.resolved.yaml), refuses a pair that is not on the same images, labels and regions
(`ComparisonError`, naming the ids that differ), and returns a `Comparison`: one `PairedFigure` per figure that
matters at sign-off, each with both models' values, the paired difference (candidate − baseline) with a 95 % CI
and a paired test, plus the changes per image, the non-inferiority gates and a verdict.

Statistics (every one paired over the images both audits scored):
  * rates (accuracy, sensitivity and specificity of the positive class at each operating point, high-confidence
    error rate, counterfactual flip rates): the difference with a paired percentile bootstrap CI (images
    resampled jointly for both models; Efron & Tibshirani 1993, ch. 13) and McNemar's exact test on the
    discordant pairs (McNemar 1947; exact binomial form: p = min(1, 2·P(X ≤ min(b, c))), X ~ Bin(b + c, ½));
  * AUROC of the positive class: DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837) for the paired
    difference (structural components; z test, normal CI);
  * per region, the median target share and the median artifact lift: the difference of the medians with a
    paired bootstrap CI and the Wilcoxon signed-rank test of the per-image differences (scipy.stats.wilcoxon);
  * ECE (Guo et al. 2017, 10 equal-width bins): paired bootstrap CI, and the bootstrap p-value that inverts it
    (2·min(share of replicates ≤ 0, share ≥ 0)).
A row's verdict is "better"/"worse" when its CI excludes 0 and its test gives p < alpha, else "no difference"
(no difference shown at this n); "too small" below min_n; "undefined" when a figure is NaN.

Non-inferiority gates (`GATES`): a gate passes only when the CI bound on the bad side clears the margin, e.g.
max_sensitivity_drop: 0.02 passes when the lower bound of Δsensitivity is ≥ −0.02 (a regulator's
non-inferiority test; FDA 2016 guidance, "Non-Inferiority Clinical Trials"). A gate that cannot be measured is
"undefined"; the verdict is "fail" when any gate fails, "inconclusive" when none fails but one is undefined,
"pass" when all pass, "none" when no gate is set.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _sps

from .errors import AuditError, ConfigError, UndefinedMetricWarning

if TYPE_CHECKING:
    from .report.inputs import ReportInputs
from .stats import NAN, Estimate, bootstrap_ci, proportion_ci
from .thresholds import TUNING_VALIDATION, class_score, tune_threshold

__all__ = ["ComparisonError", "PairedFigure", "GateResult", "Comparison", "compare_audits", "compare_inputs",
           "mcnemar_exact", "paired_bootstrap", "delong_paired", "wilcoxon_p", "operating_predictions",
           "evaluate_compare_gates", "parse_gates", "read_gates_file", "GATES", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1.0"  # docs/compare.md

#: gate name → (figure key prefix, side of the CI that must clear the margin: "lo" for a drop, "hi" for a rise)
GATES: dict[str, tuple[str, str]] = {
    "max_accuracy_drop": ("accuracy", "lo"),
    "max_sensitivity_drop": ("sensitivity@", "lo"),
    "max_specificity_drop": ("specificity@", "lo"),
    "max_auroc_drop": ("auroc", "lo"),
    "max_target_share_drop": ("target_share[", "lo"),
    "max_lift_increase": ("lift[", "hi"),
    "max_flip_rate_increase": ("flip_rate[", "hi"),
    "max_ece_increase": ("ece", "hi"),
    "max_high_conf_error_increase": ("high_conf_error_rate", "hi"),
}


class ComparisonError(AuditError):
    """Two audits that cannot be compared (different images, labels, classes or regions), or a bad option."""


# ----------------------------------------------------------------------------------------------------------------
# data

@dataclass
class PairedFigure:
    """One figure of both models on the same images.

    key: stable id ("accuracy", "sensitivity@0.90", "lift[text]"); group: section ("performance", "regions",
    "counterfactual", "calibration"); label: what the table shows; direction: +1 higher is better, −1 lower is.
    baseline, candidate: each model's value on the paired images (Estimate, its own 95 % CI);
    difference: candidate − baseline with the paired 95 % CI (Estimate; n = paired images);
    test: name of the paired test; p: its two-sided p-value (None when not defined); statistic: the test's
    statistic (McNemar: the smaller discordant count; Wilcoxon: W; DeLong: z); discordant: (b, c) for McNemar =
    (baseline right/positive only, candidate only); verdict: "better" | "worse" | "no difference" | "too small" |
    "undefined".
    """

    key: str
    group: str
    label: str
    direction: int
    baseline: Estimate
    candidate: Estimate
    difference: Estimate
    test: str
    p: float | None = None
    statistic: float | None = None
    discordant: tuple[int, int] | None = None
    verdict: str = "undefined"
    note: str = ""

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("baseline", "candidate", "difference")}
        d.update(baseline=self.baseline.to_dict(), candidate=self.candidate.to_dict(),
                 difference=self.difference.to_dict())
        d["discordant"] = list(self.discordant) if self.discordant is not None else None
        return d


@dataclass
class GateResult:
    """A non-inferiority gate on one figure: passes when the CI `bound` clears `margin`.

    name: "max_sensitivity_drop[0.90]"; figure: the PairedFigure key; margin ≥ 0; side: "lo" (the lower bound of
    the difference must be ≥ −margin) or "hi" (the upper bound must be ≤ margin); bound: that CI bound (NaN when
    undefined); status: "pass" | "fail" | "undefined"; decides: whether the status counts for the verdict (False
    for a too-small region or point of a gate spread over all of them)."""

    name: str
    figure: str
    margin: float
    side: str
    bound: float
    difference: float
    status: str
    note: str = ""
    decides: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    """Everything `compare_audits` found; `to_dict()` is compare.json (schema in docs/compare.md)."""

    baseline: dict
    candidate: dict
    data: dict
    method: dict
    figures: list[PairedFigure]
    changes: dict
    gates: list[GateResult]
    verdict: str
    per_image: pd.DataFrame                      # one row per paired image (ids, both predictions, deltas)
    notes: list[str] = field(default_factory=list)
    gallery: dict = field(default_factory=dict)
    inputs: tuple | None = field(default=None, repr=False)  # the two loaded audits (images, maps) for the gallery

    def figure(self, key: str) -> PairedFigure:
        for f in self.figures:
            if f.key == key:
                return f
        raise KeyError(f"no figure {key!r}; figures are {[f.key for f in self.figures]}")

    def to_dict(self) -> dict:
        from .summary_types import jsonable
        return jsonable({"schema_version": SCHEMA_VERSION, "baseline": self.baseline, "candidate": self.candidate,
                           "data": self.data, "method": self.method,
                           "figures": [f.to_dict() for f in self.figures], "changes": self.changes,
                           "gates": [g.to_dict() for g in self.gates], "verdict": self.verdict,
                           "gallery": self.gallery, "notes": self.notes})


# ----------------------------------------------------------------------------------------------------------------
# paired statistics

def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (only the baseline right) and c (only the
    candidate right): p = min(1, 2·Σ_{k ≤ min(b,c)} C(b+c, k)/2^(b+c)) (McNemar 1947; the exact conditional
    binomial test). b + c = 0 → 1.0 (no discordant pair: no evidence of a difference). E.g. b=1, c=6 → 0.125."""
    if int(b) != b or int(c) != c or b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: expected counts b, c ≥ 0, got b={b}, c={c}")
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return 1.0
    if n <= 1000:  # exact integer arithmetic
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    else:          # 2^n overflows a float beyond n = 1023: the binomial CDF, computed in logs by scipy
        tail = float(_sps.binom.cdf(min(b, c), n, 0.5))
    return min(1.0, 2.0 * tail)


def paired_bootstrap(arrays: Sequence[np.ndarray], stat: Callable[..., np.ndarray], n_split: int,
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """Paired percentile bootstrap of stat(candidate arrays) − stat(baseline arrays).

    arrays: per-image arrays of equal length n; the first `n_split` belong to the baseline, the rest (as many)
    to the candidate, in the same order. stat: vectorised, called with (b, n) resamples, returns (b,).
    All arrays are resampled with the same row indices (`audit.stats.bootstrap_ci` on the joint tuple), so
    each resample keeps the images' pairing. Returns (difference, lo, hi, p_boot): the point difference,
    the percentile CI, and the two-sided bootstrap p-value 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)) (in [1/B, 1]; NaN
    without finite replicates). Replicates that are NaN (a resample without positives) are dropped."""
    arrays = tuple(np.asarray(a) for a in arrays)
    base, cand = arrays[:n_split], arrays[n_split:]
    if len(base) != len(cand):
        raise ValueError(f"paired_bootstrap: expected as many candidate as baseline arrays, got "
                         f"{len(base)} and {len(cand)}")
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = float(stat(*(a[None] for a in cand))[0] - stat(*(a[None] for a in base))[0])
    reps: list[np.ndarray] = []

    def fn(*rs):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.asarray(stat(*rs[n_split:]), float) - np.asarray(stat(*rs[:n_split]), float)
        reps.append(r)
        return r
    n = len(arrays[0]) if arrays else 0
    if n == 0:
        return NAN, NAN, NAN, NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        lo, hi = bootstrap_ci(arrays, fn, n_boot=n_boot, seed=seed, alpha=alpha, vectorized=True)
    r = np.concatenate(reps) if reps else np.zeros(0)
    r = r[np.isfinite(r)]
    # floored at 1/B: no replicate on the far side of 0 means p < 1/B, not p = 0
    p = min(1.0, max(2.0 * min((r <= 0).mean(), (r >= 0).mean()), 1.0 / r.size)) if r.size else NAN
    return diff, lo, hi, float(p)


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V10 (m,) for positives, V01 (k,) for negatives, via mid-ranks
    (Sun & Xu 2014, IEEE SPL 21:1389): V10_i = mean_j ψ(X_i, Y_j), V01_j = mean_i ψ(X_i, Y_j),
    ψ = 1 if X > Y, ½ if equal, 0 else."""
    m, k = len(pos), len(neg)
    r_all = _sps.rankdata(np.r_[pos, neg])
    r_pos, r_neg = _sps.rankdata(pos), _sps.rankdata(neg)
    v10 = (r_all[:m] - r_pos) / k
    v01 = 1.0 - (r_all[m:] - r_neg) / m
    return v10, v01


def delong_paired(y, score_a, score_b, alpha: float = 0.05) -> dict:
    """AUROCs of two scores on the same images and DeLong's test of their difference (DeLong et al. 1988).

    y: (n,) bool truth; score_a, score_b: (n,) finite scores (higher = more positive).
    Returns {auc_a, auc_b, se_a, se_b, diff (b − a), se_diff, lo, hi (normal CI of diff), z, p (two-sided)}.
    Undefined (no positive or no negative) → NaN everywhere and an UndefinedMetricWarning. Identical scores give
    diff 0, se_diff 0 and p = 1.0."""
    y = np.asarray(y, bool)
    sa, sb = np.asarray(score_a, float), np.asarray(score_b, float)
    m, k = int(y.sum()), int((~y).sum())
    keys = ("auc_a", "auc_b", "se_a", "se_b", "diff", "se_diff", "lo", "hi", "z", "p")
    if m < 2 or k < 2:
        warnings.warn(f"delong_paired: {m} positives and {k} negatives (need ≥ 2 each); AUROC undefined (NaN)",
                      UndefinedMetricWarning, stacklevel=2)
        return {key: NAN for key in keys}
    comps = [_placements(s[y], s[~y]) for s in (sa, sb)]
    auc = np.array([c[0].mean() for c in comps])
    s10 = np.cov(np.vstack([c[0] for c in comps]))
    s01 = np.cov(np.vstack([c[1] for c in comps]))
    S = s10 / m + s01 / k
    var_d = float(S[0, 0] + S[1, 1] - 2 * S[0, 1])
    diff = float(auc[1] - auc[0])
    se = math.sqrt(max(var_d, 0.0))
    zc = float(_sps.norm.ppf(1 - alpha / 2))
    if se <= 1e-15:
        z, p = (0.0, 1.0) if abs(diff) < 1e-15 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * _sps.norm.sf(abs(z)))
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "se_a": math.sqrt(max(S[0, 0], 0.0)),
            "se_b": math.sqrt(max(S[1, 1], 0.0)), "diff": diff, "se_diff": se, "lo": diff - zc * se,
            "hi": diff + zc * se, "z": z, "p": p}


def wilcoxon_p(d: np.ndarray) -> tuple[float, float, str]:
    """(W, two-sided p, note) of the Wilcoxon signed-rank test of paired differences d (scipy.stats.wilcoxon,
    zero differences dropped: Wilcoxon 1945). All differences 0 → (0, 1.0, note): nothing moved. Empty → NaN."""
    d = np.asarray(d, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return NAN, NAN, "no paired values"
    if not np.any(d != 0):
        return 0.0, 1.0, "all paired differences are 0"
    res = _sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue), f"{int((d != 0).sum())} non-zero differences"


# ----------------------------------------------------------------------------------------------------------------
# reading and checking the two audits

def _load(path) -> ReportInputs:
    from .report.inputs import read_out_dir
    inp = read_out_dir(path)
    dup = inp.per_image["image_id"].astype(str)
    d = dup[dup.duplicated()].unique().tolist()
    if d:
        raise ComparisonError(f"{Path(path) / 'per_image.csv'}: image_id not unique ({', '.join(d[:5])}); "
                              "a paired comparison needs one row per image")
    return inp


def _ids_text(ids: Sequence[str], k: int = 5) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:k]) + (f" and {len(ids) - k} more" if len(ids) > k else "")


def check_comparable(a, b) -> None:
    """Raise ComparisonError (one line) unless audits a, b (ReportInputs) cover the same image ids with the same
    labels, the same classes and positive class, and the same regions (names, kinds, definitions)."""
    da, db = a.per_image, b.per_image
    ia, ib = set(da["image_id"].astype(str)), set(db["image_id"].astype(str))
    if ia != ib:
        only_a, only_b = ia - ib, ib - ia
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in the baseline ({_ids_text(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in the candidate ({_ids_text(only_b)})")
        raise ComparisonError(f"{a.out_dir} vs {b.out_dir}: different images: " + "; ".join(parts)
                              + " (audit both on the same manifest, split and --limit)")
    la = da.set_index(da["image_id"].astype(str))["label"].astype(str)
    lb = db.set_index(db["image_id"].astype(str))["label"].astype(str).reindex(la.index)
    diff = la.index[(la != lb).to_numpy()]
    if len(diff):
        raise ComparisonError(f"{a.out_dir} vs {b.out_dir}: different labels for {len(diff)} images "
                              f"({_ids_text(diff)}; e.g. {diff[0]}: {la[diff[0]]} vs {lb[diff[0]]})")
    if list(a.classes) != list(b.classes):
        raise ComparisonError(f"{a.out_dir} vs {b.out_dir}: different classes ({a.classes} vs {b.classes})")
    if a.positive != b.positive:
        raise ComparisonError(f"{a.out_dir} vs {b.out_dir}: different positive classes ({a.positive} vs "
                              f"{b.positive}); audit both with the same --positive")
    if a.kinds != b.kinds:
        ka, kb = set(a.kinds.items()), set(b.kinds.items())
        raise ComparisonError(f"{a.out_dir} vs {b.out_dir}: different regions (baseline only: "
                              f"{sorted(r for r, _ in ka - kb) or 'none'}; candidate only: "
                              f"{sorted(r for r, _ in kb - ka) or 'none'}); audit both with the same --config")
    ra, rb = a.region_cfg or {}, b.region_cfg or {}
    changed = sorted(r for r in set(ra) | set(rb) if ra.get(r) != rb.get(r))
    if changed:
        raise ComparisonError(f"{a.out_dir} vs {b.out_dir}: regions defined differently ({', '.join(changed)}); "
                              "audit both with the same --config")


def operating_predictions(inp) -> tuple[dict[str, np.ndarray], list[str]]:
    """({point: bool (n,) predicted positive, in per_image order}, notes) of one audit's operating points.

    "top-1" is the argmax prediction; "0.90" etc. the thresholds tuned for that sensitivity, re-applied to the
    score the audit tuned on (`class_score`: log-odds of P(positive)). Validation-tuned points use the summary's
    threshold; cross-fitted ones are re-fitted exactly as `audit.thresholds.operating_points` did (same folds,
    same seed, the held-out rank when the summary names its `rule`, else the in-sample one of older audits). A point whose re-applied counts differ from the summary's is left out, with a note."""
    df, pos = inp.per_image, inp.positive
    out: dict[str, np.ndarray] = {"top-1": (df["pred"].astype(str) == pos).to_numpy()}
    notes: list[str] = []
    op = inp.summary.operating_points
    if op is None or not op.points:
        return out, notes
    score, kind = class_score(df, pos)
    y = (df["label"].astype(str) == pos).to_numpy()
    seed = int(inp.option("seed", 0))
    folds = None
    held_out = bool(op.rule)  # audits before the held-out rank (#26) wrote no rule and tuned with k = ⌈target·P⌉
    if op.tuning != TUNING_VALIDATION:
        from sklearn.model_selection import StratifiedKFold
        k = min(5, int(y.sum()))
        if k >= 2 and np.isfinite(score).all():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
                             .split(np.zeros((len(y), 1)), y))
    for pt in op.points:
        name = f"{float(pt.target_sensitivity):.2f}"
        if op.tuning == TUNING_VALIDATION:
            t = pt.threshold_logodds if kind == "logodds" else pt.threshold
            if t is None or not math.isfinite(float(t)):
                notes.append(f"{inp.run_name}: no threshold for sensitivity {name}")
                continue
            pred = score >= float(t)
        else:
            if folds is None:
                notes.append(f"{inp.run_name}: operating point {name} could not be cross-fitted")
                continue
            pred = np.zeros(len(y), bool)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                for tr, te in folds:
                    pred[te] = score[te] >= tune_threshold(score[tr], y[tr], float(pt.target_sensitivity),
                                                              held_out=held_out)
        tp, fn = int((pred & y).sum()), int((~pred & y).sum())
        if pt.tp is not None and (tp, fn) != (int(pt.tp), int(pt.fn)):
            notes.append(f"{inp.run_name}: operating point {name} re-applied gives tp={tp}, fn={fn}, the summary "
                         f"{pt.tp}, {pt.fn}: left out")
            continue
        out[name] = pred
    return out, notes


# ----------------------------------------------------------------------------------------------------------------
# figures

def _rate_est(x: np.ndarray) -> Estimate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return proportion_ci(int(np.sum(x)), int(len(x)))


def _verdict(f: PairedFigure, alpha: float, min_n: int) -> str:
    d = f.difference
    if d.n < min_n:
        return "too small"
    if not math.isfinite(d.value):
        return "undefined"
    lo, hi = d.lo, d.hi
    excludes = math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)
    significant = f.p is None or (math.isfinite(f.p) and f.p < alpha)
    if excludes and significant:
        return "better" if d.value * f.direction > 0 else "worse"
    return "no difference"


def _rate_figure(key, group, label, direction, xa: np.ndarray, xb: np.ndarray, opts: dict,
                 note: str = "") -> PairedFigure:
    """A paired rate: xa, xb (n,) bool per image (e.g. correct), over the same images."""
    xa, xb = np.asarray(xa, bool), np.asarray(xb, bool)
    n = len(xa)
    bb, cc = int((xa & ~xb).sum()), int((~xa & xb).sum())
    diff, lo, hi, _ = paired_bootstrap((xa.astype(float), xb.astype(float)), lambda x: x.mean(axis=1), 1,
                                       opts["n_boot"], opts["seed"], opts["alpha"])
    p = mcnemar_exact(bb, cc) if n else NAN
    return PairedFigure(key, group, label, direction, _rate_est(xa), _rate_est(xb),
                        Estimate(diff, lo, hi, n, note=f"discordant: {bb} baseline only, {cc} candidate only"),
                        "McNemar exact", p, float(min(bb, cc)), (bb, cc), note=note)


def _median_est(x: np.ndarray, opts: dict) -> Estimate:
    x = x[np.isfinite(x)]
    if x.size < opts["min_n"]:
        return Estimate(NAN, n=int(x.size), too_small=True, note=f"too small (n={x.size} < {opts['min_n']})")
    lo, hi = bootstrap_ci(x, lambda a: np.median(a, axis=1), n_boot=opts["n_boot"], seed=opts["seed"],
                          vectorized=True)
    return Estimate(float(np.median(x)), lo, hi, int(x.size))


def _median_figure(key, group, label, direction, va: np.ndarray, vb: np.ndarray, opts: dict) -> PairedFigure:
    """Paired medians of a per-image score over the images where both are defined."""
    ok = np.isfinite(va) & np.isfinite(vb)
    a, b = va[ok], vb[ok]
    n = int(ok.sum())
    note = f"images where both are defined (of {len(va)})"
    if n < opts["min_n"]:
        small = Estimate(NAN, n=n, too_small=True, note=f"too small (n={n} < {opts['min_n']})")
        return PairedFigure(key, group, label, direction, _median_est(a, opts), _median_est(b, opts), small,
                            "Wilcoxon signed-rank", None, None, None, "too small", note)
    diff, lo, hi, _ = paired_bootstrap((a, b), lambda x: np.median(x, axis=1), 1, opts["n_boot"], opts["seed"],
                                       opts["alpha"])
    w, p, wnote = wilcoxon_p(b - a)
    return PairedFigure(key, group, label, direction, _median_est(a, opts), _median_est(b, opts),
                        Estimate(diff, lo, hi, n, note=wnote), "Wilcoxon signed-rank", p, w, None, note=note)


def _ece_w(conf: np.ndarray, ok: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """ECE (b,) of each row of (b, n) confidences and correctness (Guo et al. 2017; the binning of
    `audit.stats.expected_calibration_error`: equal-width bins of [0, 1], the last closed)."""
    b, n = conf.shape
    idx = np.clip(np.digitize(conf, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]), 0, n_bins - 1)
    flat = (idx + n_bins * np.arange(b)[:, None]).ravel()
    sums = np.bincount(flat, weights=(ok - conf).ravel(), minlength=b * n_bins).reshape(b, n_bins)
    return np.abs(sums).sum(axis=1) / n


def _ece_figure(ca, oka, cb, okb, opts: dict) -> PairedFigure:
    keep = np.isfinite(ca) & np.isfinite(cb)
    ca, cb, oka, okb = ca[keep], cb[keep], oka[keep].astype(float), okb[keep].astype(float)
    n = int(keep.sum())
    if n < opts["min_n"]:
        small = Estimate(NAN, n=n, too_small=True, note=f"too small (n={n})")
        return PairedFigure("ece", "calibration", "ECE (10 bins)", -1, small, small, small, "bootstrap", None,
                            verdict="too small")
    diff, lo, hi, p = paired_bootstrap((ca, oka, cb, okb), _ece_w, 2, opts["n_boot"], opts["seed"], opts["alpha"])

    def one(c, k):
        lo_, hi_ = bootstrap_ci((c, k), _ece_w, n_boot=opts["n_boot"], seed=opts["seed"], vectorized=True)
        return Estimate(float(_ece_w(c[None], k[None])[0]), lo_, hi_, n)
    return PairedFigure("ece", "calibration", "ECE (10 bins)", -1, one(ca, oka), one(cb, okb),
                        Estimate(diff, lo, hi, n), "bootstrap (CI inversion)", p)


def _auroc_figure(y, sa, sb, opts: dict, pos: str) -> PairedFigure:
    ok = np.isfinite(sa) & np.isfinite(sb)
    y, sa, sb = y[ok], sa[ok], sb[ok]
    n = int(ok.sum())
    m, k = int(y.sum()), int((~y).sum())
    split = f"n_pos={m}, n_neg={k}"
    if min(m, k) < opts["min_n"]:
        small = Estimate(NAN, n=n, too_small=True, note=f"too small ({split}; min_n={opts['min_n']})")
        return PairedFigure("auroc", "performance", f"AUROC ({pos})", 1, small, small, small, "DeLong",
                            verdict="too small", note=split)
    d = delong_paired(y, sa, sb, opts["alpha"])
    z = float(_sps.norm.ppf(1 - opts["alpha"] / 2))

    def one(a, se):
        return Estimate(a, max(0.0, a - z * se), min(1.0, a + z * se), n, note=split)
    return PairedFigure("auroc", "performance", f"AUROC ({pos})", 1, one(d["auc_a"], d["se_a"]),
                        one(d["auc_b"], d["se_b"]), Estimate(d["diff"], d["lo"], d["hi"], n, note=split),
                        "DeLong", d["p"], d["z"], note=split)


def _col(df: pd.DataFrame, c: str) -> np.ndarray:
    return pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) if c in df else np.full(len(df), np.nan)


def compare_inputs(a, b, gates: dict | None = None, n_boot: int | None = None, seed: int | None = None,
                   alpha: float = 0.05, min_n: int | None = None) -> Comparison:
    """The paired comparison of two loaded audits (`audit.report.read_out_dir`): baseline a, candidate b.
    n_boot, seed, min_n: default to the baseline audit's options (1000, 0, 10)."""
    check_comparable(a, b)
    opts = {"n_boot": int(n_boot if n_boot is not None else a.option("n_boot", 1000)),
            "seed": int(seed if seed is not None else a.option("seed", 0)),
            "min_n": int(min_n if min_n is not None else a.option("min_n", 10)), "alpha": float(alpha)}
    notes: list[str] = []
    ids = a.per_image["image_id"].astype(str).to_numpy()
    da = a.per_image.reset_index(drop=True)
    db = b.per_image.set_index(b.per_image["image_id"].astype(str)).loc[ids].reset_index(drop=True)
    n = len(ids)
    pos = a.positive
    y = (da["label"].astype(str) == pos).to_numpy() if pos else None
    figs: list[PairedFigure] = []
    ca, cb = da["correct"].to_numpy(bool), db["correct"].to_numpy(bool)
    figs.append(_rate_figure("accuracy", "performance", "accuracy", 1, ca, cb, opts))
    if pos:
        pa, na = operating_predictions(a)
        pb, nb = operating_predictions(b)
        notes += na + nb
        order_b = pd.Series(np.arange(len(b.per_image)), index=b.per_image["image_id"].astype(str)).loc[ids].to_numpy()
        points = [k for k in pa if k in pb]
        for k in [k for k in list(pa) + list(pb) if k not in points]:
            notes.append(f"operating point {k}: in only one audit, not compared")
        for k in sorted(points, key=lambda s: (s == "top-1", s)):
            xa, xb = pa[k], pb[k][order_b]
            figs.append(_rate_figure(f"sensitivity@{k}", "performance", f"sensitivity @{k}", 1,
                                     xa[y], xb[y], opts, note=f"{pos} images"))
            figs.append(_rate_figure(f"specificity@{k}", "performance", f"specificity @{k}", 1,
                                     ~xa[~y], ~xb[~y], opts, note=f"non-{pos} images"))
        sa, _ = class_score(da, pos)
        sb, _ = class_score(db, pos)
        figs.append(_auroc_figure(y, sa, sb, opts, pos))
    else:
        notes.append("no positive class (run.positive_class / --positive): no sensitivity, specificity or AUROC")
    for r, kind in a.kinds.items():
        if kind == "target":
            figs.append(_median_figure(f"target_share[{r}]", "regions", f"median share: {r}", 1,
                                       _col(da, f"frac_{r}"), _col(db, f"frac_{r}"), opts))
    for r, kind in a.kinds.items():
        if kind == "artifact":
            figs.append(_median_figure(f"lift[{r}]", "regions", f"median lift: {r}", -1,
                                       _col(da, f"lift_{r}"), _col(db, f"lift_{r}"), opts))
    cfa = a.summary.counterfactual.regions if a.summary.counterfactual is not None else {}
    cfb = b.summary.counterfactual.regions if b.summary.counterfactual is not None else {}
    for r in [r for r in a.kinds if r in cfa and r in cfb]:
        fa, fb = _col(da, f"cf_flip_{r}"), _col(db, f"cf_flip_{r}")
        ok = np.isfinite(fa) & np.isfinite(fb)
        if ok.sum() < opts["min_n"]:
            small = Estimate(NAN, n=int(ok.sum()), too_small=True, note=f"too small (n={int(ok.sum())})")
            figs.append(PairedFigure(f"flip_rate[{r}]", "counterfactual", f"flips w/o {r}", -1, small, small,
                                     small, "McNemar exact", verdict="too small"))
            continue
        figs.append(_rate_figure(f"flip_rate[{r}]", "counterfactual", f"flips w/o {r}", -1,
                                 fa[ok] == 1.0, fb[ok] == 1.0, opts, note=f"images tested in both (of {n})"))
    if cfa and cfb:
        pass
    elif cfa or cfb:
        notes.append("counterfactual check ran in one audit only (--counterfactual): flip rates not compared")
    figs.append(_ece_figure(_col(da, "confidence"), ca, _col(db, "confidence"), cb, opts))
    hc = float(a.option("high_conf", 0.9))
    hb = float(b.option("high_conf", 0.9))
    if hb != hc:
        notes.append(f"high-confidence threshold differs ({hc} vs {hb}): both counted at the baseline's {hc}")
    ha = (~ca) & (_col(da, "confidence") >= hc)
    hbb = (~cb) & (_col(db, "confidence") >= hc)
    figs.append(_rate_figure("high_conf_error_rate", "calibration", f"wrong, conf ≥ {hc:g}", -1, ha, hbb,
                             opts))
    for f in figs:
        if f.verdict != "too small":
            f.verdict = _verdict(f, alpha, opts["min_n"])
    vague = [f"{f.key} ({f.verdict}, n={f.difference.n})" for f in figs if f.verdict in ("too small", "undefined")]
    if vague:
        warnings.warn(f"compare: no paired difference for {', '.join(vague)}", UndefinedMetricWarning, stacklevel=2)
    changes, pairs = _changes(a, da, db)
    gate_res, verdict = evaluate_compare_gates(gates or {}, figs)
    return Comparison(baseline=_describe(a), candidate=_describe(b),
                      data={"n": n, "classes": list(a.classes), "positive": pos, "regions": dict(a.kinds),
                            "split": a.summary.data.split, "manifest": a.summary.data.manifest},
                      method={**opts, "difference": "candidate − baseline",
                              "ci": "paired percentile bootstrap (DeLong normal CI for AUROC)",
                              "verdict_rule": f"better/worse when the CI excludes 0 and p < {alpha}"},
                      figures=figs, changes=changes, gates=gate_res, verdict=verdict, per_image=pairs, notes=notes)


def _describe(inp) -> dict:
    run = inp.summary.run
    return {"name": inp.run_name, "audit_dir": str(inp.out_dir), "model": run.model,
            "checkpoint_sha256": run.checkpoint_sha256, "n": int(len(inp.per_image)),
            "audit_verdict": inp.summary.verdict}


def _changes(a, da: pd.DataFrame, db: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Per-image changes: prediction changed; maps moved off the target (target share ≥ the off-target rule's
    floor in the baseline, below it in the candidate) or back on; onto an artifact (no artifact lift above the
    rule's alarm in the baseline, one in the candidate) or off. Each a Wilson rate over the images where the
    scores are defined in both."""
    floor = float(a.option("off_target_frac", 0.3))
    alarm = float(a.option("artifact_lift", 3.0))
    ca, cb = da["correct"].to_numpy(bool), db["correct"].to_numpy(bool)
    pairs = pd.DataFrame({"image_id": da["image_id"].astype(str), "label": da["label"].astype(str),
                          "pred_baseline": da["pred"].astype(str), "pred_candidate": db["pred"].astype(str),
                          "correct_baseline": ca, "correct_candidate": cb,
                          "confidence_baseline": _col(da, "confidence"), "confidence_candidate": _col(db, "confidence")})
    out: dict = {"prediction_changed": _rate_est(pairs["pred_baseline"] != pairs["pred_candidate"]).to_dict(),
                 "fixed": _rate_est(~ca & cb).to_dict(), "broken": _rate_est(ca & ~cb).to_dict(),
                 "rule": {"target_frac_below": floor, "artifact_lift_above": alarm}}
    targets = [r for r, k in a.kinds.items() if k == "target"]
    arts = [r for r, k in a.kinds.items() if k == "artifact"]
    if targets:
        fa = np.column_stack([_col(da, f"frac_{r}") for r in targets])
        fb = np.column_stack([_col(db, f"frac_{r}") for r in targets])
        ok = np.isfinite(fa).all(1) & np.isfinite(fb).all(1)
        offa, offb = (fa < floor).any(1), (fb < floor).any(1)
        out["moved_off_target"] = _rate_est((~offa & offb)[ok]).to_dict()
        out["moved_on_target"] = _rate_est((offa & ~offb)[ok]).to_dict()
        for r, i in zip(targets, range(len(targets))):
            pairs[f"dfrac_{r}"] = fb[:, i] - fa[:, i]
    if arts:
        la = np.column_stack([_col(da, f"lift_{r}") for r in arts])
        lb = np.column_stack([_col(db, f"lift_{r}") for r in arts])
        ok = (np.isfinite(la) & np.isfinite(lb)).any(1)
        ona, onb = (np.nan_to_num(la, nan=0) > alarm).any(1), (np.nan_to_num(lb, nan=0) > alarm).any(1)
        out["moved_onto_artifact"] = _rate_est((~ona & onb)[ok]).to_dict()
        out["moved_off_artifact"] = _rate_est((ona & ~onb)[ok]).to_dict()
        dfr = np.column_stack([_col(db, f"frac_{r}") - _col(da, f"frac_{r}") for r in arts])
        for r, i in zip(arts, range(len(arts))):
            pairs[f"dfrac_{r}"] = dfr[:, i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            best = np.nanmax(np.where(np.isfinite(dfr), dfr, -np.inf), axis=1)
        pairs["artifact_move"] = np.where(np.isfinite(best), best, np.nan)
        pairs["artifact_moved_to"] = [arts[int(j)] if np.isfinite(v) else "" for j, v in
                                      zip(np.argmax(np.where(np.isfinite(dfr), dfr, -np.inf), axis=1), best)]
    return out, pairs


# ----------------------------------------------------------------------------------------------------------------
# gates

def parse_gates(items: Sequence[str] | dict | None) -> dict[str, float]:
    """Gates from `NAME=MARGIN` strings (the CLI's --gate) or a mapping; ConfigError naming the gate for an
    unknown name or a margin that is not a number ≥ 0. `NAME[sub]` restricts a gate on operating points or
    regions to one of them (max_sensitivity_drop[0.90], max_lift_increase[ruler])."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, dict) else [tuple(s.split("=", 1)) if "=" in s else (s, None)
                                                           for s in items]
    out: dict[str, float] = {}
    for name, v in pairs:
        name = str(name).strip()
        base = name.split("[", 1)[0] if name.endswith("]") else name
        if base not in GATES or (base != name and not GATES[base][0].endswith(("@", "["))):
            raise ConfigError(f"compare gate {name!r}: unknown; expected one of {', '.join(GATES)} (those on an "
                              "operating point or a region also as NAME[point] / NAME[region], e.g. "
                              "max_lift_increase[ruler])")
        try:
            m = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"compare gate {name}: expected NAME=MARGIN with a number, got {v!r}") from None
        if not (m >= 0 and math.isfinite(m)):
            raise ConfigError(f"compare gate {name}: expected a margin ≥ 0, got {v!r}")
        out[name] = m
    return out


def read_gates_file(path: str | Path) -> dict[str, float]:
    """Gates from a YAML file: a mapping of gate names to margins, at the top level or under `gates:`.
    ConfigError naming the file when it cannot be read or is not such a mapping (or a gate is bad)."""
    import yaml
    try:
        d = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--gates {path}: cannot read ({type(e).__name__})") from None
    d = d.get("gates", d) if isinstance(d, dict) else d
    if not isinstance(d, dict):
        raise ConfigError(f"--gates {path}: expected a mapping of gate names to margins, e.g. "
                          "'max_sensitivity_drop: 0.02'")
    return parse_gates(d)


def evaluate_compare_gates(gates: dict[str, float], figures: Sequence[PairedFigure]) -> tuple[list[GateResult], str]:
    """(results, verdict). A gate applies to every figure whose key starts with its prefix (one result per
    operating point or region). It passes when the CI bound on the bad side clears the margin: side "lo":
    lo ≥ −margin; side "hi": hi ≤ margin. A too-small or NaN bound is "undefined". Verdict over the results that
    decide: "fail" when any fails, else "inconclusive" when any is undefined (or none decides), else "pass"; "none"
    without gates. A too-small figure of a gate spread over several regions or points does not decide."""
    res: list[GateResult] = []
    for name, margin in parse_gates(gates).items():
        only = name[name.index("[") + 1:-1] if name.endswith("]") else None
        name = name.split("[", 1)[0] if only is not None else name
        prefix, side = GATES[name]
        hits = [f for f in figures if (f.key == prefix or (prefix.endswith(("@", "[")) and f.key.startswith(prefix)))]
        if only is not None:
            hits = [f for f in hits if f.key[len(prefix):].rstrip("]") == only]
        if not hits:
            fig = prefix if only is None else f"{prefix}{only}" + ("]" if prefix.endswith("[") else "")
            res.append(GateResult(name if only is None else f"{name}[{only}]", fig, margin, side, NAN, NAN,
                                  "undefined", "figure not measured"))
            continue
        for f in hits:
            d = f.difference
            bound = d.lo if side == "lo" else d.hi
            sub = f.key[len(prefix):].rstrip("]") if prefix.endswith(("@", "[")) else ""
            gname = f"{name}[{sub}]" if sub else name
            if d.too_small or not math.isfinite(bound):
                # a gate spread over every region (or point) does not let a too-small one decide, unless all are:
                # rare artifacts would otherwise make every verdict inconclusive; named alone (NAME[region]) it does
                spread = only is None and len(hits) > 1 and d.too_small
                res.append(GateResult(gname, f.key, margin, side, NAN, d.value, "undefined",
                                      (f"too small (n={d.n})" if d.too_small else "no CI")
                                      + ("; not deciding (name it as NAME[region] to make it decide)" if spread
                                         else ""), decides=not spread))
                continue
            ok = bound >= -margin if side == "lo" else bound <= margin
            note = (f"lower bound {bound:+.3f} {'≥' if ok else '<'} −{margin:g}" if side == "lo"
                    else f"upper bound {bound:+.3f} {'≤' if ok else '>'} {margin:g}")
            res.append(GateResult(gname, f.key, margin, side, bound, d.value, "pass" if ok else "fail", note))
    if not res:
        return res, "none"
    st = {g.status for g in res if g.decides}
    return res, "fail" if "fail" in st else "inconclusive" if "undefined" in st or not st else "pass"


def compare_audits(baseline_dir, candidate_dir, gates: dict | Sequence[str] | None = None, **kw) -> Comparison:
    """Read two audit folders and compare them (`compare_inputs`). Raises RunDirError for a missing or unreadable
    file, ComparisonError for audits of different images, labels, classes or regions."""
    a, b = _load(baseline_dir), _load(candidate_dir)
    c = compare_inputs(a, b, gates=parse_gates(gates), **kw)
    c.inputs = (a, b)
    return c
