"""Operating points for the safety-critical class, and the ISIC challenge classification metrics.

Operating points: a threshold t on P(positive) (e.g. P(melanoma)) is tuned on a validation split to reach a
target sensitivity on images it was not tuned on (`tune_threshold(held_out=True)`), then the audited split is scored at p ≥ t: sensitivity, specificity, PPV and NPV, each with its
counts and a Wilson CI (`audit.stats.proportion_ci`). Without a validation split the threshold is cross-fitted on
the audited split (tuned on K−1 stratified folds, applied to the held-out fold), and the result says so.

ISIC metrics:
  * balanced multi-class accuracy = mean over classes (present in the truth) of per-class recall
    (= sklearn.metrics.balanced_accuracy_score), the ISIC 2018 Task 3 / ISIC 2019 ranking metric;
  * per-class one-vs-rest ROC AUC;
  * two different "partial AUC above 80 % sensitivity" figures, which must not be confused:
    - `partial_auc_above_sensitivity`: the band ∫ max(TPR − 0.8, 0) dFPR, range [0, 0.2] (perfect 0.2,
      chance 0.02): the ISIC 2024 (SLICE-3D, Kaggle) pAUC, computed there as roc_auc_score(max_fpr=0.2) on
      the flipped problem with the McClish standardisation undone;
    - `auc_above_sensitivity`: the "AUC, Sens > 80%" of github.com/ImageMarkup/isic-challenge-scoring
      (`isic_challenge_scoring/classification/metrics.py::auc_above_sensitivity`; ISIC 2018–2020 leaderboards):
      the area under the whole ROC curve (down to TPR = 0) over the FPR range where TPR ≥ 0.8, range
      [0, 1] (perfect 1.0, chance 0.18). They relate as auc_above = band + 0.8·(1 − FPR*), FPR* the FPR at
      which the (interpolated) ROC first reaches TPR = 0.8.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from sklearn.metrics import auc as _trapezoid_auc
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold

from .errors import UndefinedMetricWarning
from .stats import (NAN, Estimate, _as_bool_1d, _as_float_1d, _counts, _index_chunks, _percentile_ci,
                    _same_length, proportion_ci)

__all__ = ["class_score", "prob_from_logodds", "fmt_threshold", "tune_threshold", "operating_points",
           "balanced_accuracy", "per_class_auc",
           "partial_auc_above_sensitivity", "auc_above_sensitivity", "isic_metrics", "TUNING_VALIDATION", "TUNING_CROSS_FIT",
           "THRESHOLD_RULE"]

TUNING_VALIDATION = "validation split"
TUNING_CROSS_FIT = "cross-fit on audited split (no validation split)"


def _undefined(msg: str) -> None:
    warnings.warn(msg, UndefinedMetricWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------------------
# operating points

def class_score(df, cls: str) -> tuple[np.ndarray, str]:
    """The per-image score ranked for class `cls` in a per_image table: its log-odds column `logodds_<cls>` (float64,
    from the logits: does not saturate) when present, else the probability `p_<cls>` (audits written before the
    column existed). Returns (scores (n,) float64, "logodds" | "probability"); KeyError when neither is there."""
    if f"logodds_{cls}" in df:
        return np.asarray(df[f"logodds_{cls}"], dtype=np.float64), "logodds"
    return np.asarray(df[f"p_{cls}"], dtype=np.float64), "probability"


def prob_from_logodds(t) -> float:
    """σ(t) = 1 / (1 + e^−t) in float64 (NaN stays NaN)."""
    t = float(t)
    return float(np.exp(-np.logaddexp(0.0, -t))) if np.isfinite(t) else (t if np.isnan(t) else float(t > 0))


def fmt_threshold(t, logodds=None) -> str:
    """A probability threshold for people: 3 decimals in [0.001, 0.999]; nearer 0 or 1 the distance to it in
    scientific notation ("1 − 4.2e-04"), so that thresholds tuned on a saturated model do not all read 1.000
    while their sensitivities differ; "n/a" for None / NaN. With `logodds` (the same threshold as log p/(1−p))
    the distance comes from it, exact where the probability itself has rounded to 1.0 ("1 − 3.1e-19")."""
    try:
        t = float(t)
    except (TypeError, ValueError):
        return "n/a"
    if not np.isfinite(t):
        return "n/a"
    try:
        lo = float(logodds) if logodds is not None else math.nan
    except (TypeError, ValueError):
        lo = math.nan
    if math.isfinite(lo) and abs(lo) > math.log(999.0):     # p > 0.999 or p < 0.001
        tail = float(np.exp(-np.logaddexp(0.0, abs(lo))))        # min(p, 1 − p) without cancellation
        return f"1 − {tail:.1e}" if lo > 0 else f"{tail:.1e}"
    if 0.999 < t < 1.0:
        return f"1 − {1.0 - t:.1e}"
    if 0.0 < t < 0.001:
        return f"{t:.1e}"
    return f"{t:.3f}"


def tune_threshold(p_pos_val, y_pos_val, target_sensitivity: float, held_out: bool = False) -> float:
    """A threshold t on the score: predicted positive when p ≥ t.

    p_pos_val: (n,) finite scores, P(positive class). y_pos_val: (n,) bool, truly positive.
    target_sensitivity in (0, 1]. With P positives sorted descending s(1) ≥ … ≥ s(P), t = s(k):
      * held_out=False (in-sample): k = ⌈target·P⌉, the largest t with sensitivity(p ≥ t) ≥ target on these data;
      * held_out=True (the threshold will be applied to other images): k = ⌈target·(P+1)⌉, capped at P. A new
        positive, exchangeable with the P tuning ones, scores ≥ s(k) with probability k/(P+1) ≥ target (no ties),
        the finite-sample quantile of split-conformal prediction (Vovk, Gammerman & Shafer 2005; Angelopoulos &
        Bates 2021, arXiv:2107.07511). The in-sample rank gives only ⌈target·P⌉/(P+1) on new images: 16/21 = 0.76
        at target 0.80 with P = 20, the shortfall a perfectly separating model showed (#26).
    No positives → NaN and an UndefinedMetricWarning.
    """
    p = _as_float_1d("p_pos_val", p_pos_val, allow_nan=False)
    y = _as_bool_1d("y_pos_val", y_pos_val)
    _same_length(p_pos_val=p, y_pos_val=y)
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity: expected a value in (0, 1], got {target_sensitivity}")
    pos = np.sort(p[y])[::-1]
    if pos.size == 0:
        _undefined("tune_threshold: the tuning data hold no positives; the threshold is NaN")
        return NAN
    m = pos.size + 1 if held_out else pos.size
    k = int(np.ceil(target_sensitivity * m - 1e-9))   # tolerance: 0.7 * 10 = 7.000000000000001
    return float(pos[min(max(k, 1), pos.size) - 1])


def _confusion(pred: np.ndarray, y: np.ndarray) -> dict[str, int]:
    return {"tp": int((pred & y).sum()), "fn": int((~pred & y).sum()),
            "tn": int((~pred & ~y).sum()), "fp": int((pred & ~y).sum())}


def _rates(cm: dict[str, int] | None, alpha: float) -> dict:
    """Counts plus sensitivity, specificity, PPV, NPV as Estimate dicts (Wilson CIs); all NaN when cm is None."""
    if cm is None:
        nan = Estimate(NAN, note="no threshold").to_dict()
        return {"tp": None, "fn": None, "tn": None, "fp": None,
                "sensitivity": nan, "specificity": dict(nan), "ppv": dict(nan), "npv": dict(nan)}
    tp, fn, tn, fp = cm["tp"], cm["fn"], cm["tn"], cm["fp"]
    return {**cm,
            "sensitivity": proportion_ci(tp, tp + fn, alpha).to_dict(),
            "specificity": proportion_ci(tn, tn + fp, alpha).to_dict(),
            "ppv": proportion_ci(tp, tp + fp, alpha).to_dict(),
            "npv": proportion_ci(tn, tn + fn, alpha).to_dict()}


THRESHOLD_RULE = ("each threshold is the k-th highest score of the P tuning positives, k = ⌈target·(P+1)⌉: the "
                  "highest expected to reach the target sensitivity on images it was not tuned on, so a model "
                  "better than the target reads about the target there, below its top-1 (argmax) sensitivity, "
                  "by design")


def operating_points(p_pos_audit, y_pos_audit, p_pos_val=None, y_pos_val=None,
                     targets: Sequence[float] = (0.80, 0.90, 0.95), y_pred_top1_pos=None,
                     cross_fit_folds: int = 5, seed: int = 0, alpha: float = 0.05,
                     positive_name: str = "positive") -> dict:
    """Sensitivity-targeted operating points of the positive (safety-critical) class on the audited split.

    p_pos_*: (n,) P(positive); y_pos_*: (n,) bool truth. y_pred_top1_pos: (n,) bool, the argmax prediction is
    the positive class (adds the top-1 operating point). Predicted positive means p ≥ t. positive_name: the
    class's name, for the notes.
    Tuning: `tune_threshold(held_out=True)` (every threshold is applied to images it was not tuned on), with
    (p_pos_val, y_pos_val) on the validation split. Without, the threshold is cross-fitted on the audited split:
    StratifiedKFold(K = min(cross_fit_folds, n_pos), shuffle, seed), each fold scored with the threshold tuned on
    the other K−1 folds; a UserWarning is raised and `warning` says so. No positives to tune on (a validation
    split without any; no validation split and fewer than 2 audited positives): every threshold and rate NaN, an
    UndefinedMetricWarning, and `warning` says that the thresholds cannot be tuned.
    Returns a JSON-able dict:
      tuning: "validation split" | "cross-fit on audited split (no validation split)"; warning: str | None;
      folds: K (cross-fit) | None; rule: `THRESHOLD_RULE`; n, n_pos, n_neg: audited counts;
      points: [{target_sensitivity, threshold, fold_thresholds (cross-fit: one per fold, threshold = their
               median; validation: None), tp, fn, tn, fp, sensitivity, specificity, ppv, npv}, ...] where each
               rate is an Estimate dict (value, lo, hi (Wilson), n, too_small, p, note);
      top1: None | {tp, fn, tn, fp, sensitivity, specificity, ppv, npv}.
    Rates with an empty denominator (e.g. PPV with no predicted positives) are NaN with a warning.
    """
    p = _as_float_1d("p_pos_audit", p_pos_audit, allow_nan=False)
    y = _as_bool_1d("y_pos_audit", y_pos_audit)
    _same_length(p_pos_audit=p, y_pos_audit=y)
    if (p_pos_val is None) != (y_pos_val is None):
        raise ValueError("p_pos_val and y_pos_val: pass both (validation scores and truth) or neither")
    for t in targets:
        if not 0 < t <= 1:
            raise ValueError(f"targets: expected sensitivities in (0, 1], got {t}")
    if int(cross_fit_folds) < 2:
        raise ValueError(f"cross_fit_folds: expected an integer >= 2, got {cross_fit_folds}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    result: dict = {"tuning": TUNING_VALIDATION, "warning": None, "folds": None, "rule": THRESHOLD_RULE,
                    "n": len(y), "n_pos": n_pos, "n_neg": n_neg, "points": [], "top1": None}

    def undefined(msg: str) -> None:
        result["warning"] = msg
        _undefined(f"operating_points: {msg}; thresholds and rates are NaN")
        for target in targets:
            result["points"].append({"target_sensitivity": float(target), "threshold": NAN,
                                     "fold_thresholds": None if p_pos_val is not None else [],
                                     **_rates(None, alpha)})

    if p_pos_val is not None:
        pv = _as_float_1d("p_pos_val", p_pos_val, allow_nan=False)
        yv = _as_bool_1d("y_pos_val", y_pos_val)
        _same_length(p_pos_val=pv, y_pos_val=yv)
        if int(yv.sum()) == 0:
            undefined(f"no positives of class {positive_name} among the {len(yv)} validation images: "
                      "thresholds cannot be tuned")
        else:
            for target in targets:
                t = tune_threshold(pv, yv, target, held_out=True)
                result["points"].append({"target_sensitivity": float(target), "threshold": t,
                                         "fold_thresholds": None, **_rates(_confusion(p >= t, y), alpha)})
    elif n_pos < 2:
        result["tuning"] = TUNING_CROSS_FIT
        undefined((f"no positives of class {positive_name} among the {len(y)} audited images" if n_pos == 0 else
                   f"1 positive of class {positive_name} among the {len(y)} audited images (cross-fitting needs "
                   "at least 2)") + " and no validation split: thresholds cannot be tuned")
    else:
        k = min(int(cross_fit_folds), n_pos)
        fewer = (f", not {int(cross_fit_folds)}: only {n_pos} positives of class {positive_name}"
                 if k < int(cross_fit_folds) else "")
        msg = ("no validation split (none named val, valid or validation): thresholds are tuned by cross-fitting on "
               "the audited split "
               f"({k}-fold stratified{fewer}; each fold scored with the threshold tuned on the others); "
               "less biased than tuning and scoring on the same images, noisier than a held-out validation split")
        result["tuning"], result["warning"], result["folds"] = TUNING_CROSS_FIT, msg, k
        warnings.warn(msg, UserWarning, stacklevel=2)
        with warnings.catch_warnings():      # few negatives: sklearn warns; irrelevant to tuning
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            folds = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
                         .split(np.zeros((len(y), 1)), y))
        for target in targets:
            pred = np.zeros(len(y), bool)
            fold_t = []
            for train, test in folds:
                t = tune_threshold(p[train], y[train], target, held_out=True)
                fold_t.append(t)
                pred[test] = p[test] >= t
            result["points"].append({"target_sensitivity": float(target), "threshold": float(np.median(fold_t)),
                                     "fold_thresholds": fold_t, **_rates(_confusion(pred, y), alpha)})

    if y_pred_top1_pos is not None:
        top1 = _as_bool_1d("y_pred_top1_pos", y_pred_top1_pos)
        _same_length(y_pos_audit=y, y_pred_top1_pos=top1)
        result["top1"] = _rates(_confusion(top1, y), alpha)
    return result


# ----------------------------------------------------------------------------------------------------------------
# ISIC challenge metrics

def _check_multiclass(y_true_idx, probs, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray(y_true_idx)
    P = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    if P.ndim != 2 or P.shape[1] != len(classes):
        raise ValueError(f"probs: expected shape (n, {len(classes)}) (one column per class), got {P.shape}")
    if y.ndim != 1 or len(y) != len(P):
        raise ValueError(f"y_true_idx: expected shape ({len(P)},) matching probs, got {y.shape}")
    if not np.isfinite(P).all():
        raise ValueError("probs: contains NaN or inf; expected finite scores")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"y_true_idx: expected integer class indices in [0, {len(classes)}), "
                         f"got dtype {y.dtype}, range [{y.min()}, {y.max()}]")
    return y.astype(np.int64), P, classes


def balanced_accuracy(y_true, y_pred) -> float:
    """Balanced multi-class accuracy: mean over the classes present in y_true of recall (TP_c / n_c).

    ISIC 2018 Task 3 / ISIC 2019 ranking metric; equals sklearn.metrics.balanced_accuracy_score.
    y_true, y_pred: (n,) labels (any hashable dtype). Range [0, 1]. Empty input → NaN and a warning.
    """
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if yt.shape != yp.shape or yt.ndim != 1:
        raise ValueError(f"y_true, y_pred: expected equal 1-D shapes, got {yt.shape} and {yp.shape}")
    if yt.size == 0:
        _undefined("balanced_accuracy: empty input; NaN")
        return NAN
    labels, inv = np.unique(yt, return_inverse=True)
    hit = (yt == yp).astype(np.float64)
    recall = np.bincount(inv, weights=hit, minlength=len(labels)) / np.bincount(inv, minlength=len(labels))
    return float(recall.mean())


def per_class_auc(y_true_idx, probs, classes: Sequence[str]) -> dict[str, float]:
    """One-vs-rest ROC AUC per class: {class: roc_auc_score(y_true_idx == c, probs[:, c])}.

    y_true_idx: (n,) int class indices into `classes`; probs: (n, C) scores. A class absent from (or the only
    class of) y_true has no AUC: NaN and an UndefinedMetricWarning.
    """
    y, P, classes = _check_multiclass(y_true_idx, probs, classes)
    out: dict[str, float] = {}
    for c, name in enumerate(classes):
        pos = y == c
        if pos.all() or not pos.any():
            _undefined(f"per_class_auc: class {name!r} has {int(pos.sum())} of {len(y)} samples; "
                       "one-vs-rest AUC undefined (NaN)")
            out[name] = NAN
        else:
            out[name] = float(roc_auc_score(pos, P[:, c]))
    return out


def partial_auc_above_sensitivity(y_true_bin, score, min_tpr: float = 0.80) -> float:
    """Unnormalised partial ROC AUC of the band TPR ≥ min_tpr (the ISIC 2024 / SLICE-3D pAUC).

    Definition: the area of {(FPR, TPR): min_tpr ≤ TPR ≤ ROC(FPR)} = ∫₀¹ max(ROC(f) − min_tpr, 0) df, the ROC
    curve being sklearn's piecewise-linear one (ties give diagonal segments). Range [0, 1 − min_tpr]:
    a perfect classifier scores 1 − min_tpr (0.2 at 0.80), the chance diagonal (1 − min_tpr)² / 2 (0.02).
    Not McClish-standardised (unlike roc_auc_score(max_fpr=...)), and not the isic-challenge-scoring
    "AUC, Sens > 80%" of ISIC 2018–2020 (see `auc_above_sensitivity`, which adds min_tpr·(1 − FPR*)).
    Computed as the ISIC 2024 scoring does: flip the axes (negatives become the positive class, scores
    reversed), so the ROC becomes (1 − TPR, 1 − FPR) and the band is the area under the flipped curve for
    flipped-FPR ≤ 1 − min_tpr; the curve is cut at that FPR by linear interpolation and integrated with the
    trapezoidal rule (sklearn's partial area for max_fpr, before its McClish standardisation).
    y_true_bin: (n,) bool; score: (n,) finite, higher = more positive. One class only → NaN and a warning.
    """
    y = _as_bool_1d("y_true_bin", y_true_bin)
    s = _as_float_1d("score", score, allow_nan=False)
    _same_length(y_true_bin=y, score=s)
    if not 0 <= min_tpr <= 1:
        raise ValueError(f"min_tpr: expected a value in [0, 1], got {min_tpr}")
    if y.all() or not y.any():
        _undefined(f"partial_auc_above_sensitivity: {int(y.sum())} positives of {len(y)}; ROC undefined (NaN)")
        return NAN
    if min_tpr == 0:
        return float(roc_auc_score(y, s))
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = roc_curve(~y, -s)                    # flipped axes
    stop = int(np.searchsorted(fpr, max_fpr, "right"))
    x_interp, y_interp = [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]]
    tpr = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr = np.append(fpr[:stop], max_fpr)
    return float(_trapezoid_auc(fpr, tpr))


def auc_above_sensitivity(y_true_bin, score, min_tpr: float = 0.80) -> float:
    """"AUC, Sens > 80%" as isic-challenge-scoring computes it (ISIC 2018 Task 3, 2019, 2020 leaderboards).

    Definition: ∫_{FPR*}^{1} ROC(f) df, the area under the whole ROC curve (down to TPR = 0) over the FPR
    range where TPR ≥ min_tpr; FPR* is where the piecewise-linear ROC (one vertex per distinct score, i.e.
    roc_curve(drop_intermediate=False)) first reaches TPR = min_tpr, by linear interpolation.
    Range [0, 1]: a perfect classifier scores 1.0, the chance diagonal (1 − min_tpr²)/2 (0.18 at 0.80).
    Equals `partial_auc_above_sensitivity` + min_tpr·(1 − FPR*).
    y_true_bin: (n,) bool; score: (n,) finite, higher = more positive. One class only → NaN and a warning.
    """
    y = _as_bool_1d("y_true_bin", y_true_bin)
    s = _as_float_1d("score", score, allow_nan=False)
    _same_length(y_true_bin=y, score=s)
    if not 0 < min_tpr <= 1:
        raise ValueError(f"min_tpr: expected a value in (0, 1], got {min_tpr}")
    if y.all() or not y.any():
        _undefined(f"auc_above_sensitivity: {int(y.sum())} positives of {len(y)}; ROC undefined (NaN)")
        return NAN
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    j = int(np.searchsorted(tpr, min_tpr, "left"))       # first vertex with TPR >= min_tpr
    f_star = float(np.interp(min_tpr, tpr[j - 1:j + 1], fpr[j - 1:j + 1]))
    return float(_trapezoid_auc(np.r_[f_star, fpr[j:]], np.r_[min_tpr, tpr[j:]]))


class _RocSorted:
    """A score sorted once (descending, stable) with its tie blocks, for ROC areas of many resamples."""

    def __init__(self, pos: np.ndarray, score: np.ndarray):
        self.order = np.argsort(-score, kind="stable")
        ss = score[self.order]
        self.pos = pos[self.order].astype(np.float64)
        last = np.r_[ss[1:] != ss[:-1], True]
        self.ends = None if last.all() else np.flatnonzero(last)
        self.mixed = None                                  # tie blocks holding positives and negatives
        if self.ends is not None:
            n_in = np.diff(np.r_[-1, self.ends])
            n_pos_in = np.diff(np.r_[0.0, np.cumsum(self.pos)[self.ends]])
            mixed = np.flatnonzero((n_pos_in > 0) & (n_pos_in < n_in))
            self.mixed = mixed if mixed.size else None

    def _vertices(self, W: np.ndarray):
        """ROC vertices in counts: TP, FP (b, V) at the tie-block ends, ΔFP (b, V), P (b,), N (b,)."""
        ws = W[:, self.order]
        wp = ws * self.pos
        tp = np.cumsum(wp, axis=1)
        if self.ends is None:
            dfp = ws - wp
            fp = np.cumsum(dfp, axis=1)
        else:
            fp = np.cumsum(ws - wp, axis=1)[:, self.ends]
            tp = tp[:, self.ends]
            dfp = np.diff(fp, axis=1, prepend=0.0)
        return tp, fp, dfp, tp[:, -1], fp[:, -1]

    def areas(self, W: np.ndarray, min_tprs: Sequence[float], above: bool = False) -> list[np.ndarray]:
        """∫ max(ROC(f) − m, 0) df (b,) for each m in min_tprs, resamples given by multiplicities W (b, n).

        m = 0 gives the ROC AUC. ROC vertices sit at the ends of tie blocks (scores descending), joined by
        straight segments. In counts (TP, FP), a segment from (FP0, TP0) to (FP1, TP1) with a = TP0 − m·P and
        c = TP1 − m·P contributes ΔFP·max(c, 0) when it is horizontal or vertical, and
        ΔFP·(g(c) − g(a))/(c − a), g(v) = max(v, 0)²/2, when it is diagonal (a tie block holding both classes;
        exact also when it crosses m); the sum is divided by P·N.
        above=True returns `auc_above_sensitivity` instead: the band plus m·(1 − FPR*), FPR* where the ROC
        first reaches TPR = m.
        """
        return self._areas(self._vertices(W), min_tprs, above)

    def auc_band_above(self, W: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(AUC, band at m, auc_above at m), each (b,), sharing one pass over the resamples."""
        v = self._vertices(W)
        auc, band = self._areas(v, (0.0, m))
        return auc, band, band + m * (1.0 - self._f_star(v, m))

    @staticmethod
    def _f_star(v, m: float) -> np.ndarray:
        """FPR (b,) where the piecewise-linear ROC first reaches TPR = m."""
        tp, fp, _, n_pos, n_neg = v
        zero = np.zeros((len(tp), 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            T = np.concatenate([zero, tp / n_pos[:, None]], axis=1)
            F = np.concatenate([zero, fp / n_neg[:, None]], axis=1)
            j = np.clip((T < m).sum(axis=1), 1, T.shape[1] - 1)[:, None]     # first vertex with TPR >= m
            t0, t1 = np.take_along_axis(T, j - 1, 1)[:, 0], np.take_along_axis(T, j, 1)[:, 0]
            f0, f1 = np.take_along_axis(F, j - 1, 1)[:, 0], np.take_along_axis(F, j, 1)[:, 0]
            return np.where(t1 > t0, f0 + (m - t0) / np.where(t1 > t0, t1 - t0, 1.0) * (f1 - f0), f1)

    def _areas(self, v, min_tprs: Sequence[float], above: bool = False) -> list[np.ndarray]:
        tp, fp, dfp, n_pos, n_neg = v
        denom = n_pos * n_neg
        if self.mixed is not None:
            prev = np.concatenate([np.zeros((len(tp), 1)), tp[:, :-1]], axis=1)[:, self.mixed]
            tp_m, dfp_m = tp[:, self.mixed], dfp[:, self.mixed]
        out = []
        for m in min_tprs:
            c = tp - m * n_pos[:, None]
            s = np.einsum("ij,ij->i", dfp, np.maximum(c, 0.0))
            if self.mixed is not None:
                a, cm = prev - m * n_pos[:, None], tp_m - m * n_pos[:, None]
                rise = cm - a
                g = lambda x: np.maximum(x, 0.0) ** 2 / 2.0
                h = np.where(rise > 0, (g(cm) - g(a)) / np.where(rise > 0, rise, 1.0), np.maximum(a, 0.0))
                s = s + np.einsum("ij,ij->i", dfp_m, h - np.maximum(cm, 0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                area = np.where(denom > 0, s / denom, np.nan)
            if above:
                area = area + m * (1.0 - self._f_star(v, m))
            out.append(area)
        return out


def _roc_areas_weighted(W: np.ndarray, pos: np.ndarray, score: np.ndarray,
                        min_tprs: Sequence[float], above: bool = False) -> list[np.ndarray]:
    """Shorthand: _RocSorted(pos, score).areas(W, min_tprs, above)."""
    return _RocSorted(np.asarray(pos, bool), np.asarray(score, np.float64)).areas(W, min_tprs, above)


def isic_metrics(y_true_idx, probs, classes: Sequence[str], n_boot: int = 1000, seed: int = 0,
                 min_tpr: float = 0.80, min_n: int = 10, alpha: float = 0.05) -> dict:
    """The ISIC challenge classification metrics with bootstrap CIs (images resampled jointly for all of them).

    y_true_idx: (n,) int class indices; probs: (n, C) class probabilities, or any per-class scores strictly
    increasing in them such as the log-odds (prediction = argmax; the AUCs only rank); classes: C names.
    Returns a JSON-able dict:
      n, classes, min_tpr, n_per_class {class: int};
      balanced_accuracy: Estimate dict (value = `balanced_accuracy`, percentile bootstrap CI);
      accuracy: Estimate dict (Wilson CI);
      auc: {class: Estimate dict} one-vs-rest ROC AUC (`per_class_auc`);
      pauc: {class: Estimate dict} `partial_auc_above_sensitivity` at min_tpr, the band TPR ≥ min_tpr
        (ISIC 2024 pAUC; range [0, 1 − min_tpr]);
      auc_above: {class: Estimate dict} `auc_above_sensitivity` at min_tpr, the isic-challenge-scoring
        "AUC, Sens > 80%" of ISIC 2018–2020 (range [0, 1]);
      auc_mean, pauc_mean, auc_above_mean: Estimate dicts, the mean over the classes with a value (excluded
        ones named in note).
    A class with fewer than min_n positives or negatives is too small: too_small=True, value NaN.
    n < min_n makes balanced_accuracy too small.
    """
    y, P, classes = _check_multiclass(y_true_idx, probs, classes)
    n, C = len(y), len(classes)
    pred = P.argmax(axis=1) if n else np.zeros(0, np.int64)
    hit = pred == y
    n_per = np.bincount(y, minlength=C)
    res: dict = {"n": n, "classes": classes, "min_tpr": float(min_tpr),
                 "n_per_class": {c: int(k) for c, k in zip(classes, n_per)}}

    onehot = np.zeros((n, C))
    onehot[np.arange(n), y] = 1.0
    ok_cls = [(min_n <= n_per[c]) and (min_n <= n - n_per[c]) for c in range(C)]
    ba_reps, auc_reps, pauc_reps, above_reps = [], [], [], []
    if n >= 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        rocs = {c: _RocSorted(y == c, P[:, c]) for c in range(C) if ok_cls[c]}
        for idx in _index_chunks(rng, n, n_boot):
            W = _counts(idx, n)
            with np.errstate(invalid="ignore", divide="ignore"):
                ba_reps.append(np.nanmean(np.where((W @ onehot) > 0, (W @ (onehot * hit[:, None])) / (W @ onehot),
                                                   np.nan), axis=1))
            a_c, pa_c, ab_c = (np.full((len(W), C), np.nan) for _ in range(3))
            for c in range(C):
                if ok_cls[c]:
                    a_c[:, c], pa_c[:, c], ab_c[:, c] = rocs[c].auc_band_above(W, min_tpr)
            auc_reps.append(a_c)
            pauc_reps.append(pa_c)
            above_reps.append(ab_c)

    ba = balanced_accuracy(y, pred)
    if n < min_n:
        res["balanced_accuracy"] = Estimate(NAN, NAN, NAN, n, True, None,
                                            f"too small (n={n} < min_n={min_n})").to_dict()
    else:
        lo, hi = _percentile_ci(np.concatenate(ba_reps), alpha) if ba_reps else (NAN, NAN)
        res["balanced_accuracy"] = Estimate(ba, lo, hi, n, note=f"{int((n_per > 0).sum())} classes present").to_dict()
    res["accuracy"] = proportion_ci(int(hit.sum()), n, alpha).to_dict()

    auc_pt = per_class_auc(y, P, classes)
    auc_r = np.concatenate(auc_reps) if auc_reps else np.full((0, C), np.nan)
    pauc_r = np.concatenate(pauc_reps) if pauc_reps else np.full((0, C), np.nan)
    above_r = np.concatenate(above_reps) if above_reps else np.full((0, C), np.nan)
    res["auc"], res["pauc"], res["auc_above"] = {}, {}, {}
    for c, name in enumerate(classes):
        split = f"n_pos={int(n_per[c])}, n_neg={int(n - n_per[c])}"
        if not ok_cls[c]:
            e = Estimate(NAN, NAN, NAN, n, True, None, f"too small ({split}; min_n={min_n})").to_dict()
            res["auc"][name], res["pauc"][name], res["auc_above"][name] = e, dict(e), dict(e)
            continue
        res["auc"][name] = Estimate(auc_pt[name], *_percentile_ci(auc_r[:, c], alpha), n, note=split).to_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)   # already warned by per_class_auc
            pa = partial_auc_above_sensitivity(y == c, P[:, c], min_tpr)
            ab = auc_above_sensitivity(y == c, P[:, c], min_tpr)
        res["pauc"][name] = Estimate(pa, *_percentile_ci(pauc_r[:, c], alpha), n, note=split).to_dict()
        res["auc_above"][name] = Estimate(ab, *_percentile_ci(above_r[:, c], alpha), n, note=split).to_dict()

    for key, reps in (("auc", auc_r), ("pauc", pauc_r), ("auc_above", above_r)):
        keep = [c for c, name in enumerate(classes) if np.isfinite(res[key][name]["value"])]
        dropped = [classes[c] for c in range(C) if c not in keep]
        note = f"mean over {len(keep)} of {C} classes" + (f"; excluded: {dropped}" if dropped else "")
        if not keep:
            _undefined(f"isic_metrics: no class has a defined {key}; {key}_mean is NaN")
            res[f"{key}_mean"] = Estimate(NAN, NAN, NAN, n, False, None, note).to_dict()
            continue
        if dropped:
            _undefined(f"isic_metrics: {key}_mean leaves out {dropped} (absent or too small)")
        value = float(np.mean([res[key][classes[c]]["value"] for c in keep]))
        lo, hi = _percentile_ci(reps[:, keep].mean(axis=1), alpha) if len(reps) else (NAN, NAN)
        res[f"{key}_mean"] = Estimate(value, lo, hi, n, note=note).to_dict()
    return res
